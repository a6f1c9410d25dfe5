"""experiments/rlhf/imdb_sentiment.py and its judge config experiments/finetune/imdb.py on a few local rows written as
TFDS `imdb_reviews` itself (its features, config plain_text, splits train/test/unsupervised), read back through
TFDS's registered imdb builder as a user with the real data would; and, where the dataset is not prepared, the one
line each of their commands ends in (TFDS never asked to download)."""

import importlib.util
import os

import numpy as np
import pytest

from gptjax import configs
from gptjax.errors import DataError
from gptjax.finetune import data as ft_data
from gptjax.finetune import transforms
from gptjax.rl import data as rl_data
from gptjax.configs import rl as rl_config
from gptjax.rl import stage as rl_stage
from gptjax.tokenizer import CharTokenizer
from tests import rl_fixtures
from tests.helpers import gptjax_in_process, metrics_by_step, one_line_error

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


def _imdb_standin(data_dir, train, test, unsupervised):
    """Writes `imdb_reviews/plain_text/1.0.0` in array_record under `data_dir`, by a builder that is TFDS's imdb
    builder with these rows in place of the download."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imdb_reviews import imdb_reviews_dataset_builder as imdb

    class ImdbStandin(imdb.Builder, skip_registration=True):
        name = "imdb_reviews"

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}),
                supervised_keys=("text", "label"), disable_shuffling=True)

        def _split_generators(self, dl_manager):
            return {"train": self._rows(train), "test": self._rows(test), "unsupervised": self._rows(unsupervised)}

        def _rows(self, rows):
            for i, (text, label) in enumerate(rows):
                yield i, {"text": text, "label": label}

    ImdbStandin(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@pytest.fixture(scope="module")
def imdb_dir(tmp_path_factory):
    """A TFDS data dir holding the stand-in `imdb_reviews` of TRAIN, TEST and UNSUPERVISED."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imdb_reviews import imdb_reviews_dataset_builder as imdb

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _imdb_standin(data_dir, TRAIN, TEST, UNSUPERVISED)
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
    rl_config.validate(c)  # what a stage's config is checked for first: the stage has what it needs
    configs.finalize(c)
    # The stage's own prompt path on the stand-in: train reviews, the last probe_prompts held out, each cut to its
    # first prompt_tokens tokens, left-padded.
    with c.unlocked():
        c.rl.probe_prompts = 2
    tok = CharTokenizer("".join(sorted(set("".join(t for t, _ in TRAIN)))))
    (tokens, mask), (held, held_mask) = rl_stage.prompts(c, tok)
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


# --- a dataset that is not prepared ---------------------------------------------------------------------------


@pytest.fixture
def no_downloads(monkeypatch):
    """Nothing reaches the network and no TFDS dataset is built: gptjax only reads prepared data."""
    import socket

    import tensorflow_datasets as tfds

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


UNPREPARED = [("finetune/imdb.py:data_dir={d}", "finetune.source", "imdb_reviews"),
              ("finetune/glue.py:task=imdb --config.finetune.data_dir={d}", "finetune.source", "imdb_reviews"),
              ("finetune/glue.py:task=sst2 --config.finetune.data_dir={d}", "finetune.source", "glue/sst2")] + [
              (f"rlhf/imdb_sentiment.py:stage={stage},data_dir={{d}}", "rl.prompts", "imdb_reviews")
              for stage in ("reward", "ppo", "dpo", "grpo")]


@pytest.mark.parametrize("command,key,name", UNPREPARED, ids=[c.split()[0].format(d="") for c, _, _ in UNPREPARED])
def test_a_dataset_that_is_not_prepared_is_one_line_saying_how_to_prepare_it(command, key, name, capsys, tmp_path,
                                                                              no_downloads):
    """Each documented command on a TFDS data dir without the dataset: one line naming the dataset, the data dir and
    the command that prepares it, before any model is loaded (the rlhf stages' starting models do not exist here)."""
    d = tmp_path / "tfds"
    d.mkdir()
    config, *flags = command.format(d=d).split()
    err = one_line_error(capsys, f"gptjax: error: {key}: tfds dataset {name!r} is not prepared in {d}; ", "train",
                         f"--config={ROOT}/experiments/{config}", f"--workdir={tmp_path / 'run'}", *flags)
    assert f"tfds build {name} --data_dir={d} --file_format=array_record" in err
    assert not os.listdir(d) and not os.path.exists(tmp_path / "run")


# --- every command of the example, with --config.train.steps ------------------------------------------------


@pytest.mark.slow
def test_train_steps_on_the_command_line_sets_the_steps_of_each_imdb_command(tmp_path_factory, capsys):
    """The example's commands in its order (the judge by imdb.py, glue.py:task=imdb, then each rlhf stage) from a
    tiny char-level 'GPT-2' on a stand-in imdb_reviews of 16 reviews: --config.train.steps=3 is the steps each run
    trains (the experiments' own lengths: 1 epoch = 1 step, 3 epochs = 2 steps, 200 or 300 steps)."""
    root = tmp_path_factory.mktemp("imdb_steps")
    words = ["loved", "hated", "great", "dull", "witty", "awful", "moving", "boring"]
    rows = [(f"A {words[i % 8]} film; the {words[(i * 3) % 8]} ending, scene {i}.", i % 2) for i in range(20)]
    data_dir = str(root / "tfds")
    _imdb_standin(data_dir, rows[:16], rows[16:], UNSUPERVISED)
    rl_fixtures.policy_workdir(root / "gpt2", rl_fixtures.plays_alphabet())
    steps = ["--config.train.steps=3", "--config.checkpoint.async_save=False"]
    probe = "--config.rl.probe_prompts=8"  # of the 16 reviews, 8 are held out for evaluation
    small = [probe, "--config.rl.minibatch=8", "--config.rl.epochs=1"]
    stage = f"policy={root / 'gpt2'},judge={root / 'imdb'},rm={root / 'imdb_rm'},data_dir={data_dir}"
    commands = {
        "imdb": ["finetune/imdb.py:data_dir=" + data_dir, f"--config.train.init_from={root / 'gpt2'}"],
        "imdb_glue": ["finetune/glue.py:task=imdb", f"--config.train.init_from={root / 'gpt2'}",
                      f"--config.finetune.data_dir={data_dir}"],
        "imdb_rm": [f"rlhf/imdb_sentiment.py:stage=reward,{stage}", probe],
        "imdb_ppo": [f"rlhf/imdb_sentiment.py:stage=ppo,{stage}", *small, "--config.rl.rollout_batch=8"],
        "imdb_dpo": [f"rlhf/imdb_sentiment.py:stage=dpo,{stage}", probe],
        "imdb_grpo": [f"rlhf/imdb_sentiment.py:stage=grpo,{stage}", *small, "--config.rl.rollout_batch=4"],
    }
    for name, (config, *flags) in commands.items():
        workdir = root / name
        status, _, err = gptjax_in_process(capsys, "train", f"--config={ROOT}/experiments/{config}",
                                           f"--workdir={workdir}", *steps, *flags)
        assert status == 0, (name, err[-3000:])
        assert max(metrics_by_step(str(workdir))) == 3, name  # train_loss is logged at the last step
        assert sorted(os.listdir(workdir / "checkpoints")) == ["3"], name
