"""The GPT-2/GPT-3 recipes' data path, on small local stand-ins in the same format as the real corpora.

The recipes read TFDS `c4/en:3.0.1` (the copy MaxText reads) with a Hugging Face byte-level BPE. Here a builder
named `c4` (config `en`, version 3.0.1, features text/url/timestamp, splits train/validation) writes a few
documents as array_record into a temporary data_dir, and each recipe's config, unchanged except for data_dir,
tokenizer_path and seq_len, goes through the real `gptjax.data.make_pipeline`. Also: a TFDS dataset that is
not prepared, or stored in a format gptjax cannot read without TensorFlow, stops with one line saying how to
prepare it.
"""

import importlib.util
import pathlib

import pytest
import tensorflow_datasets as tfds

from gptjax import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = [f"Document {i}: the quick brown fox number {i} jumps over {i % 7} lazy dogs.\n" * 3 for i in range(40)]
VALIDATION = [f"Held out {i}: a slow green turtle walks past {i} sleeping cats.\n" * 3 for i in range(6)]


class C4StandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes TFDS `c4/en:3.0.1`'s layout and features (text, url, timestamp) with a few made-up documents."""

    name = "c4"
    VERSION = tfds.core.Version("3.0.1")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="en")]

    def _info(self):
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self, disable_shuffling=True,
            features=tfds.features.FeaturesDict({"text": text, "url": tfds.features.Text(),
                                                 "timestamp": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(TRAIN), "validation": self._generate_examples(VALIDATION)}

    def _generate_examples(self, docs):
        for i, doc in enumerate(docs):
            yield i, {"text": doc, "url": f"https://example.com/{i}", "timestamp": "2019-04-25T00:00:00Z"}


def load_experiment(relpath, arg=None):
    spec = importlib.util.spec_from_file_location(pathlib.Path(relpath).stem, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def c4_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = C4StandIn(data_dir=str(data_dir), config="en", file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    assert pathlib.Path(builder.data_dir) == data_dir / "c4" / "en" / "3.0.1"
    return str(data_dir)


@pytest.fixture(scope="module")
def gpt2_bpe(tmp_path_factory):
    """A small byte-level BPE saved as tokenizer.json: the format of data.tokenizer=hf's GPT-2 tokenizer."""
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN, trainer)
    path = tmp_path_factory.mktemp("gpt2_bpe")
    tok.save(str(path / "tokenizer.json"))
    return str(path)


RECIPES = [("experiments/pretrain/gpt2_124m.py", None), ("experiments/pretrain/gpt2_124m.py", "size=gpt2-medium"),
           ("experiments/pretrain/gpt3.py", None), ("experiments/pretrain/gpt3.py", "size=gpt3-xl")]


@pytest.mark.parametrize("recipe,arg", RECIPES)
def test_recipe_reads_its_corpus_from_a_local_stand_in(recipe, arg, c4_dir, gpt2_bpe, tmp_path):
    cfg = load_experiment(recipe, arg)
    assert cfg.data.source == "tfds:c4/en:3.0.1" and cfg.data.tokenizer == "hf"
    cfg.data.update(data_dir=c4_dir, tokenizer_path=gpt2_bpe, seq_len=32)
    cfg.train.batch_size = cfg.eval.batch_size = 4
    pipe = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    # every document of each split, in order, each followed by the end-of-text token when the tokenizer has one
    assert pipe.tokenizer.decode(pipe.train_tokens).replace("<|endoftext|>", "") == "".join(TRAIN)
    assert pipe.tokenizer.decode(pipe.val_tokens).replace("<|endoftext|>", "") == "".join(VALIDATION)
    assert pipe.val_bytes_per_token == pytest.approx(len("".join(VALIDATION).encode()) / len(pipe.val_tokens))
    batch = pipe.train_batch(0)
    assert batch.shape == (4, 33) and batch.max() < pipe.tokenizer.vocab_size


def stand_in_config(source, data_dir, **fields):
    from gptjax.configs import get_config

    cfg = get_config()
    cfg.data.update(source=source, data_dir=data_dir, tokenizer="char", seq_len=16, **fields)
    cfg.train.batch_size = 4
    return cfg


def test_tfds_split_and_feature_errors_name_the_key(c4_dir, tmp_path):
    cfg = stand_in_config("tfds:c4/en:3.0.1", c4_dir, tfds_val_split="test")
    with pytest.raises(data.DataError, match="data.tfds_val_split: c4/en:3.0.1 has no split 'test'"):
        data.make_pipeline(cfg, str(tmp_path / "a"), 0, 1)
    cfg = stand_in_config("tfds:c4/en:3.0.1", c4_dir, tfds_text_key="content")
    with pytest.raises(data.DataError, match=r"data.tfds_text_key: .* no feature 'content' \(it has "
                                             r"\['text', 'timestamp', 'url'\]\)"):
        data.make_pipeline(cfg, str(tmp_path / "b"), 0, 1)


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    """c4/en needs TensorFlow and Apache Beam to prepare: one line with the commands, not a traceback."""
    empty = str(tmp_path / "empty_tfds")
    cases = [
        ("tfds:c4/en", r"tfds dataset 'c4/en' is not prepared in .*empty_tfds; prepare it once .*"
                       r"tfds build c4/en --data_dir=.*empty_tfds --file_format=array_record"),
        ("tfds:c4/en:3.0.1", r"tfds dataset 'c4/en:3.0.1' is not in .*empty_tfds.*"
                             r"gs://allennlp-tensorflow-datasets/c4/en/3.0.1/.*tfds convert_format "
                             r"--dataset_version_dir=.*empty_tfds/c4/en/3.0.1 --out_file_format=array_record"),
        ("tfds:no_such_corpus", "data.source: unknown tfds dataset 'no_such_corpus'"),
        # super_glue's builder imports TensorFlow before anything is read: name the package, not "None"
        ("tfds:super_glue/copa", r"tfds dataset 'super_glue/copa' needs the Python package 'tensorflow' here .*"
                                 r"tfds build super_glue/copa --data_dir=.*empty_tfds"),
    ]
    for source, message in cases:
        with pytest.raises(data.DataError, match=message) as err:
            data.make_pipeline(stand_in_config(source, empty), str(tmp_path / "work"), 0, 1)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "empty_tfds" / "c4" / "en" / "3.1.0").exists()  # nothing half-prepared left behind


def test_tfrecord_copy_says_how_to_convert_it(tmp_path):
    """A copy prepared as TFRecord (MaxText's c4 bucket) cannot be read without TensorFlow: say how to convert."""
    src = tmp_path / "src"
    builder = C4StandIn(data_dir=str(src), config="en", file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    info = pathlib.Path(builder.data_dir) / "dataset_info.json"
    info.write_text(info.read_text().replace('"fileFormat": "array_record"', '"fileFormat": "tfrecord"'))
    assert '"tfrecord"' in info.read_text()
    with pytest.raises(data.DataError, match=r"c4/en:3.0.1' in .* is stored as tfrecord, not array_record, .*"
                                             r".*tfds convert_format --dataset_version_dir=.*c4/en/3.0.1") as err:
        data.make_pipeline(stand_in_config("tfds:c4/en:3.0.1", str(src)), str(tmp_path / "work"), 0, 1)
    assert "\n" not in str(err.value)


def test_tfds_split_slices_read_a_part(c4_dir, tmp_path):
    """`train[:25%]`-style splits read only that part: how to train on a slice of a corpus too big to read whole."""
    cfg = stand_in_config("tfds:c4/en:3.0.1", c4_dir, tfds_train_split="train[:25%]",
                          tfds_val_split="validation[-2:]")
    pipe = data.make_pipeline(cfg, str(tmp_path), 0, 1)
    assert pipe.tokenizer.decode(pipe.train_tokens) == "".join(TRAIN[:10])
    assert pipe.tokenizer.decode(pipe.val_tokens) == "".join(VALIDATION[-2:])
