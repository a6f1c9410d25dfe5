"""Faults a long run meets (issue 20), for every kind of training (all go through trainer.start, Trainer.fit and the
checkpoint hook): a write the filesystem refuses (full disk, read-only, no permission) is one line naming the path and
the cause, with nothing older deleted, and a rerun on a roomy disk resumes exactly; a checkpoint that cannot be read
is reported as corrupt by its step, and training, sampling and init_from fall back to the newest step that reads (or
refuse on request); a workdir that is a file or cannot be written is one line before any work; a second `gptjax
train` on a live run's workdir refuses, and a killed run leaves no stale lock.

The fast tier checks each piece in this process with stand-ins (a writer that raises ENOSPC, a held lock, a
checkpoint of a few arrays cut short); the slow tier runs the commands end to end, on a real full filesystem where
this machine lets root mount a small tmpfs (else the stand-in writer in the child process)."""

import errno
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gptjax import checkpoint, configs, errors, files, loop as loop_lib, metrics, runs, workdirs
from helpers import ROOT, communicate, gptjax_in_process, gptjax_subprocess, metrics_by_step, one_line_error

# What TensorStore raises in orbax's writer threads when the disk is full (orbax 0.12.8 on a full tmpfs).
ENOSPC_FROM_TENSORSTORE = (
    'RESOURCE_EXHAUSTED: Failed writing: "{path}/d/b3976d28": Failed to write 22523 bytes to file 11: No space left '
    "on device [os_error_code='28'] [source locations='tensorstore/internal/os/file_util_posix.cc:422']")

# A child `gptjax` whose checkpoint writer meets a full disk at every step after `FULL_AFTER` (the stand-in where
# this machine cannot mount a small filesystem): the error is raised where orbax's writer thread met the real one.
STANDIN_CHILD = """
import sys
from orbax.checkpoint._src.serialization import ocdbt_utils
real = ocdbt_utils.merge_ocdbt_per_process_files
async def full(directory, *args, **kwargs):
    step = int(str(directory).split("/checkpoints/")[1].split(".")[0])
    if step > {full_after}:
        raise ValueError({message!r}.format(path=directory))
    return await real(directory, *args, **kwargs)
ocdbt_utils.merge_ocdbt_per_process_files = full
from gptjax import main
sys.exit(main.main(["gptjax", *sys.argv[1:]]))
"""


def tiny_args(corpus, steps, *extra):
    """`gptjax train` flags of a one-layer char model that saves every 2 steps and keeps 3 checkpoints."""
    return [f"--config.data.path={corpus}", "--config.data.source=text", "--config.data.tokenizer=char",
            "--config.data.seq_len=32", "--config.model.num_layers=1", "--config.model.d_model=32",
            "--config.model.num_heads=2", "--config.train.batch_size=8", f"--config.train.steps={steps}",
            "--config.train.log_every_steps=1", f"--config.eval.every_steps={steps}", "--config.eval.steps=1",
            "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3", "--config.sample.max_new_tokens=4",
            "--config.sample.num_samples=1", *extra]


def tiny_config(corpus, steps, **checkpoint_keys):
    """The config `tiny_args` gives, built in code."""
    c = configs.get_config()
    c.data.update(source="text", path=corpus, tokenizer="char", seq_len=32)
    c.model.update(num_layers=1, d_model=32, num_heads=2)
    c.train.update(steps=steps, batch_size=8, log_every_steps=1)
    c.eval.update(every_steps=steps, steps=1)
    c.checkpoint.update(every_steps=2, keep=3, **checkpoint_keys)
    c.sample.update(max_new_tokens=4, num_samples=1)
    return configs.finalize(c)


def assert_one_error_line(status, err, *messages):
    """The command failed with one `gptjax: error:` line (the last one) holding `messages`, and no traceback:
    other lines on stderr are the run's notes (the kernels it picked, a smoke run)."""
    lines = err.strip().splitlines()
    assert status == 2, err[-3000:]
    assert [ln for ln in lines if ln.startswith("gptjax: error:")] == lines[-1:], err[-3000:]
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    for m in messages:
        assert m in lines[-1], lines[-1]


