"""Stand-ins for the data the tests cannot have offline, in the layout and format of the real thing.

TFDS datasets: `prepare(data_dir, "glue/sst2")` writes a few made-up records as TFDS itself would write the real
dataset: the same builder name, config and version (`glue/sst2/2.0.0`), the same features (names, types, ClassLabel
classes) and the same splits, stored as array_record, so that gptjax reads them through TFDS's own code exactly as
it reads the real copy a user prepared once with `tfds build NAME --file_format=array_record`. DATASETS lists the
stand-ins; `real_features(name)` is what TFDS's own builder declares, where it can build that without TensorFlow
(tests/test_experiments.py checks the two agree).

Hugging Face: `gpt2_tokenizer(dir, texts)` is a small byte-level BPE saved as tokenizer.json (the format of
data.tokenizer=hf's GPT-2 tokenizer); `tiny_gpt2(dir, texts)` adds a random transformers GPT-2 (2 x 64) saved as a
hub directory is (config.json + model.safetensors), for `gptjax import-hf`.
"""

import dataclasses
import os
from collections.abc import Callable

_WORDS = ("the quick brown fox jumps over a lazy dog while seven merry players sing of kings and rivers under "
          "a pale moon near old stone bridges").split()


def _sentence(i: int, n: int = 8) -> str:
    return " ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(n + i % 5)).capitalize() + "."


def _rows(n: int, make: Callable[[int], dict]) -> list[dict]:
    return [make(i) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class Spec:
    """One TFDS dataset: name, config (or ""), version, its features (built lazily: TFDS is imported on use) and
    its splits as {split: records}."""
    name: str
    config: str
    version: str
    features: Callable[[], object]
    splits: dict

    @property
    def key(self) -> str:
        return f"{self.name}/{self.config}" if self.config else self.name


def _features(**kinds):
    """FeaturesDict from `text`, `int32` or a tuple of ClassLabel names per feature."""
    import numpy as np
    import tensorflow_datasets as tfds

    def one(kind):
        if kind == "text":
            return tfds.features.Text()
        if kind == "int32":
            return np.int32
        return tfds.features.ClassLabel(names=list(kind))

    return tfds.features.FeaturesDict({k: one(v) for k, v in kinds.items()})


def _c4_doc(i: int, held_out: bool = False) -> dict:
    text = " ".join(_sentence(i * 3 + j + (100 if held_out else 0)) for j in range(6)) + "\n"
    return {"text": text, "url": f"https://example.com/{'v' if held_out else 't'}/{i}",
            "timestamp": "2019-04-25T00:00:00Z"}


def _labelled(n: int, num_labels: int, unlabelled: bool, fields: Callable[[int], dict]) -> list[dict]:
    return _rows(n, lambda i: {**fields(i), "idx": i, "label": -1 if unlabelled else i % num_labels})


def _glue(config, num_labels, fields, val_splits=("validation",), test_splits=("test",)):
    names = tuple(str(k) for k in range(num_labels))
    kinds = {f: "text" for f in fields(0)}
    splits = {"train": _labelled(48, num_labels, False, fields)}
    splits.update({s: _labelled(8, num_labels, False, lambda i, s=s: fields(i + 1000 + len(s))) for s in val_splits})
    splits.update({s: _labelled(4, num_labels, True, lambda i: fields(i + 2000)) for s in test_splits})
    labels = {"sst2": ("negative", "positive"), "qqp": ("not_duplicate", "duplicate"),
              "mnli": ("entailment", "neutral", "contradiction")}.get(config, names)
    return Spec("glue", config, "2.0.0", lambda: _features(**kinds, idx="int32", label=labels), splits)


def _copa_fields(i: int) -> dict:
    return {"premise": _sentence(i), "choice1": _sentence(i + 1, 5), "choice2": _sentence(i + 2, 5),
            "question": ("cause", "effect")[i % 2]}


DATASETS = {
    # TFDS c4/en:3.0.1, the copy MaxText trains on (features text, url, timestamp; splits train, validation)
    "c4/en:3.0.1": Spec("c4", "en", "3.0.1", lambda: _features(text="text", url="text", timestamp="text"),
                        {"train": _rows(40, _c4_doc), "validation": _rows(6, lambda i: _c4_doc(i, True))}),
    "glue/sst2": _glue("sst2", 2, lambda i: {"sentence": _sentence(i)}),
    "glue/mnli": _glue("mnli", 3, lambda i: {"premise": _sentence(i), "hypothesis": _sentence(i + 5, 4)},
                       ("validation_matched", "validation_mismatched"), ("test_matched", "test_mismatched")),
    "glue/qqp": _glue("qqp", 2, lambda i: {"question1": _sentence(i, 5) + "?", "question2": _sentence(i + 1, 5) + "?"}),
    # super_glue/copa:1.0.2, its features as TFDS's super_glue.py declares them (building them needs TensorFlow)
    "super_glue/copa": Spec(
        "super_glue", "copa", "1.0.2",
        lambda: _features(premise="text", choice1="text", choice2="text", question="text", idx="int32",
                          label=("choice1", "choice2")),
        {"train": _labelled(40, 2, False, _copa_fields),
         "validation": _labelled(8, 2, False, lambda i: _copa_fields(i + 50)),
         "test": _labelled(4, 2, True, lambda i: _copa_fields(i + 80))}),
    # imdb_reviews/plain_text:1.0.0: text, label (neg, pos); train, test, unsupervised (label -1)
    "imdb_reviews": Spec(
        "imdb_reviews", "plain_text", "1.0.0", lambda: _features(text="text", label=("neg", "pos")),
        {"train": _rows(40, lambda i: {"text": f"Review {i}. {_sentence(i, 12)} {('Awful', 'Great')[i % 2]} film.",
                                       "label": i % 2}),
         "test": _rows(8, lambda i: {"text": f"Test review {i}. {_sentence(i + 40)}", "label": i % 2}),
         "unsupervised": _rows(4, lambda i: {"text": _sentence(i + 60), "label": -1})}),
}


def builder(spec: Spec, data_dir: str):
    """A TFDS builder that writes `spec`'s records under `data_dir` as TFDS writes the real dataset."""
    import tensorflow_datasets as tfds

    class StandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = spec.name
        VERSION = tfds.core.Version(spec.version)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=spec.config)] if spec.config else []

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=spec.features(), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(rows) for split, rows in spec.splits.items()}

        def _generate_examples(self, rows):
            for i, row in enumerate(rows):
                yield i, row

    kwargs = {"config": spec.config} if spec.config else {}
    return StandIn(data_dir=str(data_dir), file_format="array_record", **kwargs)


