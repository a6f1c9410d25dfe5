"""The measurement every policy stage is compared by: held-out prompts sampled with a fixed key and scored
(eval_reward, eval_true_reward, eval_kl, eval_response_length), at the start (step 0: where every method starts)
and at each evaluation, with a few of the rollouts as text in `<workdir>/rollouts.jsonl`."""

import json

import jax

from gptjax import files, sharding
from gptjax.errors import ConfigError
from gptjax.loop import Hook
from gptjax.metrics import log
from gptjax.rl import stage
from gptjax.rl.rollouts import Rollouts


def examples(rollouts: Rollouts, roll, true_reward, n: int) -> list[dict]:
    """The first n rollouts as text, with their scores (for rollouts.jsonl and the log)."""
    tok = rollouts.s.tokenizer
    prompts = sharding.to_host(roll["prompt"])[:n]
    pmask = sharding.to_host(roll["prompt_mask"])[:n]
    texts = rollouts.texts(roll)[:n]
    reward = sharding.to_host(roll["reward"])[:n] if "reward" in roll else [None] * n
    out = []
    for i in range(min(n, len(texts))):
        row = {"prompt": tok.decode([int(t) for t, m in zip(prompts[i], pmask[i]) if m]), "response": texts[i]}
        if reward[i] is not None:
            row["reward"] = round(float(reward[i]), 4)
        if true_reward is not None:
            row["true_reward"] = round(float(true_reward[i]), 4)
        out.append(row)
    return out


def append_rollouts(workdir, step, kind, rows) -> None:
    if jax.process_index() != 0:
        return
    f = files.AppendFile(files.path(workdir) / "rollouts.jsonl")
    for row in rows:
        f.write(json.dumps({"step": int(step), "kind": kind, **row}) + "\n")
    f.close()


def measure(rollouts: Rollouts, params, prompt, prompt_mask, seed: int) -> tuple[dict, list]:
    """Held-out prompts (global arrays) sampled with a fixed key: (eval_reward, eval_true_reward, eval_kl,
    eval_response_length), and the first rows as (prompt, response) texts."""
    roll = rollouts.sample(params, prompt, prompt_mask, jax.random.fold_in(jax.random.key(seed), 2**30))
    true = rollouts.true_reward(roll)
    values = {f"eval_{k}": float(v) for k, v in jax.device_get(rollouts.summary(roll, true)).items()}
    return values, examples(rollouts, roll, true, 3)


class Probe:
    """Samples the held-out prompts (the first multiple of the data shards of them) with `rollouts`."""

    def __init__(self, config, workdir, mesh, rollouts: Rollouts, tokenizer):
        _, (tokens, mask) = stage.prompts(config, tokenizer)
        dp = sharding.data_parallel_size(mesh)
        n = len(tokens) // dp * dp
        if n == 0:
            raise ConfigError(f"rl.probe_prompts: {len(tokens)} held-out prompts do not fill the {dp} data shards")
        self.tokens, self.mask = tokens[:n], mask[:n]
        self.rollouts, self.workdir, self.seed = rollouts, workdir, config.seed

    def __call__(self, gpt_params, step: int) -> dict:
        mesh = self.rollouts.mesh
        with jax.set_mesh(mesh):
            values, rows = measure(self.rollouts, gpt_params, *stage.global_pair(self.tokens, self.mask, mesh),
                                   self.seed)
        append_rollouts(self.workdir, step, "eval", rows)
        return values


class StartProbe(Hook):
    """Before the first step of a fresh run: the starting model's probe scores, logged at step 0 (with the names
    the stage logs its training values under too, when `plain_names`)."""

    every, at_end = 0, False

    def __init__(self, probe: Probe, ref_params, plain_names: bool = False):
        self.probe, self.ref_params, self.plain_names = probe, ref_params, plain_names

    def begin(self, loop):
        if loop.step:
            return
        values = self.probe(self.ref_params, 0)
        if self.plain_names:
            values.update({k[5:]: v for k, v in values.items() if k != "eval_response_length"})
        loop.write(values)
        log("step      0 | " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))