# ---------------------------------------------------------------------------------------------------- writes


@pytest.mark.parametrize("raised, cause", [
    (ValueError(ENOSPC_FROM_TENSORSTORE.format(path="/w/checkpoints/4")), "no space left on the device"),
    (OSError(errno.EROFS, "Read-only file system"), "the filesystem is read-only"),
    (ValueError('PERMISSION_DENIED: Error writing "x": HTTP response code: 403'), "permission denied"),
])
def test_a_refused_write_is_one_line_naming_the_path_and_the_cause(raised, cause):
    try:
        try:
            raise raised
        except Exception as inner:  # orbax wraps what its threads met
            raise Exception("Encountered error while writing array") from inner
    except Exception as err:  # noqa: BLE001
        refused = checkpoint.write_refusal(err, "/w/checkpoints/4")
    assert isinstance(refused, files.WriteError) and "\n" not in str(refused)
    assert str(refused).startswith("/w/checkpoints/4: cannot write a checkpoint: " + cause)
    if "space" in cause:
        assert "free some space and rerun the same command: it resumes" in str(refused)


@pytest.mark.parametrize("raised", [
    ValueError("Requested shape: (3, 2, 32) is not compatible with the stored shape: (3, 2, 16)"),
    ValueError("RESOURCE_EXHAUSTED: HTTP response code: 429 (rate limit)"),  # transient: keeps its traceback
    RuntimeError("a bug"),
])
def test_other_errors_are_not_refusals(raised):
    assert checkpoint.write_refusal(raised, "/w") is None


class _State:
    def __init__(self, step):
        self.params = {"w": jnp.full((64,), float(step))}

    def train_item(self):
        return {"step": jnp.array(0), "opt_state": {"mu": self.params["w"] * 0}, "rng": jnp.zeros(2, jnp.uint32)}


def test_async_save_refused_in_the_writer_threads_is_one_line_and_keeps_the_older(tmp_path, monkeypatch, capfd):
    """The stand-in full disk: orbax's writer thread meets ENOSPC while step 4 finalizes; the hook raises one
    WriteError naming the step (at the next save or at close), orbax's per-thread error logs are silenced, its
    threads end, and step 2 (keep=1) stays."""
    from orbax.checkpoint._src.serialization import ocdbt_utils

    real = ocdbt_utils.merge_ocdbt_per_process_files

    async def full_after_2(directory, *args, **kwargs):
        if "/checkpoints/2" not in str(directory):
            raise ValueError(ENOSPC_FROM_TENSORSTORE.format(path=directory))
        return await real(directory, *args, **kwargs)

    monkeypatch.setattr(ocdbt_utils, "merge_ocdbt_per_process_files", full_after_2)
    cfg = configs.get_config().checkpoint
    cfg.update(keep=1, async_save=True)
    workdir = str(tmp_path / "run")
    hook = loop_lib.CheckpointHook(2, checkpoint.manager(workdir, cfg), lambda step: {"step": step}, workdir)
    loop = loop_lib.Loop(trainer=None, state=_State(2), step=2, total_steps=6, writer=None, hooks=[])
    before = set(threading.enumerate())
    hook(loop)
    loop.step, loop.state = 4, _State(4)
    hook(loop)  # returns: the writer thread fails later
    loop.step = 6
    with pytest.raises(files.WriteError) as err:
        hook(loop)  # waits for step 4's save first
    loop_lib.close_all([hook], loop)  # the error was told once; closing ends orbax's threads
    assert str(err.value) == (f"{workdir}/checkpoints/4: cannot write a checkpoint: no space left on the device "
                              "(free some space and rerun the same command: it resumes)")
    assert checkpoint.latest_step(workdir) == 2 and not os.path.exists(f"{workdir}/checkpoints/4")
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon]
    assert capfd.readouterr().err == ""  # no tracebacks from orbax's threads


