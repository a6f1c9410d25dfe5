"""Workdirs on cloud storage. A gs:// workdir runs a whole train / resume / sample cycle on a stand-in bucket that
needs no network: an fsspec filesystem registered for gs:// that keeps the bucket's objects under a local folder,
which every epath access of gptjax and orbax goes through, and TensorStore (orbax's array writer, which speaks to
GCS itself) pointed at the same folder. A URL whose filesystem package is missing is one line, before any work."""

import json
import os
import sys

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from gptjax import configs, errors, files, runs, workdirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeGCS(DirFileSystem):
    """gs://BUCKET/KEY stored at <root>/BUCKET/KEY: an object store that is not the local filesystem to gptjax
    (every access has to go through fsspec to reach it), with no network."""

    protocol = ("gs", "gcs")
    root = None
    cachable = False  # fsspec would otherwise hand a later test the instance holding an earlier test's root

    def __init__(self, *args, **kwargs):
        super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True))

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


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The local folder behind the stand-in gs:// filesystem; the test runs in an empty cwd to catch local writes."""
    from etils.epath import backend
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "bucket-store"
    root.mkdir()
    monkeypatch.setattr(FakeGCS, "root", str(root))
    registry = sys.modules["fsspec.registry"]._registry
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry, protocol, FakeGCS)
    backend.fsspec_backend._get_filesystem.cache_clear()

    def tensorstore_kvstore(path):  # TensorStore's own GCS driver, redirected to the same folder
        name, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / name / key)}

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", tensorstore_kvstore)
    # orbax asks the google-cloud-storage client whether the bucket has a hierarchical namespace; this one has none
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    monkeypatch.setitem(files.WORKDIR_PACKAGES, "gs", [])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield root
    backend.fsspec_backend._get_filesystem.cache_clear()
    assert not os.listdir(cwd), os.listdir(cwd)  # nothing written to a local folder named "gs:"


def tiny_config(corpus, steps, **train):
    c = configs.get_config()
    c.data.update(source="text", path=corpus, tokenizer="char", seq_len=32)
    c.model.update(num_layers=1, d_model=32, num_heads=2, dropout=0.0)
    c.mesh.shape = (2, 2, 2)
    c.train.update(steps=steps, batch_size=8, log_every_steps=1, **train)
    c.eval.update(every_steps=3, steps=1)
    c.checkpoint.update(every_steps=3, async_save=False)
    c.sample.update(max_new_tokens=8, temperature=0.0, num_samples=1)
    return configs.finalize(c)


def losses(text):
    return {r["step"]: r["train_loss"] for r in map(json.loads, text.splitlines()) if "train_loss" in r}


@pytest.mark.slow
def test_train_resume_sample_on_a_bucket(bucket, corpus_file, tmp_path):
    run = "gs://test-bucket/runs/tiny"
    runs.train(tiny_config(corpus_file, 3), run)
    stored = bucket / "test-bucket" / "runs" / "tiny"
    for name in ("config.json", "tokenizer/tokenizer.json", "tokenizer/chars.json", "metrics.jsonl", "samples.txt",
                 "loss_curve.png", "checkpoints/3"):
        assert (stored / name).exists(), name
    assert len(list((stored / "data").glob("train-*of8.npy"))) == 8 and list((stored / "data").glob("validation-*"))
    assert sorted(losses((stored / "metrics.jsonl").read_text())) == [1, 2, 3]

    final = runs.train(tiny_config(corpus_file, 6), run)  # resumes from gs://.../checkpoints/3
    assert (stored / "checkpoints" / "6").exists()
    rows = losses((stored / "metrics.jsonl").read_text())
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]  # the resumed run appended to the object, not replaced it

    local = str(tmp_path / "local")  # the same run in one go on local disk: the same losses
    expected = runs.train(tiny_config(corpus_file, 6), local)
    for step, loss in losses(open(os.path.join(local, "metrics.jsonl")).read()).items():
        assert abs(rows[step] - loss) <= 1e-6 * abs(loss), step
    assert final["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stored / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_loss"} <= set(events.Tags()["scalars"])

    texts = workdirs.sample_from_workdir(run, "ROMEO:", stream=False, max_new_tokens=12, temperature=0.0)
    assert texts == workdirs.sample_from_workdir(local, "ROMEO:", stream=False, max_new_tokens=12, temperature=0.0)
    assert (stored / "samples.txt").read_text() == open(os.path.join(local, "samples.txt")).read()


