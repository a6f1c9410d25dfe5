"""Tokenizers behind one small interface: characters, sentencepiece and Hugging Face `tokenizers` files.

`build_tokenizer` makes the tokenizer a config asks for and saves it under `<workdir>/tokenizer/` (a manifest
`tokenizer.json` naming the kind, beside `chars.json`, `spm.model` or `hf_tokenizer.json`); once saved, the
workdir's copy is what every later run, resume or `gptjax sample` loads, whatever the config says.
"""

import hashlib
import io
import json
from collections.abc import Callable, Iterable

import numpy as np

from gptjax.errors import DataError  # noqa: F401  (part of this module's API)
from gptjax import files
from gptjax.files import atomic_write

MANIFEST = "tokenizer.json"
KINDS = ("char", "sentencepiece", "hf")
_SPM_MAX_LINES = 200_000  # lines given to the sentencepiece trainer: all of Shakespeare (189k), ~1 s for BPE
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>")


class Tokenizer:
    """Text <-> token ids. `eos_id` separates documents when the tokenizer has such a token."""

    kind: str
    vocab_size: int
    eos_id: int | None = None
    fingerprint: str = ""  # hash of the saved files: keys caches of tokenized data

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet, ids in code-point order (nanoGPT's shakespeare_char)."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.vocab_size = len(self.chars)
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def encode(self, text: str) -> list[int]:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.minimum(np.searchsorted(self._codes, codes), self.vocab_size - 1)
        unknown = codes[self._codes[ids] != codes]
        if unknown.size:
            raise DataError(f"character {chr(unknown[0])!r} is not in the {self.vocab_size}-character vocabulary")
        return ids.tolist()

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64).ravel())


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, where="a sentencepiece model"):
        import sentencepiece as spm

        if not model_proto:  # sentencepiece takes empty bytes for a model and fails at the first call
            raise DataError(f"{where}: empty; expected a sentencepiece model")
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as err:  # the only input is these bytes: they are not a model (or were cut short)
            raise DataError(f"{where}: {files.damaged(model_proto, 'a sentencepiece model')} "
                            f"({' '.join(str(err).split())[:120]})") from None
        self.vocab_size = self.sp.vocab_size()
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), num_threads=2)

    def decode(self, ids) -> str:
        return self.sp.decode(np.asarray(ids, dtype=np.int64).ravel().tolist())


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer`, e.g. GPT-2's byte-level BPE."""

    kind = "hf"

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.eos_id = next((i for i in map(tok.token_to_id, _EOS_NAMES) if i is not None), None)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode(np.asarray(ids, dtype=np.int64).ravel().tolist())


def _hf_from_str(text: str, where):
    """A `tokenizers.Tokenizer` from the text of a tokenizer.json read from `where`, or one DataError naming it."""
    import tokenizers

    expected = "a Hugging Face tokenizer.json"
    if not isinstance(files.parse_json(text, where, expected=expected), dict):
        raise DataError(f"{where}: not {expected}: its JSON is not an object")
    try:
        tok = tokenizers.Tokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001  tokenizers reports a file it cannot take as a bare Exception
        if type(err) is not Exception:
            raise
        raise DataError(f"{where}: not {expected} ({' '.join(str(err).split())[:160]})") from None
    if not tok.get_vocab_size(with_added_tokens=True):
        raise DataError(f"{where}: {expected} with an empty vocabulary")
    return tok


def _read_hf(path: str):
    """A tokenizer.json file, or a directory holding tokenizer.json or GPT-2's vocab.json + merges.txt. A file that
    is empty, truncated, binary or of another kind is one DataError naming it."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    p = files.path(path)
    if p.is_dir() and (p / "tokenizer.json").exists():
        p = p / "tokenizer.json"
    if p.exists() and not p.is_dir():
        return _hf_from_str(files.read_text(p, expected="a Hugging Face tokenizer.json"), p)
    if (p / "vocab.json").exists() and (p / "merges.txt").exists():
        vocab, merges = _read_bpe_files(p)
        try:
            tok = tokenizers.Tokenizer(models.BPE(vocab, merges))
        except Exception as err:  # noqa: BLE001  tokenizers reports files that do not fit as a bare Exception
            if type(err) is not Exception:
                raise
            raise DataError(f"{p}: vocab.json and merges.txt do not make a BPE tokenizer "
                            f"({' '.join(str(err).split())[:160]})") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    raise DataError(f"data.tokenizer_path: {path} holds neither tokenizer.json nor vocab.json + merges.txt")


def _read_bpe_files(p):
    """GPT-2's vocab.json + merges.txt (local or a URL): (vocab, merges) as models.BPE takes them, or one DataError
    naming the file that is empty, truncated, binary or not in GPT-2's format."""
    vocab = files.read_json(p / "vocab.json", expected="GPT-2's vocab.json (a JSON object of token: id)")
    if not vocab or not all(isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise DataError(f"{p / 'vocab.json'}: not GPT-2's vocab.json: expected a non-empty JSON object of "
                        "token: integer id")
    merges = []
    text = files.read_text(p / "merges.txt", expected="GPT-2's merges.txt (a pair of tokens per line)")
    for i, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#version"):
            continue
        pair = tuple(line.split(" "))
        if len(pair) != 2 or not all(pair):
            raise DataError(f"{p / 'merges.txt'}:{i}: not a merge (two tokens separated by one space)")
        merges.append(pair)
    return vocab, merges


def _train_sentencepiece(data_cfg, texts: Iterable[str]) -> bytes:
    """BPE or unigram on the first lines of `texts`. Each line goes in with its newline, "\\n" is a piece of its
    own and whitespace is kept as is (no normalisation, no dummy prefix), with byte fallback for rare characters:
    decode(encode(x)) == x for any text."""
    import sentencepiece as spm

    def lines():
        n = 0
        for text in texts:
            for line in text.split("\n"):
                yield line + "\n"
                n += 1
                if n == _SPM_MAX_LINES:
                    return

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=model, model_type=data_cfg.spm_model_type,
            vocab_size=data_cfg.vocab_size, character_coverage=0.9995, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            user_defined_symbols=["\n"], allow_whitespace_only_pieces=True, max_sentence_length=1 << 16,
            num_threads=2, minloglevel=2)
    except RuntimeError as e:  # e.g. a vocabulary too large for the corpus
        raise DataError(f"data.vocab_size: sentencepiece training failed: {' '.join(str(e).split())}") from e
    return model.getvalue()


def _write(path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))  # processes building the same tokenizer never read a partial file


def build_tokenizer(data_cfg, workdir: str, train_texts: Callable[[], Iterable[str]]) -> Tokenizer:
    """The workdir's saved tokenizer if there is one, else a new one of kind `data_cfg.tokenizer`, saved.

    `train_texts` is called only when a tokenizer is learned: the char alphabet or the sentencepiece model.
    """
    d = files.path(workdir) / "tokenizer"
    if (d / MANIFEST).exists():
        tok = load_tokenizer(workdir)
        if tok.kind != data_cfg.tokenizer:
            raise DataError(f"data.tokenizer: {data_cfg.tokenizer!r}, but {workdir} already has a {tok.kind!r} "
                            "tokenizer; use a new workdir")
        return tok
    kind, path = data_cfg.tokenizer, data_cfg.tokenizer_path
    if kind not in KINDS:
        raise DataError(f"data.tokenizer: {kind!r} is not one of char, sentencepiece, hf")
    files.writable_dir(d, "the tokenizer")  # before a tokenizer is learned or read
    if kind == "char":
        saved = {"chars.json": json.dumps("".join(sorted(set().union(*map(set, train_texts()))))).encode()}
    elif kind == "sentencepiece" and path:
        files.check_url(path, "data.tokenizer_path", workdir=False)
        if not files.path(path).exists() or files.path(path).is_dir():
            raise DataError(f"data.tokenizer_path: no such file: {path}")
        model = files.read_bytes(path)
        SentencePieceTokenizer(model, f"data.tokenizer_path: {path}")  # a bad file is refused before it is saved
        saved = {"spm.model": model}
    elif kind == "sentencepiece":
        saved = {"spm.model": _train_sentencepiece(data_cfg, train_texts())}
    elif kind == "hf":
        if path:
            files.check_url(path, "data.tokenizer_path", workdir=False)
        if not path or not files.path(path).exists():
            raise DataError(f"data.tokenizer_path: no such file or directory: {path!r} (data.tokenizer=hf needs one)")
        saved = {"hf_tokenizer.json": _read_hf(path).to_str().encode()}
    with files.writing(d, "the tokenizer"):
        d.mkdir(parents=True, exist_ok=True)
        for name, data in saved.items():
            _write(d / name, data)
        _write(d / MANIFEST, json.dumps({"kind": kind, "file": next(iter(saved)), "source": path}).encode())
    return load_tokenizer(workdir)


def from_bytes(kind: str, data: bytes, where) -> Tokenizer:
    """The tokenizer of `kind` saved as `data` (read from `where`); a file that is empty, truncated, binary or of
    another kind is one DataError naming `where`."""
    if kind == "char":
        expected = "a char tokenizer's chars.json (a JSON string of its characters)"
        chars = files.parse_json(files.decode_text(data, where, expected=expected), where, expected=expected)
        if not isinstance(chars, str) or not chars:
            raise DataError(f"{where}: not {expected}")
        return CharTokenizer(chars)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(data, where)
    return HFTokenizer(_hf_from_str(files.decode_text(data, where, expected="a Hugging Face tokenizer.json"), where))


def load_tokenizer(workdir: str) -> Tokenizer:
    """The tokenizer saved in `<workdir>/tokenizer/` by `build_tokenizer`. A damaged manifest or tokenizer file
    (empty, truncated, binary) is one DataError naming it."""
    d = files.path(workdir) / "tokenizer"
    if not (d / MANIFEST).exists():
        raise DataError(f"workdir: no tokenizer saved in {d} (a training run saves one there)")
    expected = "gptjax's tokenizer manifest (a JSON object naming the kind and the file)"
    manifest = files.read_json(d / MANIFEST, expected=expected)
    kind, name = manifest.get("kind"), manifest.get("file")
    if kind not in KINDS or not isinstance(name, str) or not name or "/" in name:
        raise DataError(f"{d / MANIFEST}: not {expected}: kind {kind!r}, file {name!r}")
    data = files.read_bytes(d / name)
    tok = from_bytes(kind, data, d / name)
    tok.fingerprint = hashlib.sha256(kind.encode() + data).hexdigest()[:16]
    return tok
