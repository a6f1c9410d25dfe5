"""The training core every kind of training shares (the kinds are gptjax/runs/*.py).

A kind of training brings only what is its own: its data, its model and objective (loss and eval metrics), how to
initialise from `train.init_from`, its validation and its extra hooks. The core does the rest:

    mesh = trainer.start(config, workdir)       # the workdir URL, the platform, the mesh, batch sizes against it
    ...                                         # the kind's data, model and objective
    loop = trainer.Trainer(config, mesh, model, objective).fit(workdir, batches=..., validate=..., init=...)

`Trainer` holds the sharded state (built from `eval_shape`, never whole on one host) and the jitted step with
gradient accumulation. `Trainer.fit` owns the run: config compatibility and config.json, the checkpoint manager,
the resume order (the workdir's latest checkpoint, else `init`, else scratch), the metric writer, the default hooks
(log, eval, checkpoint with the preemption save; gptjax/loop.py) with the kind's own between them, the loop and the
loss-curve plot. Batches are dicts of arrays whose first axis is the batch.
"""

import contextlib
import dataclasses
import math
from typing import Any, Callable, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import checkpoint, files, kernels, metrics, optimizer, sharding, workdirs
from gptjax import loop as loop_lib
from gptjax.errors import ConfigError
from gptjax.metrics import log


class Objective(Protocol):
    """What a trainer minimises and reports. `batch` is a dict of arrays (tokens, targets, per-token loss weights,
    segment ids...)."""

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
    """The model, objective, optimizer and jitted functions of one run, with the shardings they use."""

    config: Any
    mesh: jax.sharding.Mesh
    model: nn.Module
    objective: Objective
    tx: optax.GradientTransformation | None = None  # default: optimizer.make_optimizer(config.optim, steps)
    schedule: Callable[[int], Any] | None = None  # the learning rate logged at a step (default: the optimizer's)

    def __post_init__(self):
        c = self.config
        self.tx = self.tx or optimizer.make_optimizer(c.optim, c.train.steps)
        self.schedule = self.schedule or optimizer.schedule(c.optim, c.train.steps)
        self.rules = sharding.hashable_rules(c.mesh.logical_axis_rules)
        example = self.objective.example_batch()

        def init(rng):
            init_rng, train_rng = jax.random.split(rng)
            params = self.objective.init(self.model, init_rng, example)
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

    def restore_or_init(self, mngr, seed: int, init: Callable | None = None) -> tuple[TrainState, int, dict | None]:
        """Resume order: the newest complete checkpoint of `mngr` that reads, else `init(abstract_params, fresh)`
        (fine-tuning from another run; `fresh()` gives freshly initialised params), else scratch. Returns (state,
        first step to run, the restored step's `data` item or None).

        A newer checkpoint that cannot be read is renamed aside as `<step>.corrupt` with one line, and the run
        resumes from the newest that reads; `checkpoint.on_corrupt="refuse"` stops instead with one line naming it
        (and applies to reading `train.init_from` too)."""
        abstract = self.abstract_state
        on_corrupt = self.config.checkpoint.get("on_corrupt", "fallback")
        found = checkpoint.restore_latest(mngr, abstract.params, abstract.train_item(), on_corrupt=on_corrupt,
                                          set_corrupt_aside=True, setting="checkpoint.on_corrupt")
        if found is not None:
            step, (params, train, data) = found
            return TrainState(train["step"], params, train["opt_state"], train["rng"]), int(step), data
        with checkpoint.corrupt_policy(on_corrupt, "checkpoint.on_corrupt"):
            params = init(abstract.params, lambda: self.init_state(seed).params) if init is not None else None
        return self.init_state(seed, params), 0, None

    def _train_step(self, state: TrainState, batch: dict):
        accum = self.config.train.grad_accum_steps
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(lambda p, b, r: self.objective.loss(self.model, p, b, r), has_aux=True)
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
        return self.objective.evaluate(self.model, params, batch)

    def evaluate(self, params, batches) -> dict:
        """sum / count of each of the task's eval metrics over `batches` (host-local batch dicts)."""
        totals = None
        with self.context():
            for local in batches:
                out = self.eval_step(params, sharding.host_local_to_global(local, self.mesh))
                totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        totals = jax.device_get(totals or {})
        return {k: float(s) / max(float(n), 1.0) for k, (s, n) in totals.items()}


    def fit(self, workdir: str, *, batches: Callable[[int], dict] | None = None,
            step_fn: Callable[[TrainState, int], tuple[TrainState, dict]] | None = None,
            validate: Callable[[loop_lib.Loop], dict] | None = None, data_state: Callable[[int], dict] | None = None,
            init: Callable | None = None, restore: Callable[[dict], None] | None = None, hooks: tuple = (),
            tokens_per_step: int = 0, flops_per_step: float = 0.0, peak_flops: float | None = None,
            title: str = "gptjax", describe: str = "") -> loop_lib.Loop:
        """Trains (or resumes) the run in `workdir` to train.steps and returns the finished loop.

        `batches(step)`: this process's rows of the global batch of `step`; or `step_fn(state, step)` for a loop
        step that is more than one update (a PPO iteration). `validate(loop)`: dict of scalars at eval.every_steps.
        `data_state(step)`: what the checkpoint's `data` item records (default: the step); `restore(data)` gets it
        back on a resume. `init(abstract_params, fresh)`: the params of a run that starts from another
        (`pretrained`). `hooks`: the kind's own, run after evaluation and before the checkpoint. `title` and
        `describe` make the run's first line ("gptjax finetune: 3.75M params, <describe>, steps 0..300, ...")."""
        c = self.config
        workdirs.lock(workdir)  # taken by trainer.start already where the workdir existed
        checkpoint.check_compatible(workdir, c)
        checkpoint.write_config(workdir, c)
        with checkpoint.saving(files.path(workdir) / "checkpoints", "checkpoints"):
            mngr = checkpoint.manager(workdir, c.checkpoint)
        hook = loop_lib.CheckpointHook(c.checkpoint.every_steps, mngr,
                                       data_state or (lambda step: {"step": int(step)}), workdir)
        try:
            state, start, data = self.restore_or_init(mngr, c.seed, init)
            writer = metrics.MetricWriter(workdir)
        except BaseException:
            loop_lib.close_all([hook], None, raising=False)  # the manager's threads end here, not at exit
            raise
        if start:
            log(f"resumed from {workdir}/checkpoints/{start}")
        elif init is not None:
            log(f"initialised params from {c.train.init_from}")
        if data is not None and restore is not None:
            restore(data)
        params = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state.params))
        log(f"{title}: {params / 1e6:.2f}M params, {describe + ', ' if describe else ''}steps {start}.."
            f"{c.train.steps}, workdir {workdir}")
        all_hooks = [loop_lib.LogHook(c.train.log_every_steps, tokens_per_step, flops_per_step, peak_flops)]
        if validate is not None:
            all_hooks.append(loop_lib.EvalHook(c.eval.every_steps, validate))
        all_hooks += list(hooks)
        profile = tuple(c.train.get("profile_steps", (0, 0)))
        if profile[1] > start and (jax.process_index() == 0 or c.train.get("profile_all_processes", False)):
            all_hooks.append(loop_lib.ProfileHook(max(profile[0], start), profile[1], workdir))
        all_hooks.append(hook)
        try:
            loop = loop_lib.run_loop(self, state, start, c.train.steps, batches, all_hooks, writer, step_fn=step_fn)
        except BaseException:
            with contextlib.suppress(Exception):  # the loop's error is the one to report
                writer.close()
            raise
        writer.close()
        if jax.process_index() == 0 and (files.path(workdir) / "metrics.jsonl").exists():
            with files.writing(files.path(workdir) / "loss_curve.png", "the loss curve"):
                metrics.plot_loss_curve(files.path(workdir) / "metrics.jsonl", files.path(workdir) / "loss_curve.png")
        return loop


