"""The reward model (`rl.stage=reward`, InstructGPT step 2): the starting GPT with a scalar head on the last token,
trained on all K-choose-2 pairs of each prompt's ranked responses. `rl.comparisons` names the comparisons, or, with a
judge, they are sampled from the starting model and ranked by it (rl/labelling.py). At the end the rewards are
shifted so the starting model's samples average 0 (`reward_norm.json`), and the backbone goes to `<workdir>/model`.
Logs val_accuracy, the pairwise accuracy on the held-out comparisons."""

import json

import jax
import numpy as np

from gptjax import batching, files, sharding, trainer, workdirs
from gptjax.metrics import log
from gptjax.model import ModelConfig
from gptjax.rl import data as rl_data
from gptjax.rl import stage
from gptjax.rl.models import ScalarHeadGPT
from gptjax.rl.objectives import RewardModeling


def planned(config, num_responses: int = 0):
    r = config.rl
    return (ScalarHeadGPT(ModelConfig.from_config(config.model)),
            RewardModeling(r.prompt_tokens, r.response_tokens, num_responses or r.num_responses))


def _reads_prompts(config, workdir: str) -> bool:
    """A reward stage reads rl.prompts only to sample comparisons it does not have yet."""
    r = config.rl
    return not (r.comparisons or (files.path(workdir) / "comparisons.jsonl").exists())


def _pad_k(enc: dict, K: int) -> dict:
    k = enc["ranks"].shape[1]
    if k == K:
        return enc
    pad = lambda x: np.concatenate([x, np.zeros((x.shape[0], K - k, *x.shape[2:]), x.dtype)], axis=1)  # noqa: E731
    out = {**enc, **{key: pad(enc[key]) for key in ("response", "ranks", "valid")}}
    out["lengths"] = np.concatenate([enc["lengths"], np.ones((len(enc["lengths"]), K - k), np.int32)], axis=1)
    return out


def _eval_batches(enc: dict, batch_size: int, limit: int = 0):
    """Comparison batches whose padding rows have valid = 0 (no pairs)."""
    for rows, real in batching.eval_rows(enc, batch_size, limit):
        yield {**rows, "valid": rows["valid"] * real[:, None]}


def train(config, workdir: str) -> dict:
    r = config.rl
    mesh, tokenizer = stage.begin(config, workdir, _reads_prompts(config, workdir))
    model_cfg = ModelConfig.from_config(config.model)
    path = stage.comparisons_path(config, workdir)
    if not r.comparisons and not files.path(path).exists():
        from gptjax.rl.labelling import label_comparisons

        label_comparisons(config, workdir, mesh, tokenizer, model_cfg)
    train_recs, val_recs = stage.split_comparisons(rl_data.read_comparisons(path), r.val_fraction)
    enc = lambda recs: rl_data.encode_comparisons(recs, tokenizer, r.prompt_tokens, r.response_tokens)  # noqa: E731
    train_enc, val_enc = enc(train_recs), enc(val_recs)
    K = max(train_enc["ranks"].shape[1], val_enc["ranks"].shape[1])
    train_enc, val_enc = (_pad_k(e, K) for e in (train_enc, val_enc))
    run = trainer.Trainer(config, mesh, *planned(config, K))
    B, eval_batch = config.train.batch_size, config.eval.batch_size or config.train.batch_size
    loop = run.fit(
        workdir, batches=lambda step: batching.train_rows(train_enc, B, config.seed, step),
        validate=lambda loop: run.evaluate(loop.state.params, _eval_batches(val_enc, eval_batch,
                                                                             config.eval.max_examples)),
        init=trainer.pretrained(config.train.init_from, ("gpt",)), tokens_per_step=B * K * (r.prompt_tokens +
                                                                                            r.response_tokens),
        title="gptjax rl reward", describe=f"{len(train_enc['prompt'])} training prompts ("
                                           f"{int(train_enc['valid'].sum())} responses), {len(val_enc['prompt'])} "
                                           "held out")
    _normalise(run, loop.state.params, train_enc, B, workdir)
    workdirs.export_model(config, workdir, loop.state.params["gpt"], loop.step)
    return loop.last


def _normalise(run, params, enc, batch_size, workdir) -> None:
    """Rewards are shifted so that the responses of the training comparisons (the starting model's samples)
    average 0 (InstructGPT); the mean and standard deviation go to reward_norm.json."""
    objective = run.objective
    fn = jax.jit(lambda p, b: objective.rewards(run.model, p, b),
                 in_shardings=(run.state_shardings.params, sharding.batch_sharding(run.mesh)))
    values = []
    with run.context():
        for rows in _eval_batches(enc, batch_size):
            out = sharding.to_host(fn(params, sharding.host_local_to_global(rows, run.mesh)))
            valid = sharding.to_host(sharding.host_local_to_global({"v": rows["valid"]}, run.mesh)["v"])
            values.append(out[valid > 0])
    values = np.concatenate(values)
    norm = {"mean": float(values.mean()), "std": float(values.std()), "count": int(values.size)}
    if jax.process_index() == 0:
        files.write_text(files.path(workdir) / stage.REWARD_NORM_FILE, json.dumps(norm) + "\n")
    log(f"reward normalisation: the starting model's responses average {norm['mean']:.4f} (std {norm['std']:.4f})")
