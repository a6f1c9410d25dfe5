"""The training core that every trainer shares: sharded state, the jitted step with gradient accumulation,
evaluation, resume, and the loop whose periodic work (log, eval, checkpoint, sample) is a list of hooks.

What is trained comes in from outside: a Linen `model` and a `Task` (how to initialise the model from an example
batch, the loss, the eval metrics). Pretraining is one task (`tasks.LanguageModeling`); fine-tuning, reward models
and PPO bring their own model and task and reuse all of this (levanter `trainer.py`, nanodo `model_factory`).
Batches are dicts of arrays whose first axis is the batch.
"""

import contextlib
import dataclasses
import math
import signal
import time
from typing import Any, Callable, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import checkpoint, optimizer, sharding
from gptjax.errors import ConfigError, TrainingError


class Task(Protocol):
    """What a trainer trains. `batch` is a dict of arrays (tokens, targets, per-token loss weights, segment ids...)."""

    def example_batch(self) -> dict:
        """One batch row (leading axis 1) with the shapes and dtypes of real batches: used to initialise."""

    def init(self, model: nn.Module, rng, batch: dict):
        """The model's (boxed) params for `batch`."""

    def loss(self, model: nn.Module, params, batch: dict, rng) -> tuple[jax.Array, dict]:
        """(scalar loss to minimise, dict of scalar metrics to log) for a training batch (dropout on)."""

    def evaluate(self, model: nn.Module, params, batch: dict) -> dict:
        """name -> (sum, count) over the batch; the trainer reports sum / count over all eval batches."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key: the dropout key of step s is fold_in(rng, s)

    def train_item(self):
        """What the `train` checkpoint item holds (params are saved as their own item)."""
        return {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}


@dataclasses.dataclass
class Trainer:
    """The model, task, optimizer and jitted functions of one run, with the shardings they use."""

    config: Any
    mesh: jax.sharding.Mesh
    model: nn.Module
    task: Task
    tx: optax.GradientTransformation | None = None  # default: optimizer.make_optimizer(config.optim, steps)

    def __post_init__(self):
        c = self.config
        self.tx = self.tx or optimizer.make_optimizer(c.optim, c.train.steps)
        self.schedule = optimizer.schedule(c.optim, c.train.steps)
        self.rules = sharding.hashable_rules(c.mesh.logical_axis_rules)
        example = self.task.example_batch()

        def init(rng):
            init_rng, train_rng = jax.random.split(rng)
            params = self.task.init(self.model, init_rng, example)
            return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), train_rng)

        self.abstract_state, self.state_shardings = sharding.abstract_state(
            lambda: init(jax.random.PRNGKey(0)), self.mesh, self.rules)
        self._init = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=self.state_shardings)
        self._with_params = jax.jit(
            lambda rng, params: nn.unbox(init(rng)).replace(params=params),
            in_shardings=(None, self.state_shardings.params),
            out_shardings=self.state_shardings,
            donate_argnums=1,
        )
        batch = sharding.batch_sharding(self.mesh)  # a prefix: every leaf of the batch dict is split by rows
        self.train_step = jax.jit(
            self._train_step, in_shardings=(self.state_shardings, batch), out_shardings=(self.state_shardings, None),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(self._eval_step, in_shardings=(self.state_shardings.params, batch))

    @contextlib.contextmanager
    def context(self):
        """The mesh and logical-axis rules that tracing and running the model need."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def init_state(self, seed: int, params=None) -> TrainState:
        rng = jax.random.PRNGKey(seed)
        with self.context():
            return self._init(rng) if params is None else self._with_params(rng, params)

    def restore_or_init(self, mngr, seed: int, init_params: Callable | None = None) -> tuple[TrainState, int]:
        """Resume order: the latest complete checkpoint of `mngr`, else `init_params(abstract_params)` (fine-tuning
        from another run), else scratch. Returns (state, first step to run)."""
        step = mngr.latest_step()
        abstract = self.abstract_state
        self.restored_data = None  # the restored step's `data` item (the data position, controller states...)
        if step is not None:
            params, train, self.restored_data = checkpoint.restore(mngr, step, abstract.params, abstract.train_item())
            return TrainState(train["step"], params, train["opt_state"], train["rng"]), int(step)
        params = init_params(abstract.params) if init_params is not None else None
        return self.init_state(seed, params), 0

    def _train_step(self, state: TrainState, batch: dict):
        accum = self.config.train.grad_accum_steps
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(lambda p, b, r: self.task.loss(self.model, p, b, r), has_aux=True)
        if accum == 1:
            (loss, aux), grads = grad_fn(state.params, batch, rng)
        else:
            # Micro-batch i takes rows i, i+accum, ...: each device keeps its own rows in every micro-batch.
            def split(x):
                x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                spec = P(None, sharding.BATCH_AXES, *(None,) * (x.ndim - 2))
                return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

            def body(carry, xs):
                i, micro = xs
                out = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, out), None

            shapes = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[: x.shape[0] // accum], batch), rng)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            ((loss, aux), grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), jax.tree.map(split, batch)))
            loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {"train_loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "lr": self.schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    def _eval_step(self, params, batch: dict):
        return self.task.evaluate(self.model, params, batch)

    def evaluate(self, params, batches) -> dict:
        """sum / count of each of the task's eval metrics over `batches` (host-local batch dicts)."""
        totals = None
        with self.context():
            for local in batches:
                out = self.eval_step(params, sharding.host_local_to_global(local, self.mesh))
                totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = jax.device_get(totals or {})
        return {k: float(s) / max(float(n), 1.0) for k, (s, n) in totals.items()}


def check_batch_sizes(config, mesh) -> None:
    dp = sharding.data_parallel_size(mesh)
    micro = config.train.batch_size // config.train.grad_accum_steps
    if micro % dp:
        raise ConfigError(
            f"train.batch_size: micro-batches of {micro} sequences (batch {config.train.batch_size} / "
            f"{config.train.grad_accum_steps} accumulation steps) do not divide over {dp} data-parallel shards"
        )
    eval_batch = config.eval.batch_size or config.train.batch_size
    if eval_batch % dp:
        raise ConfigError(f"eval.batch_size: {eval_batch} does not divide over {dp} data-parallel shards")
    if mesh.shape["data"] * mesh.shape["fsdp"] % jax.process_count():
        raise ConfigError(f"mesh.shape: data x fsdp must be a multiple of the {jax.process_count()} processes")


def log(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def finite_or_raise(step: int, values: dict) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(float(v))]
    if bad:
        raise TrainingError(
            f"{', '.join(bad)} became {float(values[bad[0]])} by step {step}; the last saved checkpoint is kept. "
            "Lower optim.lr, raise optim.warmup_steps or set optim.clip_norm"
        )


# --- the loop and its hooks ----------------------------------------------------------------------------------


class Hook:
    """Periodic work of the loop: `__call__` runs after steps that are multiples of `every` (0: never) and, when
    `at_end`, after the last step. `after_dispatch` runs after every step, once the next step is dispatched (where
    metrics of earlier steps can be fetched without stalling the device). `flush` finishes pending work, and
    `check_finite` raises TrainingError if what the hook has seen went non-finite (before a checkpoint is saved)."""

    every: int = 0
    at_end: bool = True

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

    trainer: Trainer
    state: TrainState
    step: int  # steps completed
    total_steps: int
    writer: Any
    hooks: list
    outputs: dict | None = None
    last: dict = dataclasses.field(default_factory=dict)
    paused_seconds: float = 0.0  # time spent in hooks (evaluation, checkpoints), left out of throughput

    @contextlib.contextmanager
    def paused(self):
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


def run_loop(trainer: Trainer, state: TrainState, start: int, total_steps: int, batch_fn: Callable[[int], dict] | None,
             hooks: list, writer, step_fn: Callable[[TrainState, int], tuple[TrainState, dict]] | None = None) -> Loop:
    """Steps `start` .. `total_steps` - 1 with `batch_fn(step)` (host-local batches), running the hooks. A loop step
    that is more than one optimizer update (a PPO iteration: rollouts, then epochs of minibatches) passes
    `step_fn(state, step) -> (state, outputs)` instead of `batch_fn`."""
    loop = Loop(trainer, state, start, total_steps, writer, hooks)
    try:
        with trainer.context():
            for step in range(start, total_steps):
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
    finally:
        for h in hooks:
            h.close(loop)
    return loop


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
        values = {k: float(v) / n for k, v in jax.device_get(sums).items()}
        values["lr"] = float(loop.trainer.schedule(step - 1))
        finite_or_raise(step, values)
        # The interval's n steps have finished when their metrics arrive (device_get waited for them), so the time
        # since the last fetch, less the hooks' pauses, is theirs.
        elapsed = time.time() - self.t_mark - (loop.paused_seconds - self.paused_mark)
        values["tokens_per_sec"] = self.tokens_per_step * n / elapsed
        if self.peak_flops:
            values["mfu"] = self.flops_per_step * n / elapsed / self.peak_flops
        self.t_mark, self.paused_mark = time.time(), loop.paused_seconds
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
    orbax reports a preemption. `data_state(step)` is the data position saved beside the model."""

    def __init__(self, every: int, mngr, data_state: Callable[[int], dict], workdir: str):
        self.every, self.mngr, self.data_state, self.workdir = every, mngr, data_state, workdir
        self.preemption = _Preemption()

    def save(self, loop, force: bool = False):
        loop.flush()
        loop.check_finite()
        with loop.paused():
            checkpoint.save(self.mngr, loop.step, loop.state.params, loop.state.train_item(),
                            self.data_state(loop.step), force=force)

    def __call__(self, loop):
        self.save(loop)

    def after_dispatch(self, loop):
        if self.preemption.requested or self.mngr.reached_preemption(loop.step):
            self.save(loop, force=True)
            self.mngr.wait_until_finished()
            log(f"preempted: saved step {loop.step} to {self.workdir}/checkpoints; rerun the same command to resume")
            raise SystemExit(143)

    def close(self, loop):
        self.preemption.restore()
        self.mngr.wait_until_finished()
        self.mngr.close()