def test_append_file_and_tensorboard_on_a_bucket(bucket):
    path = "gs://b/run/metrics.jsonl"
    f = files.AppendFile(path, upload_every=3600)
    f.write("one\n")
    f.flush()  # the first flush uploads; later ones wait for upload_every
    f.write("two\n")
    f.flush()
    assert (bucket / "b" / "run" / "metrics.jsonl").read_text() == "one\n"
    f.close()
    again = files.AppendFile(path)  # a resumed run keeps what was there
    again.write("three\n")
    again.close()
    assert (bucket / "b" / "run" / "metrics.jsonl").read_text() == "one\ntwo\nthree\n"

    files.write_text("gs://b/run/config.json", "{}")
    assert files.path("gs://b/run/config.json").read_text() == "{}"
    files.copytree("gs://b/run", "gs://b/copy")
    assert (bucket / "b" / "copy" / "metrics.jsonl").read_text() == "one\ntwo\nthree\n"

    writer = files.tensorboard_writer("gs://b/run/tensorboard")
    writer.add_scalar("loss", 2.5, 7)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(bucket / "b" / "run" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(7, 2.5)]


def test_missing_filesystem_package_is_one_line_before_any_work(corpus_file, tmp_path, monkeypatch, capsys):
    registry = sys.modules["fsspec.registry"]._registry
    monkeypatch.delitem(registry, "gcs", raising=False)
    for module in ("gcsfs", "google.cloud.storage"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.chdir(tmp_path)
    config = tiny_config(corpus_file, 1)
    with pytest.raises(files.FilesystemError) as err:
        runs.train(config, "gs://no-such-bucket/run1")
    assert isinstance(err.value, errors.GptjaxError)
    assert str(err.value) == ("--workdir=gs://no-such-bucket/run1: gs:// needs the Python packages gcsfs and "
                              "google-cloud-storage (pip install gcsfs google-cloud-storage)")
    with pytest.raises(files.FilesystemError, match="gs:// needs the Python packages gcsfs"):
        workdirs.load_config("gs://no-such-bucket/run1")
    with pytest.raises(files.FilesystemError, match=r"data.path=gs://b/x.txt: gs:// needs the Python package gcsfs "
                                                    r"\(pip install gcsfs\)"):
        files.check_url("gs://b/x.txt", "data.path", workdir=False)
    with pytest.raises(files.FilesystemError, match=r"memory:// is not supported here \(use a local path or gs://\)"):
        runs.train(config, "memory://run1")
    assert not os.listdir(tmp_path)  # no local folder named "gs:" or "memory:"

    from gptjax import main

    status = main.main(["gptjax", "train", "--workdir=gs://no-such-bucket/run1",
                        f"--config={ROOT}/experiments/pretrain/shakespeare_char.py",
                        f"--config.data.path={corpus_file}"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "pip install gcsfs google-cloud-storage" in err, err
    assert not os.listdir(tmp_path)


def test_local_paths_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert files.scheme("runs/a") is None and files.scheme("gs://b/a") == "gs"
    assert str(files.path("runs/a")) == str(tmp_path / "runs" / "a")  # absolute, as orbax needs
    files.check_url("runs/a")  # a local path needs nothing
    files.atomic_write("out.bin", lambda f: f.write(b"\x00\x01"))
    assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01" and os.listdir(tmp_path) == ["out.bin"]


def test_storage_that_cannot_be_reached_is_one_line_and_other_os_errors_keep_their_traceback(capsys, monkeypatch,
                                                                                             tmp_path):
    """No network to a bucket (gcsfs's aiohttp gives up on a name that does not resolve): one line, not the stack;
    an OSError that is not about reaching storage is a fault to debug and keeps its traceback."""
    import socket

    from helpers import gptjax_in_process, one_line_error

    def unresolved(workdir):
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as err:
            raise OSError("Cannot connect to host storage.googleapis.com:443 ssl:default") from err

    monkeypatch.setattr(workdirs, "model_dir", unresolved)
    err = one_line_error(capsys, "cannot reach the storage (Cannot connect to host storage.googleapis.com:443",
                         "sample", f"--workdir={tmp_path}", "--prompt=Hello")
    assert "Traceback" not in err

    def refused(workdir):
        raise PermissionError(13, "Permission denied", str(workdir))

    monkeypatch.setattr(workdirs, "model_dir", refused)
    with pytest.raises(PermissionError):
        gptjax_in_process(capsys, "sample", f"--workdir={tmp_path}", "--prompt=Hello")
