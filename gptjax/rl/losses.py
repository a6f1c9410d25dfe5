"""Losses and estimators for learning from preferences: reward ranking, GAE, PPO, KL, DPO, GRPO.

Pure jax.numpy and jit-compatible (KLController aside: it is host-side state), so the reward-model, PPO, DPO and
GRPO trainers share one tested copy. Masks are float or bool arrays with 1 where a position counts; padded
positions may hold anything (even -inf log-probs) without reaching a loss or a gradient. Inputs that are targets
(old log-probs, advantages, returns, reference log-probs) are stop-gradiented here, so a caller that computes
them in the same graph cannot leak gradient into them. tests/test_rl_losses.py holds these equal to trl 1.16.
"""

import jax
import jax.numpy as jnp


def _sg(x):
    """x as a jax array that passes no gradient (a target, not a parameter's function)."""
    return jax.lax.stop_gradient(jnp.asarray(x))


def _on(mask):
    """The mask as a bool array: where a position counts."""
    return jnp.asarray(mask) != 0


def masked_mean(x, mask, axis=None):
    """Mean of x over the positions where mask is 1 (along `axis`, or all); 0 where no position counts.

    Masked-off entries are replaced, not multiplied, by 0, so a NaN or inf there cannot poison the mean.
    """
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mask = jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
    total = jnp.where(mask != 0, x * mask, 0.0).sum(axis)
    count = mask.sum(axis)
    return total / jnp.where(count > 0, count, 1.0)


def masked_var(x, mask, unbiased=True):
    """Variance over the masked entries; with Bessel's n / (n - 1) when unbiased (trl's `masked_var`)."""
    x = jnp.asarray(x)
    centred = jnp.where(_on(mask), x - masked_mean(x, mask), 0.0)
    var = masked_mean(centred**2, mask)
    if unbiased:
        n = jnp.broadcast_to(jnp.asarray(mask, var.dtype), jnp.shape(x)).sum()
        var = var * n / jnp.maximum(n - 1, 1.0)
    return var


def whiten(x, mask, shift_mean=True):
    """(x - mean) / sqrt(var + 1e-8) over the masked entries (Ziegler et al. 2019; trl's `masked_whiten`).

    shift_mean=False adds the mean back (scale only), as trl does for rewards. Padded positions are 0 rather
    than trl's unmasked values: every consumer masks them, and 0 is finite whatever x held there.
    """
    x = jnp.asarray(x)
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return jnp.where(_on(mask), out, 0.0)