def test_close_after_a_refused_save_raises_once_and_closes(tmp_path, monkeypatch):
    """The last save of a run (at its end) refused in the writer thread: close raises its one line."""
    from orbax.checkpoint._src.serialization import ocdbt_utils

    async def full(directory, *args, **kwargs):
        raise ValueError(ENOSPC_FROM_TENSORSTORE.format(path=directory))

    monkeypatch.setattr(ocdbt_utils, "merge_ocdbt_per_process_files", full)
    cfg = configs.get_config().checkpoint
    workdir = str(tmp_path / "run")
    hook = loop_lib.CheckpointHook(2, checkpoint.manager(workdir, cfg), lambda step: {"step": step}, workdir)
    loop = loop_lib.Loop(trainer=None, state=_State(2), step=2, total_steps=2, writer=None, hooks=[])
    hook(loop)
    with pytest.raises(files.WriteError, match="checkpoints/2: cannot write a checkpoint: no space left"):
        loop_lib.close_all([hook], loop)
    assert checkpoint.latest_step(workdir) is None


def test_refused_metrics_and_config_writes_are_one_line(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    writer = metrics.MetricWriter(workdir)
    writer.write(1, {"train_loss": 2.0})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.AppendFile, "write", no_space)
    with pytest.raises(files.WriteError, match=r"run/metrics.jsonl: cannot write metrics.jsonl: no space left"):
        writer.write(2, {"train_loss": 1.0})
    monkeypatch.undo()
    from tensorboardX.event_file_writer import EventsWriter

    monkeypatch.setattr(EventsWriter, "write_event", no_space)
    with pytest.raises(files.WriteError, match=r"run/tensorboard: cannot write TensorBoard events: no space left"):
        writer.write(3, {"train_loss": 1.0})
    monkeypatch.undo()
    writer.close()
    assert not [t for t in threading.enumerate() if "EventLogger" in type(t).__name__ and t.is_alive()]
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [1, 3]

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files, "write_text", read_only)
    with pytest.raises(files.WriteError, match=r"run/config.json: cannot write config.json: the filesystem is "
                                               "read-only"):
        checkpoint.write_config(workdir, configs.get_config())


def test_tensorboard_events_are_written_synchronously_and_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = metrics.MetricWriter(str(tmp_path))
    for step in (1, 2):
        writer.write(step, {"train_loss": 3.0 - step})
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(1, 2.0), (2, 1.0)]


# ------------------------------------------------------------------------------------------ corrupt checkpoints


def _params_checkpoints(workdir, steps=(2, 4)):
    for step in steps:
        checkpoint.save_params(workdir, {"w": jnp.full((4, 8), float(step)), "b": jnp.arange(8.0) + step}, step)


def _abstract(shape=(4, 8)):
    return {"w": jax.ShapeDtypeStruct(shape, jnp.float32), "b": jax.ShapeDtypeStruct((8,), jnp.float32)}


