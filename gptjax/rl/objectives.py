"""What each stage of learning from preferences trains, as `trainer.Objective`s over batch dicts: the reward model
(pairwise ranking loss), DPO, and the PPO, GRPO and RLOO updates on rollout minibatches. Rollouts, rewards and
advantages are made outside (rl/rollouts.py); these are the differentiable parts. Every row is a prompt followed by a response
(rl/models.py::layout)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, cross_entropy
from gptjax.rl import losses
from gptjax.rl.models import ScalarHeadGPT, last_response_entry, layout, response_part


def forward(model, params, prompt, prompt_mask, response, lengths, train: bool = False, rng=None):
    """(scores_BxS or None, logits_BxSxV, response_mask_BxN) of prompts followed by responses."""
    tokens, positions, kv_mask, mask_BxN = layout(prompt, prompt_mask, response, lengths)
    out = model.apply({"params": params}, tokens, positions, kv_mask, train=train,
                      rngs={"dropout": rng} if rng is not None else None)
    scores, logits = out if isinstance(model, ScalarHeadGPT) else (None, out)
    return scores, logits, mask_BxN


def response_logprobs(model, params, prompt, prompt_mask, response, lengths, temperature: float = 1.0, **kw):
    """(per-token log-probs of the responses under softmax(logits / temperature), response mask, values or None,
    logits of the response positions)."""
    P = prompt.shape[1]
    scores, logits, mask = forward(model, params, prompt, prompt_mask, response, lengths, **kw)
    logits_BxNxV = response_part(logits, P)
    logp = losses.token_logprobs(logits_BxNxV, response, temperature)
    values = None if scores is None else response_part(scores, P)
    return logp, mask, values, logits_BxNxV


def sequence_logprobs(model, params, prompt, prompt_mask, response, lengths):
    """log p(response | prompt) of each row (DPO's unit)."""
    logp, mask, _, _ = response_logprobs(model, params, prompt, prompt_mask, response, lengths)
    return (logp * mask).sum(axis=1)


def _init(model, rng, P: int, N: int):
    tokens = jnp.zeros((1, P + N), jnp.int32)
    return model.init({"params": rng}, tokens)["params"]


@dataclasses.dataclass(frozen=True)
class RewardModeling:
    """Batch: prompt_BxP, prompt_mask_BxP, response_BxKxN, lengths_BxK, ranks_BxK, valid_BxK (data.py). All K-choose-2
    pairs of a prompt are in the same batch (InstructGPT), so each response's forward pass serves K - 1 pairs."""

    prompt_tokens: int
    response_tokens: int
    num_responses: int

    def example_batch(self) -> dict:
        P, N, K = self.prompt_tokens, self.response_tokens, self.num_responses
        return {"prompt": np.zeros((1, P), np.int32), "prompt_mask": np.ones((1, P), bool),
                "response": np.zeros((1, K, N), np.int32), "lengths": np.ones((1, K), np.int32),
                "ranks": np.arange(K, dtype=np.int32)[None], "valid": np.ones((1, K), np.float32)}

    def init(self, model, rng, batch):
        return _init(model, rng, self.prompt_tokens, self.response_tokens)

    def rewards(self, model, params, batch, train: bool = False, rng=None):
        """The reward of every response, B x K."""
        B, K, N = batch["response"].shape
        rep = lambda x: jnp.repeat(x, K, axis=0)  # noqa: E731  (row b*K + k is prompt b with response k)
        scores, _, _ = forward(model, params, rep(batch["prompt"]), rep(batch["prompt_mask"]),
                               batch["response"].reshape(B * K, N), batch["lengths"].reshape(B * K), train, rng)
        return last_response_entry(scores, self.prompt_tokens, batch["lengths"].reshape(B * K)).reshape(B, K)

    def loss(self, model, params, batch, rng):
        r = self.rewards(model, params, batch, train=True, rng=rng)
        loss, acc, _ = losses.ranking_loss(r, batch["ranks"], batch["valid"])
        return loss, {"train_accuracy": acc}

    def evaluate(self, model, params, batch) -> dict:
        loss, acc, n = losses.ranking_loss(self.rewards(model, params, batch), batch["ranks"], batch["valid"])
        return {"val_loss": (loss * n, n), "val_accuracy": (acc * n, n)}


@dataclasses.dataclass(frozen=True)
class DPO:
    """Batch: prompt, prompt_mask, chosen, chosen_lengths, rejected, rejected_lengths, and the reference model's
    sequence log-probs ref_chosen, ref_rejected (computed once before training). Rafailov et al. 2023, with
    label smoothing as the conservative variant."""

    prompt_tokens: int
    response_tokens: int
    beta: float
    label_smoothing: float = 0.0

    def example_batch(self) -> dict:
        P, N = self.prompt_tokens, self.response_tokens
        z, one = np.zeros((1, N), np.int32), np.ones((1,), np.int32)
        return {"prompt": np.zeros((1, P), np.int32), "prompt_mask": np.ones((1, P), bool), "chosen": z,
                "chosen_lengths": one, "rejected": z, "rejected_lengths": one,
                "ref_chosen": np.zeros((1,), np.float32), "ref_rejected": np.zeros((1,), np.float32)}

    def init(self, model, rng, batch):
        return _init(model, rng, self.prompt_tokens, self.response_tokens)

    def policy_logprobs(self, model, params, batch, train=False, rng=None):
        both = lambda a, b: jnp.concatenate([batch[a], batch[b]], axis=0)  # noqa: E731  (one forward pass)
        logp, mask, _, _ = response_logprobs(
            model, params, both("prompt", "prompt"), both("prompt_mask", "prompt_mask"), both("chosen", "rejected"),
            both("chosen_lengths", "rejected_lengths"), train=train, rng=rng)
        seq = (logp * mask).sum(axis=1)
        B = batch["chosen"].shape[0]
        return seq[:B], seq[B:]

    def _loss(self, model, params, batch, train=False, rng=None):
        chosen, rejected = self.policy_logprobs(model, params, batch, train, rng)
        return losses.dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], self.beta,
                               self.label_smoothing)

    def loss(self, model, params, batch, rng):
        return self._loss(model, params, batch, True, rng)

    def evaluate(self, model, params, batch) -> dict:
        chosen, rejected = self.policy_logprobs(model, params, batch)
        row = jax.vmap(lambda *x: losses.dpo_loss(*(v[None] for v in x), self.beta, self.label_smoothing))
        loss_B, m = row(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"])
        w_B = batch.get("weight", jnp.ones_like(loss_B))
        n = w_B.sum()
        return {"val_loss": ((loss_B * w_B).sum(), n), "val_reward_accuracy": ((m["reward_accuracy"] * w_B).sum(), n)}


@dataclasses.dataclass(frozen=True)
class PolicyUpdate:
    """One PPO or GRPO minibatch update. Batch: prompt, prompt_mask, response, lengths (the rollout), old_logp_BxN
    (the sampling policy's), advantages_BxN; PPO adds old_values_BxN and returns_BxN (the value head on
    `ScalarHeadGPT`), GRPO adds ref_logp_BxN (its KL term is in the loss, k3, and it has no critic). With
    ptx_coef > 0, ptx_inputs/ptx_targets are a pretraining batch (InstructGPT's PPO-ptx)."""

    prompt_tokens: int
    response_tokens: int
    temperature: float
    clip_eps: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    kl_coef: float = 0.0  # GRPO: beta of the k3 KL term in the loss
    ptx_coef: float = 0.0
    ptx_len: int = 0
    critic: bool = True

    def example_batch(self) -> dict:
        P, N = self.prompt_tokens, self.response_tokens
        z = np.zeros((1, N), np.float32)
        b = {"prompt": np.zeros((1, P), np.int32), "prompt_mask": np.ones((1, P), bool),
             "response": np.zeros((1, N), np.int32), "lengths": np.ones((1,), np.int32), "old_logp": z,
             "advantages": z}
        b.update({"old_values": z, "returns": z} if self.critic else {"ref_logp": z})
        if self.ptx_coef:
            ptx = np.zeros((1, self.ptx_len), np.int32)
            b.update(ptx_inputs=ptx, ptx_targets=ptx)
        return b

    def init(self, model, rng, batch):
        return _init(model, rng, self.prompt_tokens, self.response_tokens)

    def loss(self, model, params, batch, rng):
        logp, mask, values, logits = response_logprobs(
            model, params, batch["prompt"], batch["prompt_mask"], batch["response"], batch["lengths"],
            self.temperature, train=True, rng=rng)
        pg, m = losses.ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], mask, self.clip_eps)
        ent = losses.masked_mean(losses.entropy(logits / self.temperature), mask)
        total, aux = pg, {"policy_loss": pg, **m, "entropy": ent}
        if self.critic:
            vl, vm = losses.value_loss(values, batch["old_values"], batch["returns"], mask, self.value_clip)
            total, aux = total + self.vf_coef * vl, {**aux, "value_loss": vl, **vm}
        else:
            kl = losses.masked_mean(losses.kl_penalty(logp, batch["ref_logp"], "k3"), mask)
            total, aux = total + self.kl_coef * kl, {**aux, "kl_k3": kl}
        if self.ptx_coef:
            lm_model = model if isinstance(model, GPT) else GPT(model.cfg)
            lm_params = params if isinstance(model, GPT) else params["gpt"]
            logits_ptx = lm_model.apply({"params": lm_params}, batch["ptx_inputs"], train=True,
                                        rngs={"dropout": rng} if rng is not None else None)
            ptx, _ = cross_entropy(logits_ptx, batch["ptx_targets"])
            total, aux = total + self.ptx_coef * ptx, {**aux, "ptx_loss": ptx}
        return total, aux

    def evaluate(self, model, params, batch) -> dict:  # policies are evaluated by rollouts (rl/probe.py)
        return {}
