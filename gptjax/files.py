"""Every file gptjax reads or writes goes through here: `path()` gives an `etils.epath.Path` for a local path or a
cloud URL (gs://, s3://, az://, hf://), the same path type orbax writes checkpoints with.

A URL needs its fsspec filesystem package (gs:// needs gcsfs), and a workdir URL also needs what orbax needs to
write checkpoints there: `check_url` says which in one line before any work starts. Any other `scheme://` is
refused: epath would treat it as a local folder named `scheme:`.
"""

import contextlib
import errno
import importlib
import importlib.util
import io
import logging
import os
import sys
import time
from collections.abc import Callable

from etils import epath

from gptjax.errors import DataError, GptjaxError


class _WithoutTraceback(logging.Filter):
    """Keeps a library's log line and drops the traceback it attaches: gcsfs logs every request it gives up on
    with the whole aiohttp stack, above the one `gptjax: error:` line that says what happened."""

    def filter(self, record):
        record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("gcsfs").addFilter(_WithoutTraceback())


class FilesystemError(GptjaxError, ValueError):
    """A path or URL gptjax cannot use: an unknown scheme or a filesystem package that is not installed."""


class WriteError(GptjaxError, OSError):
    """A write the filesystem refused (no space left, read-only, no permission, a file in the way of a directory):
    one line naming the path and the cause. Nothing written before it is deleted."""


# errno -> what a user reads; anything else an OSError says is a bug or a fault to keep its traceback.
_REFUSALS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
             errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of a directory",
             errno.EEXIST: "a file is in the way of a directory"}


def write_error(err: BaseException, p, what: str = "") -> WriteError | None:
    """The one-line WriteError for `err` raised while writing `p` (`what`: "a checkpoint", "metrics.jsonl"...),
    or None when `err` is not a filesystem refusal."""
    cause = _REFUSALS.get(getattr(err, "errno", None))
    if cause is None:
        return None
    hint = " (free some space and rerun the same command: it resumes)" if cause.startswith("no space") or \
        "quota" in cause else ""
    return WriteError(f"{p}: cannot write{' ' + what if what else ''}: {cause}{hint}")


@contextlib.contextmanager
def writing(p, what: str = ""):
    """Turns a filesystem refusal inside the block into one WriteError line naming `p`; other errors pass."""
    try:
        yield
    except OSError as err:
        refused = write_error(err, p, what)
        if refused is None:
            raise
        raise refused from err


# Scheme -> the (module, pip package) pairs that reading and writing files there needs: epath reaches these
# URLs through fsspec, whose implementation for each scheme lives in its own package.
PACKAGES = {
    "gs": [("gcsfs", "gcsfs")],
    "s3": [("s3fs", "s3fs")],
    "az": [("adlfs", "adlfs")],
    "hf": [("huggingface_hub", "huggingface_hub")],
}
# What a workdir URL needs on top: orbax writes arrays through TensorStore's own GCS driver and lists checkpoint
# steps with the google-cloud-storage client. Orbax has no native driver for the other schemes.
WORKDIR_PACKAGES = {"gs": [("google.cloud.storage", "google-cloud-storage")]}
_FSSPEC_PROTOCOLS = {"gs": "gcs", "s3": "s3", "az": "az", "hf": "hf"}


def scheme(p) -> str | None:
    """The URL scheme of `p` ("gs" for gs://bucket/x), None for a local path."""
    p = os.fspath(p)
    return p.split("://", 1)[0] if "://" in p else None


def is_local(p) -> bool:
    return scheme(p) is None


def unreachable(err: BaseException) -> str | None:
    """What to tell the user when `err` (or an error it was raised from) says only that a remote filesystem's host
    cannot be reached (no network, a name that does not resolve, a refused connection); None for anything else,
    which keeps its traceback."""
    import socket

    first, seen = err, []
    while err is not None and all(err is not e for e in seen):
        seen.append(err)
        if isinstance(err, (socket.gaierror, ConnectionRefusedError)) or (
                type(err).__module__.startswith("aiohttp") and isinstance(err, OSError)):
            return f"cannot reach the storage ({first}): no network here, or no route to it"
        err = err.__cause__ or err.__context__
    return None


def path(p) -> epath.Path:
    """`p` as an epath.Path: URLs as they are, local paths with ~ expanded and made absolute (orbax needs that)."""
    if isinstance(p, epath.Path) and not is_local(p):
        return p
    return epath.Path(p) if not is_local(p) else epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def _missing(module: str, protocol: str | None) -> bool:
    if protocol is not None:
        import fsspec

        if protocol in fsspec.registry:  # an implementation registered in this process (a test's fake bucket)
            return False
        if importlib.util.find_spec("tensorflow") is not None:
            return False  # epath then reaches gs:// and s3:// through tf.io.gfile instead of fsspec
    try:
        importlib.import_module(module)
        return False
    except ImportError:
        return True


