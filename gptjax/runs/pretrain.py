"""Pretraining: next-token cross-entropy on the token windows of `config.data`, with validation loss and bits per
byte, optional in-context evaluation during training (`eval.tasks`), and samples at the end."""

import jax

from gptjax import checkpoint, data, files, metrics, sampling, trainer, workdirs
from gptjax.errors import ConfigError
from gptjax.loop import EvalHook
from gptjax.metrics import log
from gptjax.model import GPT, ModelConfig
from gptjax.objectives import LanguageModeling


def planned(config):
    """What `gptjax plan` compiles for this config: the GPT and its language-modelling objective."""
    model_cfg = ModelConfig.from_config(config.model)
    return GPT(model_cfg), LanguageModeling(config.data.seq_len, model_cfg.loss_impl)


def train(config, workdir: str) -> dict:
    mesh = trainer.start(config, workdir)
    if config.train.init_from:
        workdirs.adopt_init_from(config, workdir)
    if config.eval.tasks:  # an unknown task name stops here, before any work
        from gptjax.evals import tasks as eval_tasks

        for name in config.eval.tasks:
            eval_tasks.get(name)
    pipeline = data.make_pipeline(config, workdir)
    vocab = pipeline.tokenizer.vocab_size
    if config.model.vocab_size and config.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's {vocab}")
    with config.unlocked():
        config.model.vocab_size = config.model.vocab_size or vocab
    checkpoint.check_compatible(workdir, config)  # the config is whole: before the model is traced
    model, objective = planned(config)
    run = trainer.Trainer(config, mesh, model, objective)
    tokens_per_step = config.train.batch_size * config.data.seq_len
    flops = metrics.flops_per_token(run.abstract_state.params, model.cfg, config.data.seq_len) * tokens_per_step

    def validate(loop):
        val = run.evaluate(loop.state.params, (LanguageModeling.from_windows(w)
                                               for w in pipeline.eval_batches(config.eval.steps)))
        return {"val_loss": val["val_loss"], "val_bpb": val["val_loss"] / metrics.LN2 / pipeline.val_bytes_per_token}

    hooks = []
    if config.eval.tasks:
        from gptjax.evals import in_training

        def icl(loop):
            return in_training.evaluate_in_training(
                list(config.eval.tasks), list(config.eval.tasks_shots), config.eval.tasks_limit, model.cfg,
                loop.state.params, pipeline.tokenizer, mesh=mesh, rules=config.mesh.logical_axis_rules,
                seed=config.seed)

        hooks.append(EvalHook(config.eval.tasks_every_steps or config.eval.every_steps, icl))
    init = trainer.pretrained(config.train.init_from) if config.train.init_from else None
    loop = run.fit(workdir, batches=lambda step: LanguageModeling.from_windows(pipeline.train_batch(step)),
                   validate=validate, data_state=pipeline.state, init=init, hooks=hooks,
                   tokens_per_step=tokens_per_step, flops_per_step=flops,
                   peak_flops=metrics.peak_flops_per_device(config.model.dtype),
                   describe=f"vocab {vocab}, mesh {dict(mesh.shape)}, {tokens_per_step} tokens/step")
    write_samples(config, model.cfg, loop.state.params, pipeline.tokenizer, workdir, mesh)
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
