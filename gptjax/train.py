"""Pretraining: `train_and_evaluate(config, workdir)` assembles one run from the shared core. Data flows
config -> data -> model -> step (trainer.py) -> checkpoints and metrics, and the periodic work is hooks: log,
validation loss and bits per byte, checkpoints with preemption saves, and samples at the end."""

import time

import jax

from gptjax import checkpoint, configs, data, files, kernels, metrics, sampling, sharding, tasks, trainer
from gptjax.errors import ConfigError
from gptjax.model import GPT, ModelConfig, count_params
from gptjax.trainer import Trainer, TrainState, check_batch_sizes, log  # noqa: F401  (part of this module's API)


def adopt_init_from(config, workdir: str) -> None:
    """Fine-tuning from `train.init_from`: the model shape and tokenizer come from that workdir, whose params
    only fit them. Copies its tokenizer into `workdir`."""
    source = config.train.init_from
    files.check_url(source, "train.init_from")
    if str(files.path(source)) == str(files.path(workdir)):
        raise ConfigError(f"train.init_from: {source} is this run's own workdir; fine-tune into a new --workdir")
    saved = checkpoint.read_config(source)
    with config.unlocked():
        for key, value in saved["model"].items():
            if key not in checkpoint.TUNABLE_MODEL_KEYS and key in config.model:
                config.model[key] = value
        config.data.tokenizer = saved["data"]["tokenizer"]
        config.data.tokenizer_path = saved["data"]["tokenizer_path"]
        config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    configs.validate(config)
    src, dst = files.path(source) / "tokenizer", files.path(workdir) / "tokenizer"
    if src.is_dir() and not dst.exists() and jax.process_index() == 0:
        files.copytree(src, dst)


def lm_trainer(config, mesh) -> Trainer:
    """The pretraining Trainer: the GPT of `config.model` and next-token cross-entropy on token windows."""
    model_cfg = ModelConfig.from_config(config.model)
    return Trainer(config, mesh, GPT(model_cfg), tasks.LanguageModeling(config.data.seq_len, model_cfg.loss_impl))


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) the run that `config` describes in `workdir`; returns the final metrics."""
    if "finetune" in config:  # a fine-tuning experiment (experiments/finetune/): heads, SFT, LoRA
        from gptjax.finetune import run as finetune_run

        return finetune_run.train_and_evaluate(config, workdir)
    if "rl" in config:  # a stage of learning from preferences (experiments/rlhf/): reward model, PPO, DPO, GRPO
        from gptjax.rl import run as rl_run

        return rl_run.train_and_evaluate(config, workdir)
    t_start = time.time()
    files.check_url(workdir)  # before any work: an unusable URL is one line, never a local folder named "gs:"
    if config.train.init_from:
        adopt_init_from(config, workdir)
    kernels.check_platform(config.model.attention_impl)
    if config.eval.tasks:  # an unknown task name stops here, before any work
        from gptjax.evals import tasks as eval_tasks

        for name in config.eval.tasks:
            eval_tasks.get(name)
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

    run = lm_trainer(config, mesh)
    model_cfg, task = run.model.cfg, run.task
    mngr = checkpoint.manager(workdir, config.checkpoint)
    init_from = config.train.init_from
    state, start = run.restore_or_init(
        mngr, config.seed, (lambda abstract: checkpoint.load_params(init_from, abstract)) if init_from else None)
    if start:
        log(f"resumed from {workdir}/checkpoints/{start}")
    elif init_from:
        log(f"initialised params from {init_from}")

    tokens_per_step = config.train.batch_size * config.data.seq_len
    flops_per_step = metrics.flops_per_token(state.params, model_cfg, config.data.seq_len) * tokens_per_step
    peak = metrics.peak_flops_per_device(config.model.dtype)
    log(
        f"gptjax: {count_params(state.params) / 1e6:.2f}M params, vocab {vocab}, mesh {dict(mesh.shape)}, "
        f"{tokens_per_step} tokens/step, steps {start}..{config.train.steps}, workdir {workdir}"
    )

    def validate(loop):
        val = run.evaluate(loop.state.params, (task.from_windows(w) for w in pipeline.eval_batches(config.eval.steps)))
        return {"val_loss": val["val_loss"],
                "val_bpb": val["val_loss"] / metrics.LN2 / pipeline.val_bytes_per_token}

    hooks = [
        trainer.LogHook(config.train.log_every_steps, tokens_per_step, flops_per_step, peak),
        trainer.EvalHook(config.eval.every_steps, validate),
        trainer.CheckpointHook(config.checkpoint.every_steps, mngr, pipeline.state, workdir),
    ]
    if config.eval.tasks:
        from gptjax.evals import hook

        def icl(loop):
            return hook.evaluate_in_training(
                list(config.eval.tasks), list(config.eval.tasks_shots), config.eval.tasks_limit, model_cfg,
                loop.state.params, pipeline.tokenizer, mesh=mesh, rules=config.mesh.logical_axis_rules,
                seed=config.seed)

        hooks.insert(2, trainer.EvalHook(config.eval.tasks_every_steps or config.eval.every_steps, icl))
    writer = metrics.MetricWriter(workdir)
    try:
        loop = trainer.run_loop(run, state, start, config.train.steps,
                                lambda step: task.from_windows(pipeline.train_batch(step)), hooks, writer)
    finally:
        writer.close()

    if jax.process_index() == 0 and (files.path(workdir) / "metrics.jsonl").exists():
        metrics.plot_loss_curve(files.path(workdir) / "metrics.jsonl", files.path(workdir) / "loss_curve.png")
    write_samples(config, model_cfg, loop.state.params, pipeline.tokenizer, workdir, mesh)
    loop.last["wall_seconds"] = time.time() - t_start
    return loop.last


def write_samples(config, model_cfg, params, tokenizer, workdir: str, mesh=None) -> list[str]:
    """Samples `config.sample` continuations of the configured prompt, prints them and writes samples.txt."""
    s = config.sample
    completions = sampling.generate(
        model_cfg, params, [s.prompt], num_samples=s.num_samples, max_new_tokens=s.max_new_tokens,
        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=config.seed, tokenizer=tokenizer,
        eos_id=tokenizer.eos_id, mesh=mesh, rules=config.mesh.logical_axis_rules,
    )
    texts = [s.prompt + c.text for c in completions]
    if jax.process_index() == 0:
        files.write_text(files.path(workdir) / "samples.txt", "\n\n-----\n\n".join(texts) + "\n")
        for t in texts:
            log("-----\n" + t)
    return texts
