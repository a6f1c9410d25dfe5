"""Training on real text: the loss falls, a tiny model overfits a batch, exact resume after SIGKILL, preemption
(SIGTERM), half-written checkpoints, restoring onto another mesh, config mismatches and NaN stops."""

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gptjax import checkpoint, configs, errors, sharding, objectives, runs
from helpers import communicate, gptjax_subprocess, lm_trainer, metrics_by_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAR = os.path.join(ROOT, "experiments", "pretrain", "shakespeare_char.py")


def char_config(corpus, **train_overrides):
    """nanoGPT's baby run on a 200 kB real corpus."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shakespeare_char", CHAR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.path = corpus
    c.mesh.shape = (2, 2, 2)  # the 8 virtual devices of the tests: batch 12 over 4 data shards
    c.sample.max_new_tokens = 20
    c.train.update(train_overrides)
    return c


@pytest.mark.slow
def test_loss_falls_on_real_text(corpus_file, tmp_path):
    c = char_config(corpus_file, steps=300, log_every_steps=25)
    c.eval.update(every_steps=150, steps=10)
    c.checkpoint.every_steps = 300
    final = runs.train(configs.finalize(c), str(tmp_path))
    losses = metrics_by_step(str(tmp_path))
    vals = metrics_by_step(str(tmp_path), "val_loss")
    assert losses[25] > 3.0  # about ln(vocab) at the start
    assert final["train_loss"] < 2.5 and vals[300] < 2.6, (losses, vals)
    assert vals[300] < vals[150]
    # A char model's bits per byte is its loss in bits per char (one byte per char for this ASCII text).
    assert abs(final["val_bpb"] - final["val_loss"] / np.log(2)) < 0.05
    for name in ("config.json", "loss_curve.png", "samples.txt", "metrics.jsonl"):
        assert os.path.getsize(tmp_path / name) > 0
    row = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert {"step", "train_loss", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(row)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train_loss", "val_loss", "val_bpb"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_tiny_model_overfits_one_batch(corpus_file):
    c = char_config(corpus_file)
    c.model.update(num_layers=2, d_model=64, num_heads=4)
    c.optim.update(lr=3e-3, warmup_steps=10, min_lr=3e-3, weight_decay=0.0)
    c = configs.finalize(c)
    text = open(corpus_file).read()[:5000]
    chars = sorted(set(text))
    ids = np.array([chars.index(ch) for ch in text], np.int32)
    with c.unlocked():
        c.model.vocab_size = len(chars)
    batch = np.stack([ids[i * 65:(i + 1) * 65] for i in range(12)])
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    trainer = lm_trainer(c, mesh)
    state = trainer.init_state(0)
    with trainer.context():
        for _ in range(250):
            state, out = trainer.train_step(state, sharding.host_local_to_global(objectives.LanguageModeling.from_windows(batch), mesh))
    assert float(out["train_loss"]) < 0.1


@pytest.mark.slow
def test_restore_onto_a_different_mesh(corpus_file, tmp_path):
    c = char_config(corpus_file, batch_size=16)
    c.model.vocab_size = 65
    c = configs.finalize(c)
    trainers = {}
    for shape in ((8, 1, 1), (1, 2, 4)):
        with c.unlocked():
            c.mesh.shape = shape
        trainers[shape] = lm_trainer(c, sharding.make_mesh(shape))
    src = trainers[(8, 1, 1)]
    state = src.init_state(0)
    with src.context():
        state, _ = src.train_step(state, sharding.host_local_to_global(
            objectives.LanguageModeling.from_windows(np.ones((16, 65), np.int32)), src.mesh))
    mngr = checkpoint.manager(str(tmp_path), c.checkpoint)
    checkpoint.save(mngr, 1, state.params, state.train_item(), {"step": 1}, force=True)
    mngr.wait_until_finished()
    dst = trainers[(1, 2, 4)]
    params, train_item, data_state = checkpoint.restore(
        mngr, 1, dst.abstract_state.params, dst.abstract_state.train_item()
    )
    mngr.close()
    assert data_state == {"step": 1} and int(train_item["step"]) == 1
    kernel = params["h_0"]["mlp"]["fc_kernel"]
    assert tuple(kernel.sharding.spec) == ("fsdp", "tensor") and kernel.sharding.mesh.shape["tensor"] == 4
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, state.params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 train_item["opt_state"], state.opt_state)


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-2000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(corpus_file, tmp_path):
    """40 steps straight == 20 steps, SIGKILL, the same command again: same losses and parameters."""
    args = [f"--config={CHAR}", f"--config.data.path={corpus_file}", "--config.train.steps=40",
            "--config.train.log_every_steps=1", "--config.checkpoint.every_steps=20", "--config.eval.every_steps=40",
            "--config.eval.steps=150", "--config.model.dropout=0.1", "--config.sample.max_new_tokens=10",
            "--config.checkpoint.async_save=False", "--config.mesh.shape=(2,2,2)"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    p = gptjax_subprocess("train", f"--workdir={straight}", *args)
    out, err = communicate(p, 300)
    assert p.returncode == 0, err[-3000:]

    p = gptjax_subprocess("train", f"--workdir={killed}", *args)
    _wait_for(lambda: os.path.isdir(os.path.join(killed, "checkpoints", "20")), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(os.path.join(killed, "checkpoints", "40")), "the run finished before it was killed"
    p = gptjax_subprocess("train", f"--workdir={killed}", *args)
    out, err = communicate(p, 300)
    assert p.returncode == 0, err[-3000:]
    assert "resumed from" in out and "checkpoints/20" in out

    a, b = metrics_by_step(straight), metrics_by_step(killed)
    assert sorted(a) == sorted(b) == list(range(1, 41))
    assert [a[s] for s in range(21, 41)] == [b[s] for s in range(21, 41)]
    assert metrics_by_step(straight, "val_loss") == metrics_by_step(killed, "val_loss")
    params = []
    for workdir in (straight, killed):
        with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
            params.append(mngr.restore(40, args=ocp.args.Composite(params=ocp.args.StandardRestore())).params)
    jax.tree.map(np.testing.assert_array_equal, *params)


@pytest.mark.slow
def test_sigterm_saves_and_half_written_checkpoints_are_skipped(corpus_file, tmp_path):
    workdir = str(tmp_path / "run")
    args = [f"--config={CHAR}", f"--config.data.path={corpus_file}", "--config.train.log_every_steps=1",
            "--config.checkpoint.every_steps=1000", "--config.mesh.shape=(2,2,2)", "--config.sample.max_new_tokens=5"]
    p = gptjax_subprocess("train", f"--workdir={workdir}", *args, "--config.train.steps=100000")
    _wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl"))
              and len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) >= 5, p)
    p.send_signal(signal.SIGTERM)
    out, err = communicate(p, 120)
    assert p.returncode == 143, err[-3000:]
    assert "preempted: saved step" in out
    saved = checkpoint.latest_step(workdir)
    assert saved is not None and saved >= 5

    # A save that a killed process left half-written is not a checkpoint: the run resumes from `saved`.
    tmp = os.path.join(workdir, "checkpoints", f"{saved + 50}.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(tmp, "params"))
    open(os.path.join(tmp, "params", "garbage"), "w").write("half")
    p = gptjax_subprocess("train", f"--workdir={workdir}", *args, f"--config.train.steps={saved + 3}")
    out, err = communicate(p, 300)
    assert p.returncode == 0, err[-3000:]
    assert f"checkpoints/{saved}" in out
    assert checkpoint.latest_step(workdir) == saved + 3

    # The same workdir with another model: one line, nothing lost.
    p = gptjax_subprocess("train", f"--workdir={workdir}", *args, "--config.model.num_layers=2")
    out, err = communicate(p, 120)
    assert p.returncode == 2 and err.count("\n") == 1
    assert "holds a different run (model.num_layers=4 there, 2 here)" in err
    assert checkpoint.latest_step(workdir) == saved + 3

    # Dropout and the compute dtype may change on the same params: the run resumes and goes on.
    p = gptjax_subprocess("train", f"--workdir={workdir}", *args, f"--config.train.steps={saved + 5}",
            "--config.model.dropout=0.1", "--config.model.dtype=bfloat16")
    out, err = communicate(p, 300)
    assert p.returncode == 0, err[-3000:]
    assert f"checkpoints/{saved + 3}" in out and checkpoint.latest_step(workdir) == saved + 5


@pytest.mark.slow
def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(corpus_file, tmp_path):
    c = char_config(corpus_file, steps=30, log_every_steps=5)
    c.checkpoint.update(every_steps=5, async_save=False)
    c.optim.update(lr=1e9, min_lr=1e9, warmup_steps=0, clip_norm=0.0)
    with pytest.raises(errors.TrainingError, match="became nan|became inf") as err:
        runs.train(configs.finalize(c), str(tmp_path))
    assert "\n" not in str(err.value)
    step = checkpoint.latest_step(str(tmp_path))
    if step is not None:  # whatever was saved is finite
        with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as mngr:
            params = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore())).params
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_in_context_tasks_run_inside_training(corpus_file, tmp_path):
    """eval.tasks: the ICL evaluator runs every tasks_every_steps steps on the params in memory, logged with the
    other metrics; an unknown task stops the run before any work."""
    c = configs.get_config()  # sentencepiece with byte fallback: it encodes any task's text
    c.model.update(num_layers=1, d_model=64, num_heads=2)
    c.train.update(steps=4, log_every_steps=2, batch_size=8)
    c.data.update(vocab_size=512, seq_len=64)
    c.eval.update(every_steps=4, steps=1, tasks=("reversed_words",), tasks_shots=(0, 1), tasks_limit=4,
                  tasks_every_steps=2)
    runs.train(configs.finalize(c), str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    icl = {r["step"]: r for r in rows if any(k.startswith("icl/reversed_words/") for k in r)}
    assert sorted(icl) == [2, 4]
    assert {"icl/reversed_words/0shot_acc", "icl/reversed_words/1shot_acc", "icl/reversed_words/1shot_perplexity"} <= set(icl[4])
    bad = char_config(corpus_file, steps=4)
    bad.eval.tasks = ("no_such_task",)
    with pytest.raises(errors.GptjaxError, match="unknown task 'no_such_task'"):
        runs.train(configs.finalize(bad), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_each_intervals_throughput_is_its_own_when_the_copy_waits_behind_the_next_step():
    """On the CPU a step's metrics exist when it finishes, but their copy to the host waits behind the step dispatched
    after it. Each interval's tokens/s is still its own steps': the last one too, which used to read as nearly
    free (107% MFU at the end of a short run), and the one after a checkpoint's pause."""
    import contextlib

    from gptjax import loop as loop_lib

    step_seconds, done = 0.05, []  # done[k]: when step k finishes on the simulated device (steps run in order)

    class Metric:  # a step's scalar output, ready when its step is done; copied once the next step is done
        def __init__(self, k):
            self.k = k

        def block_until_ready(self):
            time.sleep(max(0.0, done[self.k] - time.time()))
            return self

        def __array__(self, dtype=None, copy=None):
            time.sleep(max(0.0, done[min(self.k + 1, len(done) - 1)] - time.time()))
            return np.asarray(1.0, np.float32)

    class Trainer:
        mesh = None
        schedule = staticmethod(lambda step: 0.0)

        @contextlib.contextmanager
        def context(self):
            yield

    def step_fn(state, step):  # dispatch returns at once; the step runs after the one before it
        done.append(max(time.time(), done[-1] if done else 0.0) + step_seconds)
        k = len(done) - 1
        return state, {"train_loss": Metric(k), "grad_norm": Metric(k)}

    class Pause(loop_lib.Hook):  # a checkpoint-like hook at step 4: 0.2 s of host work, left out of throughput
        every = 4

        def __call__(self, loop):
            loop.flush()
            with loop.paused():
                time.sleep(0.2)

    rows = []

    class Writer:
        def write(self, step, values):
            rows.append((step, values))

    hook = loop_lib.LogHook(every=1, tokens_per_step=100, flops_per_step=0.0, peak_flops_per_device=None)
    loop_lib.run_loop(Trainer(), None, 0, 8, None, [hook, Pause()], Writer(), step_fn=step_fn)
    assert [step for step, _ in rows] == list(range(1, 9))
    rates = [values["tokens_per_sec"] for _, values in rows]
    assert all(500 <= r <= 5000 for r in rates), rates  # 100 tokens per 0.05 s step: 2,000 tokens/s (the bug: 288,000)
