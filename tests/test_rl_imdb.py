"""experiments/rlhf/imdb_sentiment.py and its judge config experiments/finetune/imdb.py on a few local rows written as
TFDS `imdb_reviews` itself (its features, config plain_text, splits train/test/unsupervised), read back through
TFDS's registered imdb builder as a user with the real data would."""

import importlib.util
import os

import numpy as np
import pytest

from gptjax import configs
from gptjax.errors import DataError
from gptjax.finetune import data as ft_data
from gptjax.finetune import transforms
from gptjax.rl import data as rl_data
from gptjax.rl import run as rl_run
from gptjax.tokenizer import CharTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [("I loved every minute of this film.", 1), ("A dull, lifeless mess.", 0), ("Great acting, great story.", 1),
         ("Worst movie I have seen.", 0), ("A charming little comedy.", 1), ("Boring and far too long.", 0)]
TEST = [("Brilliant.", 1), ("Awful.", 0)]
UNSUPERVISED = [("Saw it twice.", -1)]


def _load(*parts):
    path = os.path.join(ROOT, "experiments", *parts)
    spec = importlib.util.spec_from_file_location(parts[-1][:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def imdb_dir(tmp_path_factory):
    """A TFDS data dir holding `imdb_reviews/plain_text/1.0.0` in array_record, written by a builder that is TFDS's
    imdb builder with local rows in place of the download."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imdb_reviews import imdb_reviews_dataset_builder as imdb

    class ImdbStandin(imdb.Builder, skip_registration=True):
        name = "imdb_reviews"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}),
                supervised_keys=("text", "label"), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._rows(TRAIN), "test": self._rows(TEST), "unsupervised": self._rows(UNSUPERVISED)}

        def _rows(self, rows):
            for i, (text, label) in enumerate(rows):
                yield i, {"text": text, "label": label}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    ImdbStandin(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    real = imdb.Builder(data_dir=str(tmp_path_factory.mktemp("empty"))).info.features
    assert repr(tfds.builder("imdb_reviews", data_dir=data_dir).info.features) == repr(real)
    assert real["label"].names == ["neg", "pos"]
    return data_dir


def test_prompts_are_the_review_texts(imdb_dir):
    assert rl_data.read_prompts("tfds:imdb_reviews", "train", "text", imdb_dir) == [t for t, _ in TRAIN]
    assert rl_data.read_prompts("tfds:imdb_reviews", "unsupervised", "text", imdb_dir) == ["Saw it twice."]
    with pytest.raises(DataError, match=r"tfds:imdb_reviews\[train\] record 0: .*'review'"):
        rl_data.read_prompts("tfds:imdb_reviews", "train", "review", imdb_dir)  # HF's imdb names it `review`


@pytest.mark.parametrize("stage", ["reward", "ppo", "dpo", "grpo"])
def test_each_stage_reads_review_openings_and_names_the_sentiment_judge(stage, imdb_dir):
    c = _load("rlhf", "imdb_sentiment.py").get_config(f"stage={stage},data_dir={imdb_dir}")
    r = c.rl
    assert (r.stage, r.prompts, r.prompt_field, r.data_dir) == (stage, "tfds:imdb_reviews", "text", imdb_dir)
    assert (r.judge_from, r.judge_label, c.train.init_from) == ("runs/imdb", "1", "runs/gpt2")
    assert 8 <= r.prompt_tokens <= 16 and r.response_tokens == 16
    assert r.reward_from == ("" if stage == "reward" else "runs/rlhf/imdb_rm")
    assert r.comparisons_from == ("runs/rlhf/imdb_rm" if stage == "dpo" else "")
    rl_run._check(c)  # what train_and_evaluate checks first: the stage has what it needs
    configs.finalize(c)
    # The stage's own prompt path on the stand-in: train reviews, the last probe_prompts held out, each cut to its
    # first prompt_tokens tokens, left-padded.
    with c.unlocked():
        c.rl.probe_prompts = 2
    tok = CharTokenizer("".join(sorted(set("".join(t for t, _ in TRAIN)))))
    (tokens, mask), (held, held_mask) = rl_run._prompts(c, tok)
    assert len(tokens) == 4 and len(held) == 2 and mask.all() and held_mask.all()
    assert [tok.decode(list(row)) for row in tokens] == [t[:r.prompt_tokens] for t, _ in TRAIN[:4]]
    assert tok.decode(list(held[1])) == TRAIN[5][0][:r.prompt_tokens]


def test_overrides_and_bad_stage():
    m = _load("rlhf", "imdb_sentiment.py")
    c = m.get_config("stage=ppo,policy=runs/gpt2_imdb,judge=J,rm=RM,kl=0.1,kl_target=0,steps=7")
    assert (c.train.init_from, c.rl.judge_from, c.rl.reward_from, c.train.steps) == ("runs/gpt2_imdb", "J", "RM", 7)
    assert (c.rl.kl_coef, c.rl.kl_target) == (0.1, 0.0)
    assert m.get_config().rl.stage == "ppo"
    with pytest.raises(configs.ConfigError, match="stage 'sft' is not one of reward, ppo, dpo, grpo"):
        m.get_config("stage=sft")
    with pytest.raises(configs.ConfigError, match="config argument 'beta' is unknown"):
        m.get_config("stage=ppo,beta=0.2")  # a dpo argument


def test_judge_config_encodes_imdb_rows_with_its_labels(imdb_dir):
    c = _load("finetune", "imdb.py").get_config(f"data_dir={imdb_dir}")
    f = c.finetune
    assert (f.source, f.data_dir, f.tfds_train_split, f.tfds_val_split) == ("tfds:imdb_reviews", imdb_dir, "train",
                                                                           "test")
    assert (f.kind, f.task_type, tuple(f.fields), f.label_field) == ("classify", "classification", ("text",), "label")
    judge_label = _load("rlhf", "imdb_sentiment.py").get_config().rl.judge_label
    assert [str(x) for x in f.labels] == ["0", "1"] and str(f.labels[1]) == judge_label  # "1" is positive ("pos")
    configs.finalize(c)
    tok = CharTokenizer("".join(sorted(set("".join(t for t, _ in TRAIN + TEST)))))
    S = transforms.Specials.after(tok.vocab_size)
    recs = ft_data.read_tfds("imdb_reviews", f.tfds_train_split, f.data_dir)
    enc = ft_data.encode_classification(recs, tok, f, S, 16)
    np.testing.assert_array_equal(enc.labels, [label for _, label in TRAIN])
    first = TRAIN[0][0]
    np.testing.assert_array_equal(enc.inputs[0, 0, :16], [S.start, *tok.encode(first)[:14], S.extract])  # truncated
    val = ft_data.encode_classification(ft_data.read_tfds("imdb_reviews", f.tfds_val_split, f.data_dir), tok, f, S, 16)
    np.testing.assert_array_equal(val.labels, [1, 0])
    with pytest.raises(DataError, match=r"tfds:imdb_reviews\[unsupervised\] record 0: label '-1' is not one of"):
        ft_data.encode_classification(ft_data.read_tfds("imdb_reviews", "unsupervised", f.data_dir), tok, f, S, 16)