def start(config, workdir: str, check: Callable[[jax.sharding.Mesh], None] | None = None) -> jax.sharding.Mesh:
    """The start of every kind of training, before any work: the workdir URL (an unusable one is one line, never a
    local folder named "gs:"), the workdir itself (a file in the way, a directory that cannot be created or
    written: one line) and its lock (another live `gptjax train` on it: one line), the attention implementation
    against the platform, and the mesh, which the batch sizes must divide over (after the kind's own
    `check(mesh)`, which can say it in the kind's terms). Returns the mesh."""
    files.check_url(workdir)
    workdirs.check_writable(workdir)
    workdirs.lock(workdir, only_if_exists=True)  # a run there already (perhaps live); a new one is locked by `fit`
    kernels.check_platform(config.model.attention_impl)
    mesh = sharding.make_mesh(config.mesh.shape)
    if check is not None:
        check(mesh)
    check_batch_sizes(config, mesh)
    return mesh


def pretrained(init_from: str, at: tuple = (), new_rows: int = 0) -> Callable:
    """`init` for `Trainer.fit`: the params of the workdir `init_from` at the subtree `at` of fresh params (the
    backbone under a head: ("gpt",), ("model", "gpt")), the rest fresh; with `new_rows`, the backbone's token
    embedding grows by that many fresh rows (special tokens added for fine-tuning)."""

    def init(abstract, fresh):
        sub_abs = abstract
        for k in at:
            sub_abs = sub_abs[k]
        if not at and not new_rows:
            return checkpoint.load_params(init_from, abstract)
        fresh_params = fresh()
        sub_fresh = fresh_params
        for k in at:
            sub_fresh = sub_fresh[k]
        if new_rows:
            wte = sub_abs["wte"]
            base = {**sub_abs, "wte": jax.ShapeDtypeStruct((wte.shape[0] - new_rows, *wte.shape[1:]), wte.dtype,
                                                          sharding=wte.sharding)}
            loaded = checkpoint.load_params(init_from, base)
            grown = jax.jit(lambda new, old: new.at[:old.shape[0]].set(old), out_shardings=wte.sharding)(
                sub_fresh["wte"], loaded["wte"])
            loaded = {**loaded, "wte": grown}
        else:
            loaded = checkpoint.load_params(init_from, sub_abs)

        def put(tree, path):
            return loaded if not path else {**tree, path[0]: put(tree[path[0]], path[1:])}

        return put(fresh_params, at)

    return init


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
