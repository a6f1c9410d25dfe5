"""Rollouts, their scores and their advantages: what PPO, GRPO and RLOO learn from.

`Scorers` holds the frozen models a rollout is scored with: the reference policy (KL), the reward model (`reward`,
normalised so the starting model's samples average 0) and the judge (`true_reward`, the experiment's ground truth).
`Rollouts` samples responses with the jitted sampler (`sampling.sample_batch`, which returns the log-probabilities of
the distribution each token was drawn from) and scores them. The advantages of each method turn a scored rollout
into what `objectives.PolicyUpdate` trains on; `rl/probe.py` measures policies on held-out prompts.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import sampling, sharding
from gptjax.rl import losses
from gptjax.rl.models import last_response_entry
from gptjax.rl.objectives import forward, response_logprobs


@dataclasses.dataclass
class Scorers:
    ref_model: Any
    ref_params: Any
    reward_model: Any = None  # ScalarHeadGPT, or None
    reward_params: Any = None
    reward_offset: float = 0.0
    judge: Any = None  # rl.judge.Judge, or None
    tokenizer: Any = None


def _rows(batch, idx):
    return jax.tree.map(lambda x: x[idx], batch)


class Rollouts:
    """Samples rollouts of a GPT's params on the mesh and scores them with `scorers`."""

    def __init__(self, model_cfg, scorers: Scorers, mesh, rules, prompt_tokens: int, response_tokens: int,
                 temperature: float, eos_id):
        self.cfg, self.s, self.mesh, self.rules = model_cfg, scorers, mesh, sharding.hashable_rules(rules)
        self.P, self.N, self.T, self.eos_id = prompt_tokens, response_tokens, temperature, eos_id
        batch = sharding.batch_sharding(mesh)
        s = scorers
        P, T = prompt_tokens, temperature

        def score(roll):
            ref_logp, mask, _, _ = response_logprobs(s.ref_model, s.ref_params, roll["prompt"], roll["prompt_mask"],
                                                     roll["response"], roll["lengths"], T)
            out = {"ref_logp": ref_logp, "mask": mask}
            if s.reward_model is not None:
                scores, _, _ = forward(s.reward_model, s.reward_params, roll["prompt"], roll["prompt_mask"],
                                       roll["response"], roll["lengths"])
                out["reward"] = last_response_entry(scores, P, roll["lengths"]) - s.reward_offset
            return out

        self.score = jax.jit(score, in_shardings=(batch,), out_shardings=batch)
        self.take = jax.jit(_rows, in_shardings=(batch, None), out_shardings=batch)

    def sample(self, params, prompt, prompt_mask, key) -> dict:
        """A rollout batch dict of global arrays: prompt, prompt_mask, response, lengths, old_logp (the sampling
        distribution's), mask, ref_logp, and reward when there is a reward model."""
        with jax.set_mesh(self.mesh):
            response, logp, lengths = sampling.sample_batch(
                self.cfg, params, prompt, prompt_mask, key, max_new_tokens=self.N, temperature=self.T,
                eos_id=self.eos_id, rules=self.rules)
            roll = {"prompt": prompt, "prompt_mask": prompt_mask, "response": response, "lengths": lengths}
            roll.update(self.score(roll))
        roll["old_logp"] = logp * roll["mask"]
        return roll

    def texts(self, roll) -> list[str]:
        response, lengths = (sharding.to_host(roll[k]) for k in ("response", "lengths"))
        eos = self.eos_id
        return [self.s.tokenizer.decode([int(t) for t in r[:n] if t != eos]) for r, n in zip(response, lengths)]

    def true_reward(self, roll) -> np.ndarray | None:
        return None if self.s.judge is None else self.s.judge(self.texts(roll))

    def summary(self, roll, true_reward=None) -> dict:
        """Scalars of a scored rollout: reward, true_reward, kl (sequence KL to the reference, the k1 estimate
        summed over tokens, averaged over rows) and the mean response length."""
        mask = roll["mask"]
        out = {"kl": jnp.mean(jnp.sum(losses.kl_penalty(roll["old_logp"], roll["ref_logp"]) * mask, axis=1)),
               "response_length": jnp.mean(roll["lengths"].astype(jnp.float32))}
        if "reward" in roll:
            out["reward"] = jnp.mean(roll["reward"])
        if true_reward is not None:
            out["true_reward"] = float(np.mean(true_reward))
        return out


def values(model, params, roll, temperature: float = 1.0):
    """PPO's critic: the value head of the policy (`ScalarHeadGPT`) before each response token, 0 past the end."""
    _, _, values_BxN, _ = response_logprobs(model, params, roll["prompt"], roll["prompt_mask"], roll["response"],
                                            roll["lengths"], temperature)
    return values_BxN * roll["mask"]


def ppo_advantages(roll, values_BxN, kl_coef, gamma: float, lam: float, whiten: bool = True) -> dict:
    """PPO's targets for a scored rollout (Ziegler et al. 2019; InstructGPT): per-token reward -kl_coef * (log p -
    log p_ref), plus the reward model's score on the last response token; GAE advantages (whitened over the batch)
    and returns; and the explained variance of the values."""
    mask = roll["mask"]
    per_token = -kl_coef * losses.kl_penalty(roll["old_logp"], roll["ref_logp"]) * mask
    last = jax.nn.one_hot(roll["lengths"] - 1, mask.shape[1]) * roll["reward"][:, None]
    adv, returns = losses.gae(per_token + last, values_BxN, mask, gamma, lam)
    if whiten:
        adv = losses.whiten(adv, mask) * mask
    return {"advantages": adv, "old_values": values_BxN, "returns": returns,
            "explained_variance": losses.explained_variance(values_BxN, returns, mask)}


def rloo_advantages(roll, group_size: int, kl_coef) -> dict:
    """RLOO's targets (Ahmadian et al. 2024): each response's reward less kl_coef times its sequence KL to the
    reference (the KL in the reward, as in RLHF), minus the mean of that of the other `group_size` - 1 responses to
    the same prompt (consecutive rows): REINFORCE with a leave-one-out baseline, the same for every token."""
    mask = roll["mask"]
    kl_B = jnp.sum(losses.kl_penalty(roll["old_logp"], roll["ref_logp"]) * mask, axis=1)
    adv = losses.leave_one_out_advantages(roll["reward"] - kl_coef * kl_B, group_size)
    return {"advantages": adv[:, None] * mask}


def grpo_advantages(roll, group_size: int) -> dict:
    """GRPO's targets (Shao et al. 2024): each response's reward normalised within its group of `group_size`
    consecutive rows (the same prompt), the same for every token of the response; the reference's log-probs for the
    KL term in the loss."""
    adv = losses.group_advantages(roll["reward"], group_size)
    return {"advantages": adv[:, None] * roll["mask"], "ref_logp": roll["ref_logp"]}
