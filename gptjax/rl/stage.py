"""What every stage of learning from preferences shares before it trains (gptjax/runs/reward.py, ppo.py, rloo.py,
dpo.py): the start from a trained model, the frozen scorers (the reference, the reward model, the judge), the
prompts and the comparisons."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import batching, checkpoint, files, sharding, trainer, workdirs
from gptjax.errors import CheckpointError, ConfigError, DataError
from gptjax.model import GPT, ModelConfig
from gptjax.rl import data as rl_data
from gptjax.rl.models import ScalarHeadGPT
from gptjax.rl.rollouts import Scorers
from gptjax.tokenizer import load_tokenizer

REWARD_NORM_FILE = "reward_norm.json"


def begin(config, workdir: str, reads_prompts: bool = True, check=None):
    """The start of every stage: the core's checks and mesh (with the stage's own `check(mesh)`), the prompt set
    (before any model is loaded), and the starting model (`train.init_from`, or the plain GPT its workdir wrote),
    whose shape and tokenizer the stage takes. Returns (mesh, tokenizer)."""
    mesh = trainer.start(config, workdir, check)
    if reads_prompts:
        rl_data.check_prompts(config.rl.prompts, config.rl.data_dir)
    with config.unlocked():
        config.train.init_from = workdirs.model_dir(config.train.init_from)
    workdirs.adopt_init_from(config, workdir)
    r = config.rl
    if r.prompt_tokens + r.response_tokens > config.model.max_len:
        raise ConfigError(f"rl.response_tokens: a rollout of {r.prompt_tokens} prompt + {r.response_tokens} response "
                          f"tokens is longer than the model's context of {config.model.max_len}")
    checkpoint.check_compatible(workdir, config)  # before the stage's own work (sampling, labelling)
    return mesh, load_tokenizer(workdir)


def check_minibatch(config, mesh, rows: int, minibatch: int) -> None:
    dp, accum = sharding.data_parallel_size(mesh), config.train.grad_accum_steps
    if minibatch % (dp * accum) or rows % minibatch:
        times = f" times train.grad_accum_steps={accum}" if accum > 1 else ""
        raise ConfigError(f"rl.minibatch: {minibatch} must divide the {rows} rows of a batch and be a multiple of the "
                          f"{dp} data-parallel shards{times}")


def _same_tokenizer(workdir: str, other: str, key: str) -> None:
    a, b = load_tokenizer(workdir), load_tokenizer(other)
    if (a.kind, a.vocab_size, a.fingerprint) != (b.kind, b.vocab_size, b.fingerprint):
        raise CheckpointError(f"{key}: {other} has another tokenizer ({b.kind}, {b.vocab_size} tokens) than the "
                              f"policy's ({a.kind}, {a.vocab_size} tokens); its scores would read other text")


def scorers(config, workdir, model_cfg, mesh, tokenizer) -> Scorers:
    """The reference (the starting model, frozen), and the reward model and judge the config names."""
    r = config.rl
    s = Scorers(GPT(model_cfg), workdirs.load_params(config.train.init_from, config, model_cfg, mesh),
                tokenizer=tokenizer)
    if r.reward_from:
        _same_tokenizer(workdir, r.reward_from, "rl.reward_from")
        rm_config = ml_collections.ConfigDict(checkpoint.read_config(r.reward_from))
        if rm_config.get("rl", {}).get("stage") != "reward":
            raise ConfigError(f"rl.reward_from: {r.reward_from} is not a reward model (rl.stage=reward)")
        norm = files.path(r.reward_from) / REWARD_NORM_FILE
        if not norm.exists():
            raise CheckpointError(f"rl.reward_from: {r.reward_from} has not finished ({REWARD_NORM_FILE} is written "
                                  "at the end of the reward stage)")
        rm = ScalarHeadGPT(ModelConfig.from_config(rm_config.model))
        abstract, _ = sharding.abstract_state(
            lambda: rm.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))["params"], mesh,
            rm_config.mesh.logical_axis_rules)
        s.reward_model, s.reward_params = rm, checkpoint.load_params(r.reward_from, abstract)
        s.reward_offset = float(json.loads(norm.read_text())["mean"])
    if r.judge_from:
        from gptjax.rl.judge import Judge

        s.judge = Judge(r.judge_from, r.judge_label, mesh)
    return s


def prompts(config, tokenizer):
    """(train prompts, held-out prompts) as (tokens, mask) arrays. `plays`: the genre task's training plays and
    its held-out plays; a file or TFDS dataset: its last rl.probe_prompts prompts are held out."""
    r = config.rl
    if r.prompts == "plays":
        train = rl_data.read_prompts("plays", "train")
        held = rl_data.read_prompts("plays", "validation")
        held = [held[i] for i in np.random.default_rng(0).permutation(len(held))[:r.probe_prompts]]
    else:
        texts = rl_data.read_prompts(r.prompts, "train", r.prompt_field, r.data_dir)
        if len(texts) <= r.probe_prompts:
            raise DataError(f"rl.prompts: {r.prompts} has {len(texts)} prompts, and rl.probe_prompts="
                            f"{r.probe_prompts} are held out for evaluation")
        train, held = texts[:-r.probe_prompts], texts[-r.probe_prompts:]
    return (rl_data.encode_prompts(train, tokenizer, r.prompt_tokens),
            rl_data.encode_prompts(held, tokenizer, r.prompt_tokens))


def comparisons_path(config, workdir) -> str:
    r = config.rl
    if r.comparisons:
        return r.comparisons
    if r.comparisons_from:
        return str(files.path(r.comparisons_from) / "comparisons.jsonl")
    return str(files.path(workdir) / "comparisons.jsonl")


def split_comparisons(recs, val_fraction: float):
    n_val = max(1, int(round(len(recs) * val_fraction)))
    if len(recs) - n_val < 1:
        raise DataError(f"rl.comparisons: {len(recs)} comparisons leave none for training after holding out {n_val}")
    return recs[:-n_val], recs[-n_val:]


def global_pair(tokens, mask, mesh):
    """Prompt tokens and mask (every process holds all rows) as global arrays, each process giving its share."""
    share = batching.local_rows(len(tokens))
    g = sharding.host_local_to_global({"t": tokens[share], "m": mask[share]}, mesh)
    return g["t"], g["m"]