def check_url(p, key: str = "--workdir", workdir: bool = True) -> None:
    """Raises one FilesystemError line if `p` is a URL gptjax cannot read or write here, naming what to install."""
    s = scheme(p)
    if s is None:
        return
    allowed = WORKDIR_PACKAGES if workdir else PACKAGES
    if s not in allowed:
        kinds = ", ".join(f"{k}://" for k in allowed)
        raise FilesystemError(f"{key}={p}: {s}:// is not supported here (use a local path or {kinds})")
    need = [(m, pkg, _FSSPEC_PROTOCOLS[s]) for m, pkg in PACKAGES[s]]
    need += [(m, pkg, None) for m, pkg in WORKDIR_PACKAGES.get(s, [])] if workdir else []
    missing = [pkg for m, pkg, protocol in need if _missing(m, protocol)]
    if missing:
        raise FilesystemError(f"{key}={p}: {s}:// needs the Python package{'s' * (len(missing) > 1)} "
                              f"{' and '.join(missing)} (pip install {' '.join(missing)})")


def atomic_write(p, write: Callable) -> None:
    """write(file) so that readers never see a partial file: locally a temporary file renamed to `p`; on an object
    store one upload, which becomes visible only when it completes."""
    p = path(p)
    if not is_local(p):
        with p.open("wb") as f:
            write(f)
        return
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, p)
    except BaseException:  # a full disk or an interrupt: no partial temporary file is left to fill it further
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def write_text(p, text: str) -> None:
    atomic_write(p, lambda f: f.write(text.encode("utf-8")))


# --- reading: a file that is missing, empty, truncated, binary or of another kind is one line naming it ---------

