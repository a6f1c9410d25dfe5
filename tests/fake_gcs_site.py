"""The stand-in gs:// bucket of tests/test_cloud.py, for other processes: imported at start-up by a .pth file that
tests/test_pod_rehearsal.py puts into the virtual environment it made (never into gptjax's own installs), it does
nothing unless GPTJAX_FAKE_GCS_ROOT names the local folder that holds the buckets (gs://BUCKET/KEY is stored at
ROOT/BUCKET/KEY).

Then, as the `bucket` fixture does in-process: an fsspec filesystem registered for gs:// and gcs:// (ahead of
gcsfs, which is installed: the workers install gptjax's `gcs` extra) keeps the objects in that folder, and orbax's
TensorStore kvstore for gs:// paths and its hierarchical-namespace query (both reach GCS without fsspec) are pointed
at the same folder. Nothing here needs pytest, so it imports in a venv that holds only gptjax and its dependencies.
"""

import os

ENV = "GPTJAX_FAKE_GCS_ROOT"


def install(root: str) -> None:
    import fsspec
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem
    from orbax.checkpoint._src.path import gcs_utils

    class FakeGCS(DirFileSystem):
        protocol = ("gs", "gcs")
        cachable = False

        def __init__(self, *args, **kwargs):
            super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True))

        @classmethod
        def _strip_protocol(cls, path):
            path = path[0] if isinstance(path, list) else path
            for prefix in ("gs://", "gcs://"):
                if path.startswith(prefix):
                    return path[len(prefix):]
            return path

        def _join(self, path):
            if isinstance(path, (list, tuple)):
                return [self._join(p) for p in path]
            return super()._join(self._strip_protocol(path))

    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, FakeGCS, clobber=True)

    def tensorstore_kvstore(path):  # TensorStore's own GCS driver, redirected to the same folder
        name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": os.path.join(root, name, key)}

    gcs_utils.get_kvstore_for_gcs = tensorstore_kvstore
    gcs_utils.is_hierarchical_namespace_enabled = lambda path: False  # this bucket has none


if os.environ.get(ENV):
    install(os.environ[ENV])
