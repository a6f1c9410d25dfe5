"""Fine-tuning with its workdirs on cloud storage, on test_cloud.py's stand-in gs:// bucket (an fsspec filesystem
over a local folder, no network): a gs:// `train.init_from` is a workdir like a local one, and an instruction-tuning
run writes its workdir and the exported `<workdir>/model` into the bucket, which `gptjax sample` then reads."""

import json
import os

import pytest

from gptjax import configs, files, workdirs
from gptjax.errors import ConfigError
from gptjax import workdirs
from gptjax.configs import finetune as finetune_config
from helpers import gptjax_in_process
from test_cloud import bucket  # noqa: F401  (the stand-in gs:// filesystem; the test runs in an empty cwd)
from tests import rl_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_init_from_a_bucket_is_a_workdir(bucket):  # noqa: F811
    """The pretrained run on the bucket is found (its config.json read through the bucket, not a local path), its
    tokenizer copied into the new workdir, and it is never the workdir itself or a folder above it."""
    from gptjax import checkpoint, tokenizer

    pre = configs.get_config()  # what _adopt reads of a pretrained workdir: its config and tokenizer
    pre.data.tokenizer = "char"
    tok = tokenizer.build_tokenizer(pre.data, "gs://b/runs/pre", lambda: ["abc \n"])
    pre.model.update(vocab_size=tok.vocab_size, num_layers=1)
    checkpoint.write_config("gs://b/runs/pre", pre)
    c = configs.get_config()
    c.finetune = finetune_config.section()
    c.finetune.kind = "sft"  # a valid section: adopting re-checks the config
    c.train.init_from = "gs://b/runs/pre"
    workdirs.adopt_init_from(c, "gs://b/runs/ft")
    assert (bucket / "b" / "runs" / "ft" / "tokenizer" / "tokenizer.json").exists()
    assert (c.model.vocab_size, c.model.num_layers, c.data.tokenizer) == (tok.vocab_size, 1, "char")
    for inside in ("gs://b/runs/pre", "gs://b/runs/pre/ft"):
        with pytest.raises(ConfigError, match="train.init_from: gs://b/runs/pre is \\(or holds\\) this run's workdir"):
            workdirs.adopt_init_from(c, inside)


@pytest.mark.slow
def test_instruction_tuning_from_and_into_a_bucket_then_sampling(bucket, tmp_path, capsys):  # noqa: F811
    """`gptjax train --config=experiments/finetune/instruct.py:lora=2` with init_from, data and workdir on the
    bucket: config, tokenizer, metrics, loss curve and checkpoints there, and the exported model (adapters merged)
    in `<workdir>/model`, which `gptjax sample --template` reads from the bucket as it would a local copy."""
    rl_fixtures.policy_workdir("gs://b/runs/pre", rl_fixtures.plays_alphabet())
    rows = [{"prompt": f"Say {w}.", "response": w} for w in ("ay", "no", "hark", "anon") * 8]
    for name, part in (("train", rows), ("val", rows[:8])):
        files.write_text(f"gs://b/data/{name}.jsonl", "".join(json.dumps(r) + "\n" for r in part))
    status, _, err = gptjax_in_process(
        capsys, "train", f"--config={ROOT}/experiments/finetune/instruct.py:lora=2", "--workdir=gs://b/runs/sft",
        "--config.train.init_from=gs://b/runs/pre", "--config.train.steps=2", "--config.checkpoint.async_save=False",
        "--config.finetune.source=jsonl", "--config.finetune.train_path=gs://b/data/train.jsonl",
        "--config.finetune.val_path=gs://b/data/val.jsonl", "--config.finetune.template=Q: {prompt} A: ")
    assert status == 0, err[-3000:]
    stored = bucket / "b" / "runs" / "sft"
    for name in ("config.json", "tokenizer/tokenizer.json", "metrics.jsonl", "loss_curve.png", "checkpoints/2",
                 "model/config.json", "model/tokenizer/tokenizer.json", "model/checkpoints/2"):
        assert (stored / name).exists(), name
    assert not (bucket / "b" / "runs" / "pre" / "model").exists()  # the pretrained run is only read

    status, text, err = gptjax_in_process(capsys, "sample", "--workdir=gs://b/runs/sft/model", "--template",
                                          "--prompt=Say no.", "--max_new_tokens=4", "--temperature=0")
    assert status == 0 and text.startswith("Q: Say no. A: "), (text, err[-2000:])
    local = str(tmp_path / "local_model")
    files.copytree("gs://b/runs/sft/model", local)
    again = workdirs.sample_from_workdir(local, "Q: Say no. A: ", stream=False, max_new_tokens=4, temperature=0.0)
    assert text.splitlines()[0] == again[0].splitlines()[0]