# First bytes -> what a file that starts with them is: named in the one line when a text file was expected.
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "gzip-compressed"), (b"PK\x03\x04", "a zip archive"),
          (b"\x93NUMPY", "a numpy array (.npy)"), (b"\x7fELF", "an executable"), (b"BZh", "bzip2-compressed"),
          (b"\xfd7zXZ", "xz-compressed"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"))


def kind_of(data: bytes) -> str:
    """What binary `data` looks like ("a PNG image", "gzip-compressed"), or "" when gptjax cannot tell."""
    return next((what for magic, what in _MAGIC if data.startswith(magic)), "")


def damaged(data: bytes, expected: str) -> str:
    """Why bytes that a reader refused are not `expected`: "a PNG image, not a sentencepiece model", else
    "truncated or not a sentencepiece model" (for what `{p}: ` starts)."""
    looks = kind_of(data)
    return f"{looks}, not {expected}" if looks else f"truncated, empty or not {expected}"


def read_bytes(p, error: type[GptjaxError] = DataError) -> bytes:
    """The bytes of file `p` (local or a URL); a missing file or a directory is one `error` naming `p`."""
    f = path(p)
    if not f.exists():
        raise error(f"{p}: no such file")
    if f.is_dir():
        raise error(f"{p}: is a directory, not a file")
    return f.read_bytes()


def decode_text(data: bytes, p, error: type[GptjaxError] = DataError, expected: str = "text") -> str:
    """`data` (read from `p`) as UTF-8 text; bytes that are not (a picture, an archive, a binary file, a file cut
    in the middle of a character) are one `error` naming `p`, what it looks like and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        looks = kind_of(data) or "binary"
        if err.start >= len(data) - 3 and err.reason.startswith("unexpected end"):
            looks = "UTF-8 text cut in the middle of a character: truncated"
        raise error(f"{p}: not {expected}: {looks} (byte {err.start} is not UTF-8)") from None


def read_text(p, error: type[GptjaxError] = DataError, expected: str = "text") -> str:
    """The UTF-8 text of file `p` (local or a URL): missing, a directory or not UTF-8 is one `error` naming `p`."""
    return decode_text(read_bytes(p, error), p, error, expected)


def parse_json(text: str, p, error: type[GptjaxError] = DataError, expected: str = "a JSON file"):
    """`text` (read from `p`) parsed as JSON; empty, cut short or not JSON at all is one `error` naming `p`."""
    import json

    if not text.strip():
        raise error(f"{p}: empty; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        ends = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        cut = " (the file ends there: it is truncated)" if ends else ""
        raise error(f"{p}: not {expected}: {err.msg} at line {err.lineno} column {err.colno}{cut}") from None


def read_json(p, error: type[GptjaxError] = DataError, expected: str = "a JSON file", kind: type | None = dict):
    """The JSON value of file `p` (a dict unless `kind` says otherwise): missing, empty, truncated, binary, not
    JSON or JSON of another shape (a list where an object is expected) is one `error` naming `p`."""
    value = parse_json(read_text(p, error, expected), p, error, expected)
    if kind is not None and not isinstance(value, kind):
        raise error(f"{p}: not {expected}: its JSON is a {type(value).__name__}, not a "
                    f"{'JSON object' if kind is dict else kind.__name__}")
    return value


def read_jsonl(p) -> list[tuple[str, dict]]:
    """(where, record) for each non-empty line of a JSONL file (local or a URL); `where` is 'FILE:LINE'. A missing,
    empty or binary file, or a line that is not a JSON object (a file cut short ends in one), is a DataError naming
    the file and line."""
    import json

    text = read_text(p, DataError, "a JSONL file (one JSON object per line)")
    out, lines = [], text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            cut = "; the file ends in this line: it is truncated" if i == len(lines) and \
                not text.endswith("\n") else ""
            raise DataError(f"{p}:{i}: not a JSON object ({err.msg}{cut})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{p}:{i}: not a JSON object")
        out.append((f"{p}:{i}", rec))
    if not out:
        raise DataError(f"{p}: empty; expected one JSON object per line")
    return out


# --- writing --------------------------------------------------------------------------------------------------


def writable_dir(p, what: str = "", create: bool = False):
    """Checks, before any long work, that directory `p` can be made and written: a file in the way, a read-only
    filesystem, no permission or a full disk is one WriteError naming `p`. Locally a small file is written and
    removed in `p`, or in its nearest existing parent while `p` is not there (nothing is left behind; `create`
    makes `p` too). Returns `p` as an epath.Path. A URL is only made when `create`: object stores have no such
    refusals to check early."""
    d = path(p)
    with writing(d, what):
        if create:
            d.mkdir(parents=True, exist_ok=True)
        if not is_local(d):
            return d
        where = os.fspath(d)
        while not os.path.lexists(where):
            where = os.path.dirname(where)
        if not os.path.isdir(where):  # `p` itself, or a parent of it, is a file
            code = errno.EEXIST if where == os.fspath(d) else errno.ENOTDIR
            raise OSError(code, os.strerror(code), where)
        probe = os.path.join(where, f".gptjax-write-check.{os.getpid()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"gptjax checks that it can write here\n")
        finally:
            if os.path.lexists(probe):
                os.remove(probe)
    return d


def copytree(src, dst) -> None:
    """Copies directory `src` to `dst` (either may be a URL), file by file."""
    src, dst = path(src), path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            copytree(child, dst / child.name)
        else:
            atomic_write(dst / child.name, lambda f, c=child: f.write(c.read_bytes()))


class AppendFile:
    """A text file that grows line by line (metrics.jsonl). Locally an ordinary append; object stores cannot
    append, so there the whole file (what was there when opened, plus the new lines) is uploaded again, at most
    every `upload_every` seconds and on close."""

    def __init__(self, p, upload_every: float = 10.0):
        self.path = path(p)
        self.local = is_local(self.path)
        self.upload_every = upload_every
        if self.local:
            self._f = open(self.path, "a")
        else:
            self._buf = io.StringIO()
            self._buf.write(self.path.read_text() if self.path.exists() else "")  # new lines go after it
            self._uploaded = None  # monotonic time of the last upload

    def write(self, text: str) -> None:
        (self._f if self.local else self._buf).write(text)

    def flush(self, force: bool = False) -> None:
        if self.local:
            self._f.flush()
        elif force or self._uploaded is None or time.monotonic() - self._uploaded >= self.upload_every:
            self.path.write_text(self._buf.getvalue())
            self._uploaded = time.monotonic()

    def close(self) -> None:
        self.flush(force=True)
        if self.local:
            self._f.close()


class _EpathRecordFile:
    """A TensorBoard event file on an object store for tensorboardX: kept in memory, uploaded whole on flush."""

    def __init__(self, p):
        self.path, self.buffer = path(p), io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathRecordFactory:
    def open(self, p):
        return _EpathRecordFile(p)

    def directory_check(self, p):
        path(p).mkdir(parents=True, exist_ok=True)


def tensorboard_writer(logdir):
    """A tensorboardX SummaryWriter for `logdir`, local or a URL: URL event files go through epath like every
    other file (tensorboardX's own gs:// writer would need google-cloud-storage and credentials of its own)."""
    blocked = "torch" not in sys.modules
    if blocked:  # tensorboardX imports torch only for a type hint: 1.5 s of every run where torch is installed
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter, record_writer
    finally:
        if blocked:
            del sys.modules["torch"]

    for s in PACKAGES:
        record_writer.register_writer_factory(s, _EpathRecordFactory())
    return SummaryWriter(os.fspath(path(logdir)))
