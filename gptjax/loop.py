"""The training loop and its hooks: `run_loop` runs steps and, at their cadences, the periodic work of a run (log,
evaluation, checkpoints with the preemption save, and whatever a kind of training adds). `Trainer.fit`
(gptjax/trainer.py) builds the default list; hooks see the run through `Loop`.
"""

import contextlib
import dataclasses
import math
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from gptjax import checkpoint, files, sharding
from gptjax.errors import TrainingError
from gptjax.metrics import log


def finite_or_raise(step: int, values: dict) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(float(v))]
    if bad:
        raise TrainingError(
            f"{', '.join(bad)} became {float(values[bad[0]])} by step {step}; the last saved checkpoint is kept. "
            "Lower optim.lr, raise optim.warmup_steps or set optim.clip_norm"
        )


class Hook:
    """Periodic work of the loop: `begin` runs before the first step (of this process: also after a resume);
    `__call__` runs after steps that are multiples of `every` (0: never) and, when `at_end`, after the last step.
    `after_dispatch` runs after every step, once the next step is dispatched (where metrics of earlier steps can be
    fetched without stalling the device). `flush` finishes pending work, and `check_finite` raises TrainingError if
    what the hook has seen went non-finite (before a checkpoint is saved)."""

    every: int = 0
    at_end: bool = True

    def begin(self, loop: "Loop") -> None:
        pass

    def __call__(self, loop: "Loop") -> None:
        pass

    def after_dispatch(self, loop: "Loop") -> None:
        pass

    def flush(self, loop: "Loop") -> None:
        pass

    def check_finite(self, loop: "Loop") -> None:
        pass

    def close(self, loop: "Loop") -> None:
        pass


@dataclasses.dataclass
class Loop:
    """What hooks see: the trainer, the current state and step, the last step's outputs (device arrays), the
    metric writer, and `last`, the latest value of every logged metric."""

    trainer: Any  # gptjax.trainer.Trainer
    state: Any  # gptjax.trainer.TrainState
    step: int  # steps completed
    total_steps: int
    writer: Any
    hooks: list
    outputs: dict | None = None
    last: dict = dataclasses.field(default_factory=dict)
    paused_seconds: float = 0.0  # time spent in hooks (evaluation, checkpoints), left out of throughput

    @contextlib.contextmanager
    def paused(self):
        jax.block_until_ready(self.outputs)  # the step in flight is training time, not the hook's
        t = time.time()
        try:
            yield
        finally:
            self.paused_seconds += time.time() - t

    def write(self, values: dict) -> None:
        self.last.update(values)
        self.writer.write(self.step, values)

    def flush(self) -> None:
        for h in self.hooks:
            h.flush(self)

    def check_finite(self) -> None:
        for h in self.hooks:
            h.check_finite(self)


def run_loop(trainer, state, start: int, total_steps: int, batch_fn: Callable[[int], dict] | None,
             hooks: list, writer, step_fn: Callable[[Any, int], tuple[Any, dict]] | None = None) -> Loop:
    """Steps `start` .. `total_steps` - 1 with `batch_fn(step)` (host-local batches), running the hooks. A loop step
    that is more than one optimizer update (a PPO iteration: rollouts, then epochs of minibatches) passes
    `step_fn(state, step) -> (state, outputs)` instead of `batch_fn`."""
    loop = Loop(trainer, state, start, total_steps, writer, hooks)
    try:
        with trainer.context():
            for h in hooks:
                h.begin(loop)
            for step in range(start, total_steps):
                with jax.profiler.StepTraceAnnotation("train", step_num=step):  # free unless a trace is on
                    if step_fn is not None:
                        loop.state, loop.outputs = step_fn(loop.state, step)
                    else:
                        batch = sharding.host_local_to_global(batch_fn(step), trainer.mesh)
                        loop.state, loop.outputs = trainer.train_step(loop.state, batch)
                loop.step = step + 1
                for h in hooks:
                    h.after_dispatch(loop)
                for h in hooks:
                    if (h.every and loop.step % h.every == 0) or (h.at_end and loop.step == total_steps):
                        h(loop)
            loop.flush()
    except BaseException:
        close_all(hooks, loop, raising=False)  # what stopped the loop is the error to report, not what follows
        raise
    close_all(hooks, loop)
    return loop


def close_all(hooks: list, loop: "Loop", raising: bool = True) -> None:
    """Closes every hook, even after one of them fails; then raises the first failure when `raising`."""
    first = None
    for h in hooks:
        try:
            h.close(loop)
        except Exception as err:  # noqa: BLE001  (raised below, after the other hooks are closed)
            first = first or err
    if first is not None and raising:
        raise first