def prepare(data_dir, *names: str) -> str:
    """Writes the stand-ins `names` (keys of DATASETS; all when none) under `data_dir`; returns data_dir."""
    import tensorflow_datasets as tfds

    for name in names or DATASETS:
        spec = DATASETS[name]
        b = builder(spec, data_dir)
        b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        expected = os.path.join(str(data_dir), spec.name, *([spec.config] if spec.config else []), spec.version)
        assert os.path.samefile(str(b.data_dir), expected), (b.data_dir, expected)
    return str(data_dir)


def real_features(name: str):
    """The features TFDS's own builder for `name` declares, or None where building them needs TensorFlow
    (super_glue's builder does) or TFDS has no such builder."""
    import tempfile

    import tensorflow_datasets as tfds
    import tensorflow_datasets.text  # noqa: F401  registers glue, super_glue, c4

    spec = DATASETS[name]
    try:
        with tempfile.TemporaryDirectory() as empty:
            b = tfds.builder(spec.key, data_dir=empty)
            return b.info.features if str(b.version) == spec.version else None
    except (ModuleNotFoundError, tfds.core.registered.DatasetNotFoundError):
        return None


def gpt2_tokenizer(path, texts, vocab_size: int = 400) -> str:
    """A byte-level BPE of `vocab_size` pieces trained on `texts`, saved as `path`/tokenizer.json (GPT-2's format,
    with <|endoftext|>)."""
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(path, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(list(texts), vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(os.path.join(str(path), "tokenizer.json"))
    return str(path)


def tiny_gpt2(path, texts, vocab_size: int = 400) -> str:
    """A random transformers GPT-2 (2 layers x 64, 128 positions) beside its byte-level BPE, as a hub directory
    holds them: what `gptjax import-hf --hf_dir=` reads."""
    import torch
    import transformers

    import tokenizers

    tok = tokenizers.Tokenizer.from_file(os.path.join(gpt2_tokenizer(path, texts, vocab_size), "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                     vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(path), safe_serialization=True)
    return str(path)
