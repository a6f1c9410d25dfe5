"""Using a finished workdir: load its config, tokenizer and params to sample from it; create one from a
Hugging Face GPT-2 checkpoint."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import checkpoint, configs, decoding, files, sampling, sharding, tokenizer
from gptjax.errors import ConfigError
from gptjax.metrics import log
from gptjax.model import GPT, ModelConfig


def model_dir(workdir: str) -> str:
    """Where the plain GPT of `workdir` is: `<workdir>/model` when the run wrote one there (runs whose params carry
    more than the GPT: a reward model's or PPO's head, a fine-tuned run's adapters), else the workdir itself."""
    files.check_url(workdir)
    out = str(files.path(workdir) / "model")
    return out if (files.path(out) / checkpoint.CONFIG_FILE).exists() else workdir


def adopt_init_from(config, workdir: str) -> None:
    """A run that starts from `train.init_from` takes that workdir's model shape and tokenizer, which its params
    fit: copies them into the config (but the tunable fields, dropout, dtype, remat, implementations) and its
    tokenizer into `workdir`. Refused in one line: init_from that is (or holds) this workdir, that is no gptjax
    workdir, or whose tokenizer differs from the one this workdir already has. Either may be a gs:// URL."""
    source = config.train.init_from
    files.check_url(source, "train.init_from")
    src, here = str(files.path(source)).rstrip("/"), str(files.path(workdir)).rstrip("/")
    if here == src or here.startswith(src + "/"):
        raise ConfigError(f"train.init_from: {source} is (or holds) this run's workdir; start the run in a new "
                          "--workdir, the run it starts from is never written to")
    saved = checkpoint.read_config(source)  # "not a gptjax workdir" when it has no config.json
    theirs, ours = _tokenizer_fingerprint(source), _tokenizer_fingerprint(workdir)
    if ours is not None and ours != theirs:
        raise checkpoint.CheckpointError(f"train.init_from: {source} has another tokenizer than {workdir}/tokenizer; "
                                         "start the run in a new --workdir")
    with config.unlocked():
        for key, value in saved["model"].items():
            if key not in checkpoint.TUNABLE_MODEL_KEYS and key in config.model:
                config.model[key] = value
        config.data.tokenizer = saved["data"]["tokenizer"]
        config.data.tokenizer_path = saved["data"]["tokenizer_path"]
        config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    configs.validate(config)
    src_tok, dst_tok = files.path(source) / "tokenizer", files.path(workdir) / "tokenizer"
    if src_tok.is_dir() and not dst_tok.exists() and jax.process_index() == 0:
        files.copytree(src_tok, dst_tok)


def _tokenizer_fingerprint(workdir: str):
    d = files.path(workdir) / "tokenizer"
    if not (d / "tokenizer.json").is_file():
        return None
    return tokenizer.load_tokenizer(workdir).fingerprint or sorted(p.name for p in d.iterdir())


def export_model(config, workdir: str, gpt_params, step: int, what: str = "the plain GPT") -> str:
    """The GPT of a run whose params carry more than the GPT (a head, adapters) as a plain gptjax workdir at
    `<workdir>/model`: config, tokenizer and a params-only checkpoint, which `gptjax sample`, `eval`, `inspect` and
    `train.init_from` read when given `<workdir>` (`model_dir`). A rerun of a finished run finds its export there at
    the same step and leaves it (the same params)."""
    out = str(files.path(workdir) / "model")
    if (files.path(out) / checkpoint.CONFIG_FILE).exists() and checkpoint.latest_step(out) == step:
        return out
    checkpoint.write_config(out, config)
    src, dst = files.path(workdir) / "tokenizer", files.path(out) / "tokenizer"
    if jax.process_index() == 0 and not dst.exists():
        files.copytree(src, dst)
    checkpoint.save_params(out, gpt_params, step)
    log(f"wrote {what} to {out}")
    return out


def load_config(workdir: str):
    """(config, model_cfg, tokenizer) of `workdir` (of its plain GPT, see `model_dir`): cheap, no params."""
    workdir = model_dir(workdir)
    config = ml_collections.ConfigDict(checkpoint.read_config(workdir))
    return config, ModelConfig.from_config(config.model), tokenizer.load_tokenizer(workdir)


def load(workdir: str, mesh=None):
    """(config, model_cfg, params, tokenizer) of the latest checkpoint in `workdir`, params sharded on `mesh` (by
    default all devices on the data axis, which replicates them) with the run's logical-axis rules."""
    config, model_cfg, tok = load_config(workdir)
    return config, model_cfg, load_params(model_dir(workdir), config, model_cfg, mesh), tok


def load_params(workdir: str, config, model_cfg: ModelConfig, mesh=None):
    mesh = mesh if mesh is not None else sharding.make_mesh((-1, 1, 1))
    model = GPT(model_cfg)
    abstract, _ = sharding.abstract_state(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"], mesh,
        config.mesh.logical_axis_rules)
    return checkpoint.load_params(workdir, abstract)


def run_mesh(config):
    """The run's own mesh (`mesh.shape`) over this process's devices, so a model trained sharded is sampled
    sharded; when that shape cannot cover these devices, FSDP over all of them (parameters still split)."""
    try:
        return sharding.make_mesh(config.mesh.shape)
    except ConfigError:
        return sharding.make_mesh((1, -1, 1))


def sample_from_workdir(workdir: str, prompt: str, *, stream: bool = True, truncate: str = "error", mesh=None,
                        **options) -> list[str]:
    """Prints and returns the continuations of `prompt`: the first one streamed as it is generated (sampling), the
    rest when done. `options` are `sampling.generate`'s (max_new_tokens, temperature, beam_size, stop_strings...).
    Parameters are loaded sharded on `mesh` (default: `run_mesh`, the run's mesh) and stay sharded."""
    config, model_cfg, tok = load_config(workdir)
    sampling.check_options(**{k: v for k, v in options.items() if k in ("temperature", "top_k", "top_p", "beam_size",
                                                                         "num_samples")})
    max_new = options.get("max_new_tokens", 100)
    beam = options.get("beam_size", 1) > 1
    prompt_ids = decoding.fit_prompts([tok.encode(prompt)], max_new, model_cfg.max_len, truncate, slide=not beam)[0]
    shown = tok.decode(prompt_ids)  # the prompt as the model sees it (its end, if truncated)
    mesh = mesh if mesh is not None else run_mesh(config)
    params = load_params(model_dir(workdir), config, model_cfg, mesh)
    live = stream and not beam
    if live:
        print(shown, end="", flush=True)
    completions = sampling.generate(
        model_cfg, params, [prompt_ids], tokenizer=tok, eos_id=tok.eos_id, mesh=mesh,
        rules=config.mesh.logical_axis_rules,
        on_text=(lambda row, text: row == 0 and print(text, end="", flush=True)) if live else None, **options
    )
    texts = [shown + c.text for c in completions]
    for i, text in enumerate(texts):
        print("\n-----" if live and i == 0 else f"{text}\n-----", flush=True)
    return texts


def import_hf(hf_dir: str, workdir: str) -> None:
    """Writes a gptjax workdir (config.json, tokenizer, params checkpoint) from a transformers GPT-2 directory."""
    from gptjax.convert import hf

    files.check_url(workdir)
    if (files.path(workdir) / checkpoint.CONFIG_FILE).exists():
        raise checkpoint.CheckpointError(f"--workdir={workdir} already holds a run; choose a new directory")
    overrides, params = hf.load_hf_gpt2(hf_dir)
    config = configs.get_config()
    config.model.update(overrides)
    config.data.tokenizer = "hf"
    config.data.tokenizer_path = os.path.abspath(hf_dir)
    config.data.seq_len = min(config.data.seq_len, config.model.max_len)
    config = configs.finalize(config, shrink=False)  # the weights are given: a smoke run imports them whole
    tokenizer.build_tokenizer(config.data, workdir, lambda: [])
    model_cfg = ModelConfig.from_config(config.model)
    if model_cfg.scan_layers:
        params = hf.stack_layers(params, model_cfg.num_layers)
    checkpoint.write_config(workdir, config)
    checkpoint.save_params(workdir, params)
    print(f"imported {hf_dir} into {workdir} ({dataclasses.asdict(model_cfg)['num_layers']} layers)")