def token_logprobs(logits_BxTxV, targets_BxT, temperature=1.0):
    """log softmax(logits / temperature) at the targets, in float32 (trl's `selective_log_softmax`).

    temperature 0 (greedy sampling) or 1 means no scaling. Gathers the target logit and subtracts the logsumexp
    instead of materialising a second (B, T, V) array of log-probs.
    """
    t = jnp.where(jnp.asarray(temperature) == 0, 1.0, temperature)
    z_BxTxV = logits_BxTxV.astype(jnp.float32) / t
    picked_BxT = jnp.take_along_axis(z_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return picked_BxT - jax.nn.logsumexp(z_BxTxV, axis=-1)


def entropy(logits_BxTxV):
    """Per-token entropy (B, T) of softmax(logits) in nats (trl's `entropy_from_logits`).

    Logits of -inf (tokens filtered out by top-k / top-p) count as probability 0, with finite gradients.
    """
    logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
    p_BxTxV = jnp.exp(logp_BxTxV)
    return -(p_BxTxV * jnp.where(p_BxTxV > 0, logp_BxTxV, 0.0)).sum(-1)


def ranking_loss(rewards_BxK, ranks_BxK, valid_BxK):
    """InstructGPT's reward-model loss (Ouyang et al. 2022, eq. 1): all K-choose-2 comparisons of a prompt in one
    batch, -log sigmoid(r_i - r_j) for every pair of valid responses with rank_i < rank_j (rank 0 is best).

    Returns (mean loss over all pairs in the batch, fraction of pairs with r_i > r_j, number of pairs). Equal
    ranks make no pair. With K = 2 this is trl's RewardTrainer loss on (chosen, rejected).
    """
    r_BxK = jnp.asarray(rewards_BxK)
    r_BxK = r_BxK.astype(jnp.promote_types(r_BxK.dtype, jnp.float32))
    ranks_BxK = jnp.asarray(ranks_BxK)
    on_BxK = _on(valid_BxK)
    pair_BxKxK = on_BxK[:, :, None] & on_BxK[:, None, :] & (ranks_BxK[:, :, None] < ranks_BxK[:, None, :])
    diff_BxKxK = r_BxK[:, :, None] - r_BxK[:, None, :]
    loss = masked_mean(-jax.nn.log_sigmoid(diff_BxKxK), pair_BxKxK)
    accuracy = masked_mean(diff_BxKxK > 0, pair_BxKxK)
    return loss, accuracy, pair_BxKxK.sum()


def gae(rewards_BxT, values_BxT, mask_BxT, gamma, lam):
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens, by a reverse lax.scan.

    mask marks the response tokens, contiguous from position 0 and right-padded; the value after the last real
    token is 0 (the episode ends there). delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}.
    Returns (advantages_BxT, returns_BxT = advantages + values), both 0 at padded positions.
    """
    on_BxT = _on(mask_BxT)
    r_BxT = jnp.where(on_BxT, rewards_BxT, 0.0).astype(jnp.float32)
    v_BxT = jnp.where(on_BxT, values_BxT, 0.0).astype(jnp.float32)

    def step(carry, x):
        next_v_B, next_a_B = carry  # both 0 past the last real token
        r_B, v_B, on_B = x
        a_B = jnp.where(on_B, r_B + gamma * next_v_B - v_B + gamma * lam * next_a_B, 0.0)
        return (v_B, a_B), a_B

    zeros_B = jnp.zeros(r_BxT.shape[0], jnp.float32)
    _, a_TxB = jax.lax.scan(step, (zeros_B, zeros_B), (r_BxT.T, v_BxT.T, on_BxT.T), reverse=True)
    a_BxT = a_TxB.T
    return a_BxT, jnp.where(on_BxT, a_BxT + v_BxT, 0.0)


def ppo_policy_loss(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip_eps):
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss: masked mean of
    max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)), ratio = exp(logp - old_logp).

    Returns (loss, {"clip_frac": fraction of tokens where the clipped term is the active one,
    "approx_kl": masked mean of 0.5 (logp - old_logp)^2}). Gradients flow only through logp.
    """
    on_BxT = _on(mask_BxT)
    log_ratio_BxT = jnp.where(on_BxT, jnp.asarray(logp_BxT) - _sg(old_logp_BxT), 0.0)
    a_BxT = jnp.where(on_BxT, _sg(advantages_BxT), 0.0)
    ratio_BxT = jnp.exp(log_ratio_BxT)
    pg_BxT = -a_BxT * ratio_BxT
    pg_clipped_BxT = -a_BxT * jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(pg_BxT, pg_clipped_BxT), mask_BxT)
    stats = {
        "clip_frac": masked_mean(pg_clipped_BxT > pg_BxT, mask_BxT),
        "approx_kl": masked_mean(0.5 * _sg(log_ratio_BxT) ** 2, mask_BxT),
    }
    return loss, stats


def value_loss(values_BxT, old_values_BxT, returns_BxT, mask_BxT, clip_eps):
    """Clipped value loss (Ziegler et al. 2019; trl's old PPOTrainer): 0.5 * masked mean of
    max((v - R)^2, (old + clip(v - old, -eps, eps) - R)^2). clip_eps <= 0 means unclipped.

    Returns (loss, {"value_clip_frac": fraction of tokens where the clipped error is the larger one}).
    """
    on_BxT = _on(mask_BxT)
    v_BxT = jnp.where(on_BxT, values_BxT, 0.0)
    old_BxT = jnp.where(on_BxT, _sg(old_values_BxT), 0.0)
    ret_BxT = jnp.where(on_BxT, _sg(returns_BxT), 0.0)
    err_BxT = (v_BxT - ret_BxT) ** 2
    v_clipped_BxT = old_BxT + jnp.clip(v_BxT - old_BxT, -clip_eps, clip_eps)
    err_clipped_BxT = jnp.where(clip_eps > 0, (v_clipped_BxT - ret_BxT) ** 2, err_BxT)
    loss = 0.5 * masked_mean(jnp.maximum(err_BxT, err_clipped_BxT), mask_BxT)
    return loss, {"value_clip_frac": masked_mean(err_clipped_BxT > err_BxT, mask_BxT)}


def kl_penalty(logp, ref_logp, kind="k1"):
    """Per-token estimate of KL(policy || ref) from tokens sampled from the policy (Schulman, "Approximating KL
    divergence", 2020): k1 = logp - ref (unbiased, can be negative), k2 = 0.5 (logp - ref)^2,
    k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased and >= 0; GRPO's), "abs" = |logp - ref|.

    k3 uses expm1, which keeps it >= 0 in floating point where exp(x) - 1 - x rounds below 0 for tiny x.
    """
    log_ratio = jnp.asarray(logp) - _sg(ref_logp)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    if kind == "abs":
        return jnp.abs(log_ratio)
    raise ValueError(f"unknown KL estimator {kind!r}: expected 'k1', 'k2', 'k3' or 'abs'")


