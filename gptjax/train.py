"""Pretraining: `train_and_evaluate(config, workdir)` builds the sharded state (or resumes it), runs the jitted
step, evaluates, logs and checkpoints. Data flows config -> data -> model -> step -> checkpoints and metrics."""

import contextlib
import dataclasses
import math
import os
import shutil
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import checkpoint, data, metrics, optimizer, sampling, sharding
from gptjax import configs
from gptjax.errors import ConfigError, TrainingError
from gptjax.model import GPT, ModelConfig, cross_entropy


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
    """The model, optimizer and jitted functions of one run, with the shardings they use."""

    config: Any
    mesh: jax.sharding.Mesh
    model_cfg: ModelConfig

    def __post_init__(self):
        c = self.config
        self.model = GPT(self.model_cfg)
        self.tx = optimizer.make_optimizer(c.optim, c.train.steps)
        self.schedule = optimizer.schedule(c.optim, c.train.steps)
        self.rules = tuple(tuple(r) for r in c.mesh.logical_axis_rules)
        seq_len = c.data.seq_len

        def init(rng):
            init_rng, train_rng = jax.random.split(rng)
            params = self.model.init({"params": init_rng}, jnp.zeros((1, seq_len), jnp.int32))["params"]
            return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), train_rng)

        with self.context():
            boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
            self.state_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sharding.unbox_abstract(boxed), self.state_shardings
        )
        self._init = jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=self.state_shardings)
        self._with_params = jax.jit(
            lambda rng, params: nn.unbox(init(rng)).replace(params=params),
            in_shardings=(None, self.state_shardings.params),
            out_shardings=self.state_shardings,
            donate_argnums=1,
        )
        batch = sharding.batch_sharding(self.mesh)
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

    def _loss(self, params, tokens_BxT1, rng):
        logits_BxTxV = self.model.apply(
            {"params": params}, tokens_BxT1[:, :-1], train=True, rngs={"dropout": rng}
        )
        return cross_entropy(logits_BxTxV, tokens_BxT1[:, 1:])[0]

    def _train_step(self, state: TrainState, tokens_BxT1):
        accum = self.config.train.grad_accum_steps
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(self._loss)
        if accum == 1:
            loss, grads = grad_fn(state.params, tokens_BxT1, rng)
        else:
            # Micro-batch i takes rows i, i+accum, ...: each device keeps its own rows in every micro-batch.
            B, T1 = tokens_BxT1.shape
            micro_AxMxT1 = tokens_BxT1.reshape(B // accum, accum, T1).swapaxes(0, 1)
            micro_AxMxT1 = jax.lax.with_sharding_constraint(
                micro_AxMxT1, NamedSharding(self.mesh, P(None, sharding.BATCH_AXES, None))
            )

            def body(carry, xs):
                i, tokens_MxT1 = xs
                loss, grads = grad_fn(state.params, tokens_MxT1, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro_AxMxT1))
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {"train_loss": loss, "grad_norm": optax.tree.norm(grads), "lr": self.schedule(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out

    def _eval_step(self, params, tokens_BxT1):
        logits_BxTxV = self.model.apply({"params": params}, tokens_BxT1[:, :-1])
        loss, count = cross_entropy(logits_BxTxV, tokens_BxT1[:, 1:])
        return loss * count, count

    def evaluate(self, state: TrainState, pipeline, num_batches: int) -> float:
        """Mean validation loss (nats/token) over `num_batches` fixed validation batches."""
        total, count = 0.0, 0.0
        with self.context():
            for local in pipeline.eval_batches(num_batches):
                s, n = self.eval_step(state.params, sharding.host_local_to_global(local, self.mesh))
                total, count = total + s, count + n
        return float(total) / max(float(count), 1.0)


def adopt_init_from(config, workdir: str) -> None:
    """Fine-tuning from `train.init_from`: the model shape and tokenizer come from that workdir, whose params
    only fit them. Copies its tokenizer into `workdir`."""
    source = config.train.init_from
    saved = checkpoint.read_config(source)
    with config.unlocked():
        for key, value in saved["model"].items():
            if key not in checkpoint.TUNABLE_MODEL_KEYS and key in config.model:
                config.model[key] = value
        config.data.tokenizer = saved["data"]["tokenizer"]
        config.data.tokenizer_path = saved["data"]["tokenizer_path"]
        config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    configs.validate(config)
    src, dst = os.path.join(source, "tokenizer"), os.path.join(workdir, "tokenizer")
    if os.path.isdir(src) and not os.path.exists(dst) and jax.process_index() == 0:
        shutil.copytree(src, dst)


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


class _Preemption:
    """Turns SIGTERM into a flag the loop reads, so the run saves a checkpoint before it exits."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def log(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def _finite_or_raise(step: int, values: dict) -> None:
    bad = [k for k, v in values.items() if not math.isfinite(float(v))]
    if bad:
        raise TrainingError(
            f"{', '.join(bad)} became {float(values[bad[0]])} by step {step}; the last saved checkpoint is kept. "
            "Lower optim.lr, raise optim.warmup_steps or set optim.clip_norm"
        )


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) the run that `config` describes in `workdir`; returns the final metrics."""
    t_start = time.time()
    if config.train.init_from:
        adopt_init_from(config, workdir)
    mesh = sharding.make_mesh(config.mesh.shape)
    check_batch_sizes(config, mesh)
    pipeline = data.make_pipeline(config, workdir)
    vocab = pipeline.tokenizer.vocab_size
    if config.model.vocab_size and config.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's {vocab}")
    with config.unlocked():
        config.model.vocab_size = config.model.vocab_size or vocab
    checkpoint.check_compatible(workdir, config)
    checkpoint.write_config(workdir, config)

    trainer = Trainer(config, mesh, ModelConfig.from_config(config.model))
    mngr = checkpoint.manager(workdir, config.checkpoint)
    start = mngr.latest_step()
    abstract = trainer.abstract_state
    if start is not None:
        params, train, _ = checkpoint.restore(mngr, start, abstract.params, abstract.train_item())
        state = TrainState(train["step"], params, train["opt_state"], train["rng"])
        log(f"resumed from {workdir}/checkpoints/{start}")
    elif config.train.init_from:
        params = checkpoint.load_params(config.train.init_from, abstract.params)
        state = trainer.init_state(config.seed, params)
        start = 0
        log(f"initialised params from {config.train.init_from}")
    else:
        state = trainer.init_state(config.seed)
        start = 0

    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    tokens_per_step = config.train.batch_size * config.data.seq_len
    flops_per_step = metrics.flops_per_token(state.params, trainer.model_cfg, config.data.seq_len) * tokens_per_step
    peak = metrics.peak_flops_per_device(config.model.dtype) * jax.device_count()
    log(
        f"gptjax: {n_params / 1e6:.2f}M params, vocab {vocab}, mesh {dict(mesh.shape)}, "
        f"{tokens_per_step} tokens/step, steps {start}..{config.train.steps}, workdir {workdir}"
    )

    writer = metrics.MetricWriter(workdir)
    preemption = _Preemption()
    total_steps, log_every = config.train.steps, config.train.log_every_steps
    running, pending, last = None, None, {}
    t_mark, steps_since = time.time(), 0

    def flush():
        """Fetches the pending interval's device metrics (dispatched a step ago), writes and prints them."""
        nonlocal pending, t_mark, steps_since
        if pending is None:
            return
        step, sums, n = pending
        pending = None
        values = {k: float(v) / n for k, v in jax.device_get(sums).items()}
        values["lr"] = float(trainer.schedule(step - 1))
        _finite_or_raise(step, values)
        elapsed = time.time() - t_mark
        values["tokens_per_sec"] = tokens_per_step * steps_since / elapsed
        values["mfu"] = flops_per_step * steps_since / elapsed / peak
        t_mark, steps_since = time.time(), 0
        last.update(values)
        writer.write(step, values)
        log(
            f"step {step:>6}/{total_steps} | loss {values['train_loss']:.4f} | grad_norm {values['grad_norm']:.3f} "
            f"| lr {values['lr']:.2e} | {values['tokens_per_sec']:,.0f} tok/s | mfu {100 * values['mfu']:.1f}%"
        )

    def save(step: int, force: bool = False):
        flush()
        if running is not None:  # never save a state whose recent losses went non-finite
            _finite_or_raise(step, jax.device_get({"train_loss": running[0]["train_loss"]}))
        checkpoint.save(mngr, step, state.params, state.train_item(), pipeline.state(step), force=force)

    try:
        with trainer.context():
            for step in range(start, total_steps):
                batch = sharding.host_local_to_global(pipeline.train_batch(step), mesh)
                state, out = trainer.train_step(state, batch)
                running = (out, 1) if running is None else (jax.tree.map(jnp.add, running[0], out), running[1] + 1)
                steps_since += 1
                flush()  # the previous interval's metrics, now that this step is dispatched
                done = step + 1
                if done % log_every == 0 or done == total_steps:
                    pending, running = (done, running[0], running[1]), None
                if done % config.eval.every_steps == 0 or done == total_steps:
                    flush()
                    t_eval = time.time()
                    val_loss = trainer.evaluate(state, pipeline, config.eval.steps)
                    values = {"val_loss": val_loss, "val_bpb": val_loss / math.log(2) / pipeline.val_bytes_per_token}
                    _finite_or_raise(done, values)
                    last.update(values)
                    writer.write(done, values)
                    log(f"step {done:>6}/{total_steps} | val_loss {val_loss:.4f} | val_bpb {values['val_bpb']:.4f}")
                    t_mark += time.time() - t_eval
                if done % config.checkpoint.every_steps == 0 or done == total_steps:
                    save(done)
                if preemption.requested or mngr.reached_preemption(done):
                    save(done, force=True)
                    mngr.wait_until_finished()
                    log(f"preempted: saved step {done} to {workdir}/checkpoints; rerun the same command to resume")
                    raise SystemExit(143)
            flush()
        mngr.wait_until_finished()
    finally:
        preemption.restore()
        writer.close()
        mngr.close()

    if jax.process_index() == 0 and os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        metrics.plot_loss_curve(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curve.png"))
    write_samples(config, trainer.model_cfg, state.params, pipeline.tokenizer, workdir, trainer.mesh)
    last["wall_seconds"] = time.time() - t_start
    return last


def write_samples(config, model_cfg, params, tokenizer, workdir: str, mesh=None) -> list[str]:
    """Samples `config.sample` continuations of the configured prompt, prints them and writes samples.txt."""
    s = config.sample
    max_new = min(s.max_new_tokens, model_cfg.max_len - len(tokenizer.encode(s.prompt)))
    completions = sampling.generate(
        model_cfg, params, [s.prompt], num_samples=s.num_samples, max_new_tokens=max_new, temperature=s.temperature,
        top_k=s.top_k, top_p=s.top_p, seed=config.seed, tokenizer=tokenizer, eos_id=tokenizer.eos_id, mesh=mesh,
        rules=config.mesh.logical_axis_rules,
    )
    texts = [s.prompt + c.text for c in completions]
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "samples.txt"), "w") as f:
            f.write("\n\n-----\n\n".join(texts) + "\n")
        for t in texts:
            log("-----\n" + t)
    return texts
