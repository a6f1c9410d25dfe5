"""Two processes joined by jax.distributed on 127.0.0.1 (2 devices each) train exactly like one process with
4 devices: each process reads and tokenizes only its own train shards and builds its rows of the global batch,
collectives, checkpoints written together; a sentencepiece tokenizer is trained by process 0 alone while process 1
waits for it in the workdir."""

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}, {
        r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "sentencepiece"])
def test_two_processes_match_one(corpus_file, tmp_path, tokenizer):
    args = ["gptjax", "train", f"--config={ROOT}/experiments/pretrain/shakespeare_char.py",
            f"--config.data.tokenizer={tokenizer}", "--config.data.vocab_size=512",
            f"--config.data.path={corpus_file}", "--config.train.steps=12", "--config.train.log_every_steps=1",
            "--config.eval.every_steps=6", "--config.eval.steps=2", "--config.sample.max_new_tokens=8",
            "--config.model.dropout=0.1", "--config.mesh.shape=(2,2,1)",
            "--config.data.shards=8"]  # the experiment reads one shard (nanoGPT's sampler); 8 split over 2 processes
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    single = subprocess.run(args + [f"--workdir={tmp_path / 'single'}"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    env = dict(os.environ, XLA_FLAGS="")
    multi = subprocess.run([f"{ROOT}/launch/local_multiprocess.sh", "2", "2", *args, f"--workdir={tmp_path / 'multi'}"],
                           env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in multi.stdout

    (train_1, val_1), (train_2, val_2) = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert sorted(train_1) == sorted(train_2) == list(range(1, 13))
    for step in train_1:
        assert abs(train_1[step] - train_2[step]) <= 1e-5 * abs(train_1[step]), step
    for step in val_1:
        assert abs(val_1[step] - val_2[step]) <= 1e-5 * abs(val_1[step]), step
    assert os.path.isdir(tmp_path / "multi" / "checkpoints" / "12")
    assert (tmp_path / "multi" / "samples.txt").read_text().strip()
    tokenizers = [(tmp_path / run / "tokenizer" / "tokenizer.json").read_text() for run in ("single", "multi")]
    assert tokenizers[0] == tokenizers[1] and f'"kind": "{tokenizer}"' in tokenizers[0]
    cached = sorted(p.name.split("-")[-1] for p in (tmp_path / "multi" / "data").glob("train-*.json"))
    assert cached == [f"{j}of8.json" for j in range(8)]  # every train shard tokenized and cached once