def explained_variance(values, returns, mask):
    """1 - var(returns - values) / var(returns) over the masked entries: 1 is a perfect critic, 0 no better than
    a constant, below 0 worse. 0 when the returns do not vary, so a NaN check on metrics does not trip."""
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(jnp.asarray(returns) - jnp.asarray(values), mask)
    return jnp.where(var_returns > 0, 1.0 - var_residual / jnp.where(var_returns > 0, var_returns, 1.0), 0.0)


def dpo_loss(policy_chosen_B, policy_rejected_B, ref_chosen_B, ref_rejected_B, beta, label_smoothing=0.0):
    """DPO (Rafailov et al. 2023) on sequence log-probs, with conservative label smoothing (Mitchell 2023):
    mean of -(1 - ls) log sigmoid(z) - ls log sigmoid(-z), z = beta ((pc - rc) - (pr - rr)).

    Returns (loss, {"reward_accuracy", "chosen_reward", "rejected_reward", "margin"}), the implicit rewards
    beta (policy - ref) averaged over the batch, as trl's DPOTrainer logs them. log 2 while policy = reference.
    """
    chosen_B = jnp.asarray(policy_chosen_B) - _sg(ref_chosen_B)
    rejected_B = jnp.asarray(policy_rejected_B) - _sg(ref_rejected_B)
    z_B = beta * (chosen_B - rejected_B)
    loss = jnp.mean(-(1.0 - label_smoothing) * jax.nn.log_sigmoid(z_B) - label_smoothing * jax.nn.log_sigmoid(-z_B))
    chosen_reward_B, rejected_reward_B = beta * _sg(chosen_B), beta * _sg(rejected_B)
    stats = {
        "reward_accuracy": jnp.mean(chosen_reward_B > rejected_reward_B),
        "chosen_reward": chosen_reward_B.mean(),
        "rejected_reward": rejected_reward_B.mean(),
        "margin": (chosen_reward_B - rejected_reward_B).mean(),
    }
    return loss, stats


def leave_one_out_advantages(rewards_N, group_size):
    """RLOO's advantages (Ahmadian et al. 2024; Kool et al. 2019): N = P * G rewards, consecutive groups of G >= 2
    responses per prompt; each reward minus the mean of the other G - 1 of its group, i.e. G / (G - 1) times its
    deviation from the group mean."""
    rewards_N = jnp.asarray(rewards_N)
    n = rewards_N.shape[0]
    if group_size < 2 or n % group_size:
        raise ValueError(f"group_size {group_size} must be at least 2 and divide the number of rewards {n}")
    r_PxG = rewards_N.astype(jnp.promote_types(rewards_N.dtype, jnp.float32)).reshape(-1, group_size)
    baseline_PxG = (r_PxG.sum(axis=1, keepdims=True) - r_PxG) / (group_size - 1)
    return (r_PxG - baseline_PxG).reshape(n)


def group_advantages(rewards_N, group_size, scale=True):
    """GRPO's advantages (Shao et al. 2024): N = P * G rewards, consecutive groups of G responses per prompt;
    (r - group mean) / (group std + 1e-4) when scale, else r - group mean.

    The std is unbiased (n - 1), as trl's GRPOTrainer computes it with `nanstd`; a group of one has std 0.
    """
    rewards_N = jnp.asarray(rewards_N)
    n = rewards_N.shape[0]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size {group_size} must divide the number of rewards {n}")
    r_PxG = rewards_N.astype(jnp.promote_types(rewards_N.dtype, jnp.float32)).reshape(-1, group_size)
    adv_PxG = r_PxG - r_PxG.mean(axis=1, keepdims=True)
    if scale:
        std_Px1 = r_PxG.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else jnp.zeros_like(adv_PxG[:, :1])
        adv_PxG = adv_PxG / (std_Px1 + 1e-4)
    return adv_PxG.reshape(n)


class KLController:
    """The KL-penalty coefficient: fixed, or adaptive towards a target KL (Ziegler et al. 2019, section 2.2).

    Adaptive: error = clip(current_kl / target - 1, -0.2, 0.2); value *= 1 + error * n_steps / horizon. Host-side
    plain floats; `state()` and `from_state()` carry it through a checkpoint. target None (or 0) means fixed.
    """

    def __init__(self, init_coef, target=None, horizon=10000):
        self.value = float(init_coef)
        self.target = float(target) if target else None
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        """Move the coefficient after n_steps samples that showed current_kl; returns the new value."""
        if self.target is not None:
            error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state(self):
        """Everything needed to resume, as plain floats for a JSON checkpoint item (target 0.0: fixed)."""
        return {"value": self.value, "target": self.target or 0.0, "horizon": self.horizon}

    @classmethod
    def from_state(cls, state):
        """The controller that `state()` described, in the same place of its adaptation."""
        return cls(state["value"], state["target"], state["horizon"])

    def restore(self, state) -> None:
        """Back to where `state()` was taken (a resumed run)."""
        self.__init__(state["value"], state["target"], state["horizon"])
