"""DPO (`rl.stage=dpo`, Rafailov et al. 2023): the policy trained on comparisons directly against the frozen
reference's log-probabilities, computed once before training; no reward model in the loss (one given in
`rl.reward_from` still scores the policy's samples). Logs the DPO loss, accuracy and margins on the held-out
comparisons, and the probe's scores (rl/probe.py)."""

import jax
import numpy as np

from gptjax import batching, sharding, trainer
from gptjax.model import GPT, ModelConfig
from gptjax.rl import data as rl_data
from gptjax.rl import stage
from gptjax.rl.objectives import DPO, sequence_logprobs
from gptjax.rl.probe import Probe, StartProbe
from gptjax.rl.rollouts import Rollouts


def planned(config):
    r = config.rl
    return GPT(ModelConfig.from_config(config.model)), DPO(r.prompt_tokens, r.response_tokens, r.beta,
                                                           r.label_smoothing)


def _pair_batches(pairs: dict, batch_size: int, limit: int = 0):
    for rows, real in batching.eval_rows(pairs, batch_size, limit):
        yield {**rows, "weight": real.astype(np.float32)}  # 0: a padding row of the last batch


def _reference_logprobs(run, scorers, pairs, batch_size):
    fn = jax.jit(lambda p, b: (sequence_logprobs(scorers.ref_model, p, b["prompt"], b["prompt_mask"], b["chosen"],
                                                 b["chosen_lengths"]),
                               sequence_logprobs(scorers.ref_model, p, b["prompt"], b["prompt_mask"], b["rejected"],
                                                 b["rejected_lengths"])),
                 in_shardings=(None, sharding.batch_sharding(run.mesh)))
    n = len(pairs["prompt"])
    chosen, rejected = [], []
    with run.context():
        for rows, _ in batching.eval_rows(pairs, batch_size):
            c, r = fn(scorers.ref_params, sharding.host_local_to_global(rows, run.mesh))
            chosen.append(sharding.to_host(c))
            rejected.append(sharding.to_host(r))
    return np.concatenate(chosen)[:n].astype(np.float32), np.concatenate(rejected)[:n].astype(np.float32)


def train(config, workdir: str) -> dict:
    r = config.rl
    mesh, tokenizer = stage.begin(config, workdir)
    model_cfg = ModelConfig.from_config(config.model)
    train_recs, val_recs = stage.split_comparisons(rl_data.read_comparisons(stage.comparisons_path(config, workdir)),
                                                   r.val_fraction)
    enc = lambda recs: rl_data.pairs(rl_data.encode_comparisons(recs, tokenizer, r.prompt_tokens,  # noqa: E731
                                                                r.response_tokens))
    train_pairs, val_pairs = enc(train_recs), enc(val_recs)
    scorers = stage.scorers(config, workdir, model_cfg, mesh, tokenizer)
    run = trainer.Trainer(config, mesh, *planned(config))
    B, eval_batch = config.train.batch_size, config.eval.batch_size or config.train.batch_size
    for p in (train_pairs, val_pairs):  # the reference's log-probs, computed once
        p["ref_chosen"], p["ref_rejected"] = _reference_logprobs(run, scorers, p, eval_batch)
    rollouts = Rollouts(model_cfg, scorers, mesh, config.mesh.logical_axis_rules, r.prompt_tokens, r.response_tokens,
                        r.temperature, tokenizer.eos_id)
    probe = Probe(config, workdir, mesh, rollouts, tokenizer)

    def validate(loop):
        values = run.evaluate(loop.state.params, _pair_batches(val_pairs, eval_batch, config.eval.max_examples))
        scores = probe(loop.state.params, loop.step)
        return {**values, **scores, **{k[5:]: v for k, v in scores.items() if k != "eval_response_length"}}

    loop = run.fit(workdir, batches=lambda step: batching.train_rows(train_pairs, B, config.seed, step),
                   validate=validate, init=trainer.pretrained(config.train.init_from),
                   hooks=[StartProbe(probe, scorers.ref_params, plain_names=True)],
                   tokens_per_step=2 * B * (r.prompt_tokens + r.response_tokens), title="gptjax rl dpo",
                   describe=f"{len(train_pairs['prompt'])} training pairs, {len(val_pairs['prompt'])} held out, "
                            f"beta {r.beta}")
    return loop.last