class LogHook(Hook):
    """Train metrics: averaged over each `every`-step interval, fetched one step late so the device never waits,
    checked for NaN/Inf, written (metrics.jsonl, TensorBoard) and printed with throughput and MFU."""

    def __init__(self, every: int, tokens_per_step: int, flops_per_step: float, peak_flops_per_device: float | None):
        self.every, self.tokens_per_step = every, tokens_per_step
        self.flops_per_step = flops_per_step
        self.peak_flops = peak_flops_per_device and peak_flops_per_device * jax.device_count()
        self.running, self.pending = None, None
        self.t_mark, self.paused_mark = time.time(), 0.0

    def after_dispatch(self, loop):
        out = loop.outputs
        self.running = (out, 1) if self.running is None else (jax.tree.map(jnp.add, self.running[0], out),
                                                              self.running[1] + 1)
        self.flush(loop)  # the previous interval's metrics, now that this step is dispatched

    def __call__(self, loop):
        self.pending, self.running = (loop.step, *self.running), None

    def flush(self, loop):
        if self.pending is None:
            return
        step, sums, n = self.pending
        self.pending = None
        # The interval's n steps have finished when their metrics exist, so the time since the last interval's
        # did, less the hooks' pauses, is theirs. Taken before the copy to the host: on the CPU that copy waits
        # behind the step dispatched after them, and the run's last interval read as nearly free (107% MFU).
        jax.block_until_ready(sums)
        ready = time.time()
        elapsed = ready - self.t_mark - (loop.paused_seconds - self.paused_mark)
        values = {k: float(v) / n for k, v in jax.device_get(sums).items()}
        values["lr"] = float(loop.trainer.schedule(step - 1))
        finite_or_raise(step, values)
        values["tokens_per_sec"] = self.tokens_per_step * n / elapsed
        if self.peak_flops:
            values["mfu"] = self.flops_per_step * n / elapsed / self.peak_flops
        self.t_mark, self.paused_mark = ready, loop.paused_seconds
        loop.last.update(values)
        loop.writer.write(step, values)
        extra = "".join(f" | {k} {v:.4f}" for k, v in values.items()
                        if k not in ("train_loss", "grad_norm", "lr", "tokens_per_sec", "mfu"))
        log(f"step {step:>6}/{loop.total_steps} | loss {values['train_loss']:.4f} | grad_norm "
            f"{values['grad_norm']:.3f} | lr {values['lr']:.2e}{extra} | {values['tokens_per_sec']:,.0f} tok/s"
            + (f" | mfu {100 * values['mfu']:.1f}%" if "mfu" in values else ""))

    def check_finite(self, loop):
        if self.running is not None:  # never save a state whose recent losses went non-finite
            finite_or_raise(loop.step, jax.device_get({"train_loss": self.running[0]["train_loss"]}))


class EvalHook(Hook):
    """Every `every` steps and at the end: `evaluate(loop)` -> dict of scalars, written and printed."""

    def __init__(self, every: int, evaluate: Callable[[Loop], dict]):
        self.every, self.evaluate = every, evaluate

    def __call__(self, loop):
        loop.flush()
        with loop.paused():
            values = self.evaluate(loop)
        finite_or_raise(loop.step, values)
        loop.write(values)
        log(f"step {loop.step:>6}/{loop.total_steps} | " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))


class _Preemption:
    """Turns SIGTERM into a flag the loop reads, so the run saves a checkpoint before it exits."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class CheckpointHook(Hook):
    """Saves every `every` steps and at the end; after any step, saves and exits (status 143) on SIGTERM or when
    orbax reports a preemption. `data_state(step)` is the data position saved beside the model.

    A save the filesystem refuses (no space, read-only, no permission), whether orbax's writer threads meet it
    after the step went on or this thread does, stops the run with one WriteError line naming the checkpoint; the
    older checkpoints stay (orbax removes them only after a newer one is complete)."""

    def __init__(self, every: int, mngr, data_state: Callable[[int], dict], workdir: str):
        self.every, self.mngr, self.data_state, self.workdir = every, mngr, data_state, workdir
        self.preemption = _Preemption()
        self.pending = None  # the step of the save that may still be writing

    def _where(self, step):
        where = files.path(self.workdir) / "checkpoints"
        return where if step is None else where / str(step)

    def wait(self):
        """Waits for the pending save; its refused write is raised here, naming its step."""
        with checkpoint.saving(self._where(self.pending)):
            self.mngr.wait_until_finished()

    def save(self, loop, force: bool = False):
        loop.flush()
        loop.check_finite()
        with loop.paused():
            self.wait()
            self.pending = loop.step
            with checkpoint.saving(self._where(loop.step)):
                checkpoint.save(self.mngr, loop.step, loop.state.params, loop.state.train_item(),
                                self.data_state(loop.step), force=force)

    def __call__(self, loop):
        self.save(loop)

    def after_dispatch(self, loop):
        if self.preemption.requested or self.mngr.reached_preemption(loop.step):
            self.save(loop, force=True)
            self.wait()
            log(f"preempted: saved step {loop.step} to {self.workdir}/checkpoints; rerun the same command to resume")
            raise SystemExit(143)

    def close(self, loop):
        self.preemption.restore()
        checkpoint.finish(self.mngr, self._where(self.pending))


class ProfileHook(Hook):
    """A jax.profiler trace of steps `start`..`end`-1 into `<workdir>/plugins/profile/<time>/` (where TensorBoard's
    profile plugin and xprof look): started before step `start` is dispatched, stopped once step `end`-1 has
    finished on the device. Each traced step is annotated with its number (xprof's step view)."""

    def __init__(self, start: int, end: int, workdir: str):
        self.start, self.end, self.workdir = start, end, workdir
        self.tracing = False

    def _begin_trace(self, loop):
        if loop.step == self.start and not self.tracing:
            jax.profiler.start_trace(str(files.path(self.workdir)))
            self.tracing = True
            log(f"profiling steps {self.start}..{self.end - 1} into {self.workdir}/plugins/profile")

    def begin(self, loop):
        self._begin_trace(loop)

    def after_dispatch(self, loop):
        if self.tracing and loop.step >= self.end:
            self._stop(loop)
        self._begin_trace(loop)

    def _stop(self, loop):
        jax.block_until_ready(loop.outputs)
        jax.profiler.stop_trace()
        self.tracing = False

    def close(self, loop):
        if self.tracing:
            self._stop(loop)