def _truncate(step_dir):
    cut = 0
    for p in glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True):
        os.truncate(p, os.path.getsize(p) // 2)
        cut += 1
    assert cut


@pytest.mark.parametrize("damage", ["truncated data", "metadata", "missing files"])
def test_a_corrupt_newest_checkpoint_is_named_and_readers_fall_back(tmp_path, capsys, damage):
    workdir = str(tmp_path / "run")
    _params_checkpoints(workdir)
    step_dir = os.path.join(workdir, "checkpoints", "4")
    if damage == "truncated data":
        _truncate(step_dir)
    elif damage == "metadata":
        meta = os.path.join(step_dir, "params", "_METADATA")
        os.truncate(meta, os.path.getsize(meta) // 2)
    else:
        shutil.rmtree(os.path.join(step_dir, "params", "ocdbt.process_0"))
        shutil.rmtree(os.path.join(step_dir, "params", "d"), ignore_errors=True)
    capsys.readouterr()
    params = checkpoint.load_params(workdir, _abstract())
    assert float(params["w"][0, 0]) == 2.0  # step 2's
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gptjax: checkpoint 4 under {workdir}/checkpoints is corrupt (")
    assert "using step 2, the newest that reads" in err
    assert os.path.isdir(step_dir)  # a reader leaves the workdir as it is

    with pytest.raises(checkpoint.CorruptCheckpoint) as refused:
        checkpoint.load_params(workdir, _abstract(), on_corrupt="refuse")
    assert refused.value.step == 4 and "\n" not in str(refused.value)
    assert str(refused.value).startswith(f"checkpoint 4 under {workdir}/checkpoints is corrupt (")
    assert "refused by --on_corrupt=refuse (--on_corrupt=fallback uses the newest step that reads" in str(refused.value)
    with checkpoint.corrupt_policy("refuse", "checkpoint.on_corrupt"):  # what a run's init_from reads with
        with pytest.raises(checkpoint.CorruptCheckpoint, match="refused by checkpoint.on_corrupt=refuse"):
            checkpoint.load_params(workdir, _abstract())


def test_a_checkpoint_of_another_model_is_a_mismatch_not_corrupt(tmp_path):
    workdir = str(tmp_path / "run")
    _params_checkpoints(workdir)
    with pytest.raises(checkpoint.CheckpointError, match="does not match the config") as err:
        checkpoint.load_params(workdir, _abstract((4, 16)))
    assert not isinstance(err.value, checkpoint.CorruptCheckpoint)
    mngr = checkpoint.manager(workdir, read_only=True)
    with pytest.raises(checkpoint.CheckpointError, match=r"does not match the config \(it holds only params") as err:
        checkpoint.restore(mngr, 4, _abstract(), {"step": jax.ShapeDtypeStruct((), jnp.int32)})
    assert not isinstance(err.value, checkpoint.CorruptCheckpoint)
    mngr.close()


def test_a_run_sets_a_corrupt_checkpoint_aside_and_orbax_never_lists_it_again(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    _params_checkpoints(workdir, (2, 4, 6))
    _truncate(os.path.join(workdir, "checkpoints", "6"))
    _truncate(os.path.join(workdir, "checkpoints", "4"))
    mngr = checkpoint.manager(workdir, configs.get_config().checkpoint)
    capsys.readouterr()
    step, (params, _, _) = checkpoint.restore_latest(mngr, _abstract(), set_corrupt_aside=True)
    assert step == 2 and float(params["b"][0]) == 2.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoints 6, 4 under" in err and "are corrupt" in err
    assert "renamed aside as 6.corrupt, 4.corrupt; using step 2" in err
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4.corrupt", "6.corrupt"]
    assert mngr.all_steps() == [2] and checkpoint.latest_step(workdir) == 2
    mngr.close()

    _truncate(os.path.join(workdir, "checkpoints", "2"))  # nothing reads: refused, never a silent fresh start
    mngr = checkpoint.manager(workdir, configs.get_config().checkpoint)
    with pytest.raises(checkpoint.CorruptCheckpoint, match="checkpoint 2 under .* is corrupt .*; no step reads"):
        checkpoint.restore_latest(mngr, _abstract(), set_corrupt_aside=True)
    mngr.close()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2.corrupt", "4.corrupt", "6.corrupt"]


def test_the_readers_take_on_corrupt_as_a_flag(capsys):
    for command in ("sample", "eval", "inspect"):
        status, out, _ = gptjax_in_process(capsys, command, "--help")
        assert status == 0 and "--on_corrupt" in out, command
    status, _, err = gptjax_in_process(capsys, "sample", "--workdir=x", "--prompt=a", "--on_corrupt=maybe")
    assert status == 2 and "on_corrupt" in err


def test_checkpoint_on_corrupt_is_validated():
    c = configs.get_config()
    c.checkpoint.on_corrupt = "ignore"
    with pytest.raises(errors.ConfigError, match="checkpoint.on_corrupt: 'ignore' is not one of fallback, refuse"):
        configs.finalize(c)


# --------------------------------------------------------------------------------------------------- workdirs


def test_a_workdir_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    one_line_error(capsys, f"--workdir={path}: cannot write the workdir: a file is in the way of a directory",
                   "train", f"--workdir={path}")
    one_line_error(capsys, f"--workdir={path}/run: cannot write the workdir: a file is in the way",
                   "train", f"--workdir={path}/run")
    # import-hf checks its workdir before it reads the Hugging Face directory (which here does not exist)
    one_line_error(capsys, f"--workdir={path}: cannot write the workdir: a file is in the way",
                   "import-hf", f"--workdir={path}", f"--hf_dir={tmp_path}/no_such_dir")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MB tmpfs (root, where the machine allows mounting), unmounted at the end; skips elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], capture_output=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_read_only_or_full_workdir_is_one_line_before_any_work(small_filesystem, capsys):
    with open(small_filesystem / "filler", "wb") as f:  # fill it up
        try:
            f.write(b"x" * (2 << 20))
        except OSError:
            pass
    one_line_error(capsys, f"--workdir={small_filesystem}/run: cannot write the workdir: no space left on the "
                   "device (free some space", "train", f"--workdir={small_filesystem}/run")
    one_line_error(capsys, "cannot write the workdir: no space left", "import-hf",
                   f"--workdir={small_filesystem}/hf", "--hf_dir=/no/such/dir")
    os.remove(small_filesystem / "filler")
    (small_filesystem / "existing").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    for workdir in (small_filesystem / "existing", small_filesystem / "new"):
        one_line_error(capsys, f"--workdir={workdir}: cannot write the workdir: the filesystem is read-only",
                       "train", f"--workdir={workdir}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_an_unwritable_workdir_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(capsys, f"--workdir={locked}: cannot write the workdir: permission denied",
                       "train", f"--workdir={locked}")
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------------------------- lock


def test_a_second_run_on_a_locked_workdir_is_one_line_naming_the_holder(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    fd = os.open(workdir / workdirs.LOCK_FILE, os.O_RDWR | os.O_CREAT)  # what a live run holds
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": 4242, "host": "node-7", "since": "2026-12-07 06:00:00"}).encode())
    try:
        one_line_error(capsys, f"--workdir={workdir} is in use by another gptjax run (pid 4242 on node-7, since "
                       "2026-12-07 06:00:00); wait for it to end or stop it", "train", f"--workdir={workdir}")
    finally:
        os.close(fd)  # the holder ends: the kernel releases its lock
    workdirs.lock(str(workdir))
    workdirs.lock(str(workdir))  # the same process again (a second run in one notebook): reentrant
    info = json.loads((workdir / workdirs.LOCK_FILE).read_text())
    assert info["pid"] == os.getpid()
    probe = os.open(workdir / workdirs.LOCK_FILE, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    workdirs.unlock(str(workdir))
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    os.close(probe)


def test_only_process_0_locks_and_a_bucket_is_not_locked(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    workdirs.lock(str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    workdirs.lock("gs://bucket/run")  # no lock on an object store (documented), and nothing written
    assert not workdirs._LOCKS or all(not k.startswith("gs:") for k in workdirs._LOCKS)


def test_every_process_joins_the_lock_broadcast_whatever_it_sees_on_disk(tmp_path, monkeypatch):
    """Process 0 may create the workdir (its token cache) while another process is still starting: had each process
    asked the filesystem whether to take part in the lock's broadcast, they could wait in different collectives for
    ever (a 2-process run hung so in CI). Only process 0 looks; every process broadcasts, there or not."""
    from jax.experimental import multihost_utils

    calls = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: calls.append(bool(x)) or x)
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        for there in (False, True):
            workdir = tmp_path / f"p{index}-{there}"
            if there:
                workdir.mkdir()
            workdirs.lock(str(workdir), only_if_exists=True)
            assert workdir.exists() == there  # not created before the run's checks
            assert (workdir / workdirs.LOCK_FILE).exists() == (there and index == 0)
            workdirs.unlock(str(workdir))
    assert calls == [True] * 4


# ---------------------------------------------------------------------------------------------- end to end


def _mount_small(path, size_bytes):
    path.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                         capture_output=True)
    return out.returncode == 0


def _du(path):
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            total += -(-os.path.getsize(os.path.join(root, name)) // 4096) * 4096
    return total


@pytest.mark.slow
def test_full_disk_is_one_line_and_a_copy_on_a_roomy_disk_resumes_exactly(corpus_file, tmp_path):
    """A run whose second checkpoint meets a full disk stops with one line naming the workdir and the cause, no
    traceback (orbax's writer threads, shutdown), exit 2, its first checkpoint kept; copied to a roomy disk, the
    same command resumes from that checkpoint and ends with the losses of a run that never failed."""
    reference = str(tmp_path / "reference")
    expected = runs.train(tiny_config(corpus_file, 6), reference)
    want = metrics_by_step(reference)
    # Room for everything but a second checkpoint: the run's files, one checkpoint and half of another.
    ckpt = _du(os.path.join(reference, "checkpoints", "2"))
    base = _du(reference) - _du(os.path.join(reference, "checkpoints"))
    mnt = tmp_path / "small"
    real_disk = _mount_small(mnt, base + int(1.5 * ckpt) + (256 << 10))
    workdir = str(mnt / "run") if real_disk else str(tmp_path / "standin" / "run")
    args = ["train", f"--workdir={workdir}", *tiny_args(corpus_file, 6)]
    try:
        if real_disk:
            p = gptjax_subprocess(*args)
        else:  # no mount here: the writer raises what a full disk makes it raise, in the child
            code = STANDIN_CHILD.format(full_after=2, message=ENOSPC_FROM_TENSORSTORE)
            p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=ROOT)
        out, err = communicate(p, 600)
        assert_one_error_line(p.returncode, err, workdir, "no space left on the device",
                              "free some space and rerun the same command: it resumes")
        failed = int(re.search(r"/checkpoints/(\d+): cannot write", err).group(1))  # where the disk filled up
        assert failed > 2 and checkpoint.latest_step(workdir) == failed - 2  # nothing older deleted
        roomy = str(tmp_path / "roomy")
        shutil.copytree(workdir, roomy)
    finally:
        if real_disk:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    final = runs.train(tiny_config(corpus_file, 6), roomy)
    got = metrics_by_step(roomy)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-6), step
    assert final["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert sorted(os.listdir(os.path.join(roomy, "checkpoints"))) == ["2", "4", "6"]  # the half-written one removed


@pytest.mark.slow
def test_a_truncated_latest_checkpoint_falls_back_for_training_sampling_and_init_from(corpus_file, tmp_path,
                                                                                      capsys):
    workdir = str(tmp_path / "run")
    runs.train(tiny_config(corpus_file, 4), workdir)
    resumed_from_2 = str(tmp_path / "from2")  # the reference: the same run resumed from step 2
    shutil.copytree(workdir, resumed_from_2)
    shutil.rmtree(os.path.join(resumed_from_2, "checkpoints", "4"))
    _truncate(os.path.join(workdir, "checkpoints", "4"))
    corrupt = f"checkpoint 4 under {workdir}/checkpoints is corrupt"
    capsys.readouterr()

    # sample: the newest step that reads, with one line; or refused on request
    status, out, err = gptjax_in_process(capsys, "sample", f"--workdir={workdir}", "--prompt=RO", "--max_new_tokens=4",
                                         "--temperature=0", "--on_corrupt=refuse")
    assert_one_error_line(status, err, corrupt, "refused by --on_corrupt=refuse")
    status, out, err = gptjax_in_process(capsys, "sample", f"--workdir={workdir}", "--prompt=RO",
                                         "--max_new_tokens=4", "--temperature=0")
    assert status == 0 and out.startswith("RO"), err
    notes = [ln for ln in err.splitlines() if "corrupt" in ln]
    assert len(notes) == 1 and notes[0].startswith(f"gptjax: {corrupt} (")
    assert notes[0].endswith("using step 2, the newest that reads")  # nothing renamed by a reader

    # init_from: the same, refused with checkpoint.on_corrupt=refuse
    common = tiny_args(corpus_file, 1, f"--config.train.init_from={workdir}")
    status, _, err = gptjax_in_process(capsys, "train", f"--workdir={tmp_path}/tuned_refused", *common,
                                       "--config.checkpoint.on_corrupt=refuse")
    assert_one_error_line(status, err, corrupt, "refused by checkpoint.on_corrupt=refuse")
    status, out, err = gptjax_in_process(capsys, "train", f"--workdir={tmp_path}/tuned", *common)
    assert status == 0, err
    assert f"{corrupt} (" in err and "using step 2" in err and f"initialised params from {workdir}" in out
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))  # readers rename nothing

    # training: refused on request, one line naming the step, nothing renamed
    status, _, err = gptjax_in_process(capsys, "train", f"--workdir={workdir}", *tiny_args(corpus_file, 6),
                                       "--config.checkpoint.on_corrupt=refuse")
    assert_one_error_line(status, err, corrupt, "refused by checkpoint.on_corrupt=refuse")
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
    # ... by default: renamed aside, resumed from step 2, the losses of the run resumed from step 2
    runs.train(tiny_config(corpus_file, 6), resumed_from_2)
    capsys.readouterr()
    runs.train(tiny_config(corpus_file, 6), workdir)
    captured = capsys.readouterr()
    notes = [ln for ln in captured.err.splitlines() if "corrupt" in ln]
    assert len(notes) == 1 and notes[0].startswith(f"gptjax: {corrupt} (")
    assert notes[0].endswith("renamed aside as 4.corrupt; using step 2, the newest that reads")
    assert f"resumed from {workdir}/checkpoints/2" in captured.out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "4.corrupt", "6"]
    got, want = metrics_by_step(workdir), metrics_by_step(resumed_from_2)
    assert [got[s] for s in range(3, 7)] == [want[s] for s in range(3, 7)]


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stderr.read()[-3000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_train_on_a_live_workdir_refuses_and_a_killed_run_leaves_no_stale_lock(corpus_file, tmp_path,
                                                                                         capsys):
    workdir = str(tmp_path / "run")
    args = tiny_args(corpus_file, 100000, "--config.checkpoint.async_save=False")
    first = gptjax_subprocess("train", f"--workdir={workdir}", *args)
    try:
        _wait_for(lambda: checkpoint.latest_step(workdir) is not None, first)
        second = gptjax_subprocess("train", f"--workdir={workdir}", *args)
        out, err = communicate(second, 300)
        assert_one_error_line(second.returncode, err, f"--workdir={workdir} is in use by another gptjax run",
                              f"pid {first.pid} on ")
        assert first.poll() is None  # the first goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    saved = checkpoint.latest_step(workdir)
    status, out, err = gptjax_in_process(capsys, "train", f"--workdir={workdir}",
                                         *tiny_args(corpus_file, saved + 2))
    assert status == 0, err[-3000:]
    assert f"resumed from {workdir}/checkpoints/{saved}" in out
    assert checkpoint.latest_step(workdir) == saved + 2


def test_orbax_writes_that_outlive_a_failed_save_log_nothing_else_does():
    """asyncio's "Task exception was never retrieved" for an orbax write that met the closed loop or the
    interpreter's shutdown after the one-line error is dropped (it made the full-disk test flaky: a write still
    queued at exit); any other task's exception is still logged."""
    import logging as stdlib_logging

    from gptjax import checkpoint

    quiet = checkpoint._QuietAsyncioRefusals()

    def record(err):
        return stdlib_logging.LogRecord("asyncio", stdlib_logging.ERROR, __file__, 1, "Task exception was never "
                                        "retrieved", None, (type(err), err, None))

    assert not quiet.filter(record(RuntimeError("cannot schedule new futures after interpreter shutdown")))
    assert not quiet.filter(record(RuntimeError("Event loop is closed")))
    assert quiet.filter(record(RuntimeError("something else went wrong")))
    assert quiet.filter(record(ValueError("cannot schedule new futures after interpreter shutdown")))
