"""gptjax.rl.losses against hand-computed numbers, direct numpy recursions, Monte Carlo, and trl 1.16.

The trl parity tests call trl's own code where it is callable: trainer methods are called unbound on a namespace
that holds only the attributes they read, with a stand-in model that returns the log-probs or rewards under test.
They are `slow` because importing trl (transformers, accelerate) takes about 12 s here.
"""

import collections
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.rl import losses


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def right_padded_mask(lengths, t):
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


# ------------------------------------------------------------------------------------------------ masked statistics


def test_masked_mean_var_whiten_ignore_padding():
    x = np.array([[1.0, 2.0, 3.0, np.nan], [4.0, -np.inf, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
    real = np.array([1.0, 2.0, 3.0, 4.0])
    assert float(losses.masked_mean(x, mask)) == pytest.approx(real.mean())
    np.testing.assert_allclose(losses.masked_mean(x, mask, axis=1), [2.0, 4.0])
    assert float(losses.masked_mean(x, np.zeros_like(mask))) == 0.0  # nothing counts: 0, not NaN
    assert float(losses.masked_var(x, mask)) == pytest.approx(real.var(ddof=1))
    assert float(losses.masked_var(x, mask, unbiased=False)) == pytest.approx(real.var())
    w = np.asarray(losses.whiten(x, mask))
    assert np.isfinite(w).all() and (w[~mask] == 0).all()
    np.testing.assert_allclose(w[mask], (real - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8), rtol=1e-5)
    w_unshifted = np.asarray(losses.whiten(x, mask, shift_mean=False))
    np.testing.assert_allclose(w_unshifted[mask], w[mask] + real.mean(), rtol=1e-5)


def test_explained_variance():
    rng = np.random.default_rng(0)
    returns = rng.normal(size=(3, 5)).astype(np.float32)
    mask = right_padded_mask([5, 3, 1], 5)
    assert float(losses.explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    mean = float(losses.masked_mean(returns, mask))
    assert float(losses.explained_variance(np.full_like(returns, mean), returns, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.explained_variance(returns, np.ones_like(returns), mask)) == 0.0  # constant returns


# ------------------------------------------------------------------------------------------------ token statistics


def test_token_logprobs_with_temperature_equals_numpy_log_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(2, 3, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(2, 3))
    for temperature in (0.0, 1.0, 0.7, 2.5):
        z = logits.astype(np.float64) / (temperature or 1.0)
        z = z - z.max(-1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
        want = np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
        np.testing.assert_allclose(losses.token_logprobs(logits, targets, temperature), want, rtol=1e-5, atol=1e-5)
    assert losses.token_logprobs(jnp.asarray(logits, jnp.bfloat16), targets).dtype == jnp.float32
    jitted = jax.jit(losses.token_logprobs)(logits, targets, 0.7)  # temperature may be traced
    np.testing.assert_allclose(jitted, losses.token_logprobs(logits, targets, 0.7), rtol=1e-6)


def test_entropy_equals_numpy_and_handles_filtered_tokens():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(losses.entropy(logits), -(p * np.log(p)).sum(-1), rtol=1e-5)
    assert float(losses.entropy(np.zeros((1, 1, 8)))[0, 0]) == pytest.approx(math.log(8))
    filtered = np.array([[[0.0, 0.0, -np.inf, -np.inf]]], np.float32)  # top-k = 2 leaves a fair coin
    assert float(losses.entropy(filtered)[0, 0]) == pytest.approx(math.log(2))
    grad = jax.grad(lambda z: losses.entropy(z).sum())(jnp.asarray(filtered))
    assert np.isfinite(np.asarray(grad)).all()


# ------------------------------------------------------------------------------------------------ reward model


def test_ranking_loss_by_hand():
    # Prompt 0: response 2 is invalid; it is ranked best with a terrible reward, so counting it would show.
    # Prompt 1: responses 1 and 2 tie (rank 1), so they make no pair.
    rewards = np.array([[1.0, 0.5, -30.0], [0.2, 0.9, 0.0]], np.float32)
    ranks = np.array([[1, 2, 0], [0, 1, 1]])
    valid = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    # The pairs (better, worse): (0: r0, r1) diff 0.5 right; (1: r0, r1) diff -0.7 wrong; (1: r0, r2) diff 0.2 right.
    want_loss = -(log_sigmoid(0.5) + log_sigmoid(-0.7) + log_sigmoid(0.2)) / 3
    loss, accuracy, num_pairs = jax.jit(losses.ranking_loss)(rewards, ranks, valid)
    assert float(loss) == pytest.approx(want_loss, rel=1e-6)
    assert float(accuracy) == pytest.approx(2 / 3)
    assert int(num_pairs) == 3
    # The gradient pushes each better response up and each worse one down, and leaves the invalid one alone.
    grad = np.asarray(jax.grad(lambda r: losses.ranking_loss(r, ranks, valid)[0])(jnp.asarray(rewards)))
    assert grad[0, 0] < 0 < grad[0, 1] and grad[0, 2] == 0 and grad[1, 0] < 0
    # Stable far from 0: a huge margin costs nothing, a huge wrong margin costs exactly the margin.
    big = np.array([[1e4, -1e4]], np.float32)
    assert float(losses.ranking_loss(big, np.array([[0, 1]]), np.ones((1, 2)))[0]) == 0.0
    assert float(losses.ranking_loss(big, np.array([[1, 0]]), np.ones((1, 2)))[0]) == pytest.approx(2e4)


# ------------------------------------------------------------------------------------------------ PPO


def gae_numpy(rewards, values, lengths, gamma, lam):
    """The textbook backward recursion, one sequence at a time; the value after the last token is 0."""
    adv = np.zeros(rewards.shape, np.float64)
    for b, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1] if t + 1 < n else 0.0
            last = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * last
            adv[b, t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0), (1.0, 0.9)])
def test_gae_equals_backward_recursion(gamma, lam):
    rng = np.random.default_rng(3)
    lengths = [7, 4, 1, 0, 6]
    mask = right_padded_mask(lengths, 7)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    want = gae_numpy(rewards, values, lengths, gamma, lam)
    rewards[mask == 0], values[mask == 0] = 1e3, np.nan  # padding holds garbage
    adv, ret = jax.jit(losses.gae)(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, np.where(mask > 0, want + np.nan_to_num(values), 0.0), rtol=1e-5, atol=1e-5)
    assert (np.asarray(adv)[mask == 0] == 0).all() and (np.asarray(ret)[mask == 0] == 0).all()


def ppo_inputs(ratio, advantages):
    ratio, advantages = np.asarray(ratio, np.float32)[None], np.asarray(advantages, np.float32)[None]
    old_logp = np.log(np.full(ratio.shape, 0.3, np.float32))
    return jnp.asarray(old_logp + np.log(ratio)), old_logp, advantages


def test_ppo_without_clipping_is_the_policy_gradient():
    rng = np.random.default_rng(4)
    mask = right_padded_mask([6, 3], 6)
    old_logp = np.log(rng.uniform(0.05, 0.9, size=mask.shape)).astype(np.float32)
    advantages = rng.normal(size=mask.shape).astype(np.float32)
    for log_ratio_scale, clip_eps in ((0.05, 0.2), (1.0, 1e9)):  # ratios inside the band; a band too wide to reach
        logp = jnp.asarray(old_logp + rng.uniform(-log_ratio_scale, log_ratio_scale, size=mask.shape), jnp.float32)
        logp = logp.at[1, 4].set(-jnp.inf)  # a padded position may hold anything
        (loss, stats), grad = jax.value_and_grad(losses.ppo_policy_loss, has_aux=True)(
            logp, old_logp, advantages, mask, clip_eps
        )
        ratio = np.where(mask > 0, np.exp(np.asarray(logp) - old_logp), 0.0)
        n = mask.sum()
        assert float(loss) == pytest.approx(-(advantages * ratio * mask).sum() / n, rel=1e-5)
        np.testing.assert_allclose(grad, -advantages * ratio * mask / n, rtol=1e-5, atol=1e-7)
        assert float(stats["clip_frac"]) == 0.0
        kl = 0.5 * (np.asarray(logp) - old_logp) ** 2
        assert float(stats["approx_kl"]) == pytest.approx(np.where(mask > 0, kl, 0).sum() / n, rel=1e-5)


def test_ppo_clipping_bounds_the_ratio():
    eps = 0.2
    # A > 0 with ratio above 1 + eps, A < 0 with ratio below 1 - eps: clipped, no gradient.
    # A > 0 below the band, A < 0 above it: the pessimistic bound keeps the unclipped term and its gradient.
    logp, old_logp, advantages = ppo_inputs([1.5, 0.5, 0.5, 1.5, 1.1], [2.0, -1.0, 2.0, -1.0, 1.0])
    mask = np.ones((1, 5), np.float32)
    (loss, stats), grad = jax.value_and_grad(losses.ppo_policy_loss, has_aux=True)(
        logp, old_logp, advantages, mask, eps
    )
    grad = np.asarray(grad)[0]
    assert grad[0] == 0 and grad[1] == 0
    np.testing.assert_allclose(grad[2:], [-2.0 * 0.5 / 5, 1.0 * 1.5 / 5, -1.0 * 1.1 / 5], rtol=1e-5)
    assert float(stats["clip_frac"]) == pytest.approx(2 / 5)
    want = (-2.0 * 1.2 + 1.0 * 0.8 - 2.0 * 0.5 + 1.0 * 1.5 - 1.0 * 1.1) / 5
    assert float(loss) == pytest.approx(want, rel=1e-5)
    # Pushing the clipped ratios further changes nothing: the objective is flat past the band.
    further, _, _ = ppo_inputs([3.0, 0.1, 0.5, 1.5, 1.1], [2.0, -1.0, 2.0, -1.0, 1.0])
    assert float(losses.ppo_policy_loss(further, old_logp, advantages, mask, eps)[0]) == pytest.approx(float(loss))


def test_value_loss_clipping():
    v, old, ret = np.array([[1.5, 0.3, -2.0]]), np.array([[1.0, 0.0, 0.0]]), np.array([[2.0, 1.0, 0.0]])
    mask = np.array([[1, 1, 0]])
    loss, stats = losses.value_loss(v, old, ret, mask, 0.0)
    assert float(loss) == pytest.approx(0.5 * (0.25 + 0.49) / 2)
    assert float(stats["value_clip_frac"]) == 0.0
    # eps 0.2: token 0's value is clipped to 1.2 (error 0.64 > 0.25) and token 1's to 0.2 (0.64 > 0.49).
    loss, stats = losses.value_loss(v, old, ret, mask, 0.2)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.64) / 2)
    assert float(stats["value_clip_frac"]) == 1.0
    loss, _ = losses.value_loss(v, old, ret, mask, 10.0)  # a band too wide to reach
    assert float(loss) == pytest.approx(0.5 * (0.25 + 0.49) / 2)


# ------------------------------------------------------------------------------------------------ KL


def test_kl_estimators():
    rng = np.random.default_rng(5)
    logp = rng.normal(size=(3, 4)).astype(np.float32)
    for kind in ("k1", "k2", "k3", "abs"):
        assert (np.asarray(losses.kl_penalty(logp, logp, kind)) == 0).all(), kind
    # k3 >= 0 for any pair, including differences so small that exp(x) - x - 1 rounds below 0 in float32.
    diffs = np.concatenate([rng.normal(scale=s, size=1000) for s in (1e-9, 1e-6, 1e-3, 1.0, 10.0)])
    ref = rng.normal(size=diffs.shape).astype(np.float32)
    assert (np.asarray(losses.kl_penalty((ref + diffs).astype(np.float32), ref, "k3")) >= 0).all()
    with pytest.raises(ValueError, match="k4"):
        losses.kl_penalty(logp, logp, "k4")
    # k1 and k3 are unbiased: over tokens sampled from p they average to KL(p || q).
    p, q = np.array([0.5, 0.2, 0.2, 0.1]), np.array([0.25, 0.25, 0.4, 0.1])
    true_kl = float((p * np.log(p / q)).sum())
    tokens = rng.choice(4, size=200_000, p=p)
    logp_s, logq_s = np.log(p)[tokens].astype(np.float32), np.log(q)[tokens].astype(np.float32)
    for kind in ("k1", "k3"):
        per_token = np.asarray(losses.kl_penalty(logp_s, logq_s, kind), np.float64)
        tolerance = 5 * per_token.std() / math.sqrt(len(tokens))
        assert abs(per_token.mean() - true_kl) < tolerance, (kind, per_token.mean(), true_kl)
    # k1's gradient is 1 per token; the reference is frozen.
    g_logp, g_ref = jax.grad(lambda a, b: losses.kl_penalty(a, b).sum(), argnums=(0, 1))(logp, logp)
    assert (np.asarray(g_logp) == 1).all() and (np.asarray(g_ref) == 0).all()


# ------------------------------------------------------------------------------------------------ DPO, GRPO


def test_dpo_loss_is_log2_at_initialisation():
    rng = np.random.default_rng(6)
    chosen, rejected = rng.normal(-40, 10, size=8), rng.normal(-40, 10, size=8)
    for beta in (0.01, 0.1, 1.0, 10.0):
        for label_smoothing in (0.0, 0.1, 0.3):
            loss, stats = losses.dpo_loss(chosen, rejected, chosen, rejected, beta, label_smoothing)
            assert float(loss) == pytest.approx(math.log(2), rel=1e-6), (beta, label_smoothing)
            assert float(stats["margin"]) == 0.0 and float(stats["reward_accuracy"]) == 0.0
    # Raising the chosen log-prob lowers the loss; the reference gets no gradient.
    grads = jax.grad(lambda *a: losses.dpo_loss(*a, 0.1)[0], argnums=(0, 2))(chosen, rejected, chosen, rejected)
    assert (np.asarray(grads[0]) < 0).all() and (np.asarray(grads[1]) == 0).all()


def test_group_advantages():
    rng = np.random.default_rng(7)
    rewards = rng.normal(size=12).astype(np.float32)
    rewards[4:8] = 1.0  # a group where every response scored the same: advantage 0, not NaN
    for group_size in (2, 3, 4, 6):
        adv = np.asarray(losses.group_advantages(rewards, group_size)).reshape(-1, group_size)
        np.testing.assert_allclose(adv.mean(1), 0, atol=1e-6)
        grouped = rewards.reshape(-1, group_size)
        want = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, ddof=1, keepdims=True) + 1e-4)
        np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    assert (np.asarray(losses.group_advantages(rewards, 4))[4:8] == 0).all()
    unscaled = np.asarray(losses.group_advantages(rewards, 3, scale=False)).reshape(-1, 3)
    np.testing.assert_allclose(unscaled, rewards.reshape(-1, 3) - rewards.reshape(-1, 3).mean(1, keepdims=True),
                               atol=1e-6)
    assert (np.asarray(losses.group_advantages(rewards, 1)) == 0).all()
    with pytest.raises(ValueError, match="divide"):
        losses.group_advantages(rewards, 5)


def test_leave_one_out_advantages():
    """RLOO's baseline for a response is the mean reward of the other responses to its prompt (by hand, and as
    G / (G - 1) times the deviation from the group mean)."""
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=12).astype(np.float32)
    for group_size in (2, 3, 4, 6):
        adv = np.asarray(losses.leave_one_out_advantages(rewards, group_size)).reshape(-1, group_size)
        grouped = rewards.reshape(-1, group_size)
        by_hand = [[grouped[p, i] - np.mean(np.delete(grouped[p], i)) for i in range(group_size)]
                   for p in range(len(grouped))]
        np.testing.assert_allclose(adv, by_hand, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(adv, group_size / (group_size - 1) * (grouped - grouped.mean(1, keepdims=True)),
                                   rtol=1e-5, atol=1e-6)
    for bad in (1, 5):
        with pytest.raises(ValueError, match="at least 2 and divide"):
            losses.leave_one_out_advantages(rewards, bad)


def test_rloo_advantages_put_the_sequence_kl_in_the_reward():
    """RLOO (Ahmadian et al. 2024, as trl's RLOOTrainer computes it): reward - beta * sum over the response of
    (log p_old - log p_ref), then the leave-one-out baseline; every token of a response gets its advantage."""
    from gptjax.rl import rollouts

    rng = np.random.default_rng(5)
    B, N, G, beta = 8, 5, 4, 0.3
    lengths = rng.integers(1, N + 1, B)
    mask = (np.arange(N)[None] < lengths[:, None]).astype(np.float32)
    roll = {"old_logp": rng.normal(size=(B, N)).astype(np.float32) * mask,
            "ref_logp": rng.normal(size=(B, N)).astype(np.float32) * mask,
            "mask": mask, "reward": rng.normal(size=B).astype(np.float32)}
    adv = np.asarray(rollouts.rloo_advantages({k: jnp.asarray(v) for k, v in roll.items()}, G, beta)["advantages"])
    shaped = roll["reward"] - beta * ((roll["old_logp"] - roll["ref_logp"]) * mask).sum(1)
    grouped = shaped.reshape(-1, G)
    want = (grouped - (grouped.sum(1, keepdims=True) - grouped) / (G - 1)).reshape(B)
    np.testing.assert_allclose(adv, want[:, None] * mask, rtol=1e-5, atol=1e-5)


def test_kl_controller():
    fixed = losses.KLController(0.1)
    for kl in (0.0, 5.0, 100.0):
        assert fixed.update(kl, 256) == 0.1
    adaptive = losses.KLController(0.1, target=6.0, horizon=10000)
    assert adaptive.update(12.0, 500) == pytest.approx(0.1 * (1 + 0.2 * 500 / 10000))  # error clipped to +0.2
    assert adaptive.update(6.6, 500) == pytest.approx(0.1 * 1.01 * (1 + 0.1 * 500 / 10000))
    before = adaptive.value
    assert adaptive.update(1.0, 500) < before  # KL under the target: the penalty relaxes
    assert adaptive.value == pytest.approx(before * (1 - 0.2 * 500 / 10000))  # error clipped to -0.2
    assert adaptive.update(jnp.float32(6.0), 500) == adaptive.value  # on target: no change
    state = adaptive.state()
    assert all(type(v) is float for v in state.values())
    restored = losses.KLController.from_state(state)
    assert restored.state() == state and restored.update(9.0, 100) == adaptive.update(9.0, 100)
    fixed_again = losses.KLController.from_state(fixed.state())
    assert fixed_again.update(100.0, 256) == 0.1


# ------------------------------------------------------------------------------------------------ parity with trl 1.16


def trl_self(**attrs):
    """A stand-in for a trl trainer: only what the method under test reads, in eval mode, on one process."""
    identity = types.SimpleNamespace(
        device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x
    )
    base = {
        "model": types.SimpleNamespace(training=False),
        "accelerator": identity,
        "aux_loss_enabled": False,
        "_metrics": collections.defaultdict(lambda: collections.defaultdict(list)),
        "_total_train_tokens": 0,
        "_tp_size": 1,
    }
    return types.SimpleNamespace(**{**base, **attrs})


@pytest.mark.slow
def test_dpo_matches_trl():
    pytest.importorskip("trl")
    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    def trl_dpo(pc, pr, rc, rr, beta, loss_type, label_smoothing):
        """DPOTrainer._compute_loss with precomputed reference log-probs and a one-token completion whose
        log-prob is the sequence log-prob (trl sums over the completion)."""
        log_probs = torch.tensor(np.concatenate([pc, pr]), dtype=torch.float32)[:, None]
        n = len(log_probs)
        outputs = types.SimpleNamespace(log_probs=log_probs, entropy=torch.zeros(n, 1),
                                        mean_logits=torch.zeros(n, 1), is_top1=torch.zeros(n, 1, dtype=torch.bool))
        inputs = {"input_ids": torch.zeros(n, 2, dtype=torch.long), "attention_mask": torch.ones(n, 2),
                  "completion_mask": torch.tensor([[0, 1]] * n),
                  "ref_chosen_logps": torch.tensor(rc, dtype=torch.float32),
                  "ref_rejected_logps": torch.tensor(rr, dtype=torch.float32)}
        self = trl_self(ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                        use_weighting=False)
        loss = DPOTrainer._compute_loss(self, lambda **_: outputs, inputs, return_outputs=False)
        return float(loss), {k: v[-1] for k, v in self._metrics["eval"].items()}

    rng = np.random.default_rng(8)
    pc, pr, rc, rr = (rng.normal(-30, 3, size=16).astype(np.float32) for _ in range(4))
    beta = 0.1
    loss, stats = losses.dpo_loss(pc, pr, rc, rr, beta)
    trl_loss, trl_stats = trl_dpo(pc, pr, rc, rr, beta, "sigmoid", 0.0)
    assert float(loss) == pytest.approx(trl_loss, rel=1e-5)
    for ours, theirs in [("reward_accuracy", "rewards/accuracies"), ("chosen_reward", "rewards/chosen"),
                         ("rejected_reward", "rewards/rejected"), ("margin", "rewards/margins")]:
        assert float(stats[ours]) == pytest.approx(trl_stats[theirs], rel=1e-5, abs=1e-6), ours
    # trl 1.16's "sigmoid" loss no longer reads label_smoothing; its conservative-DPO expression
    # -(1 - ls) logsigmoid(beta d) - ls logsigmoid(-beta d) lives in the "aot" branch, which sorts the policy and
    # the reference log-ratios separately over the batch. On a batch already sorted in both, that is plain cDPO.
    order = np.argsort(pc - pr)
    pc, pr = pc[order], pr[order]
    rr = rc - np.sort(rng.normal(0, 3, size=16)).astype(np.float32)
    for label_smoothing in (0.1, 0.3):
        loss, _ = losses.dpo_loss(pc, pr, rc, rr, beta, label_smoothing)
        assert float(loss) == pytest.approx(trl_dpo(pc, pr, rc, rr, beta, "aot", label_smoothing)[0], rel=1e-5)


@pytest.mark.slow
def test_ranking_loss_matches_trl_reward_trainer():
    pytest.importorskip("trl")
    import torch
    from trl.trainer.reward_trainer import RewardTrainer

    rng = np.random.default_rng(9)
    rewards = rng.normal(size=(5, 4)).astype(np.float32)
    ranks = rng.integers(0, 3, size=(5, 4))  # ties included
    valid = rng.random((5, 4)) > 0.2
    # Every (better, worse) pair as its own (chosen, rejected) row, which is what RewardTrainer trains on.
    pairs = [(rewards[b, i], rewards[b, j]) for b in range(5) for i in range(4) for j in range(4)
             if valid[b, i] and valid[b, j] and ranks[b, i] < ranks[b, j]]
    chosen, rejected = map(np.array, zip(*pairs))
    outputs = types.SimpleNamespace(logits=torch.tensor(np.concatenate([chosen, rejected]))[:, None])
    self = trl_self(args=types.SimpleNamespace(center_rewards_coefficient=None))
    inputs = {"input_ids": torch.zeros(2 * len(pairs), 3, dtype=torch.long)}
    trl_loss = RewardTrainer.compute_loss(self, lambda **_: outputs, inputs)
    loss, accuracy, num_pairs = losses.ranking_loss(rewards, ranks, valid)
    assert int(num_pairs) == len(pairs)
    assert float(loss) == pytest.approx(float(trl_loss), rel=1e-5)
    assert float(accuracy) == pytest.approx(self._metrics["eval"]["accuracy"][-1], rel=1e-6)


@pytest.mark.slow
def test_ppo_loss_and_k3_match_trl_grpo():
    pytest.importorskip("trl")
    import torch
    from trl.trainer.grpo_trainer import GRPOTrainer

    rng = np.random.default_rng(10)
    mask = right_padded_mask([6, 4, 2], 6)
    old = np.log(rng.uniform(0.05, 0.9, size=mask.shape)).astype(np.float32)
    logp = (old + rng.normal(scale=0.3, size=mask.shape)).astype(np.float32)  # many ratios outside the band
    ref = (old + rng.normal(scale=0.5, size=mask.shape)).astype(np.float32)
    advantages = rng.normal(size=mask.shape).astype(np.float32)

    def trl_grpo(advantages, beta):
        """GRPOTrainer._compute_loss with loss_type "bnpo" (a token-level masked mean, PPO's aggregation) and the
        policy log-probs as a leaf tensor; returns the loss, its gradient per token and the logged metrics."""
        logp_t = torch.tensor(logp, requires_grad=True)
        self = trl_self(
            _get_per_token_logps_and_entropies=lambda *a, **k: (logp_t, torch.zeros_like(logp_t), None),
            top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
            beta=beta, loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.2, use_vllm=False,
            _entropy_bonus_enabled=False, args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None))
        m = torch.tensor(mask)
        inputs = {"prompt_ids": torch.zeros(3, 1, dtype=torch.long), "prompt_mask": torch.ones(3, 1),
                  "completion_ids": torch.zeros(3, 6, dtype=torch.long), "completion_mask": m,
                  "advantages": torch.tensor(advantages), "old_per_token_logps": torch.tensor(old),
                  "ref_per_token_logps": torch.tensor(ref)}
        loss = GRPOTrainer._compute_loss(self, None, inputs)
        loss.backward()
        return float(loss.detach()), logp_t.grad.numpy(), {k: v[-1] for k, v in self._metrics["eval"].items()}

    # PPO's clipped surrogate: loss, gradient per token and clip fraction.
    trl_loss, trl_grad, trl_stats = trl_grpo(advantages, beta=0.0)
    (loss, stats), grad = jax.value_and_grad(losses.ppo_policy_loss, has_aux=True)(logp, old, advantages, mask, 0.2)
    assert 0.1 < float(stats["clip_frac"]) < 0.9  # both branches exercised
    assert float(loss) == pytest.approx(trl_loss, rel=1e-5)
    np.testing.assert_allclose(grad, trl_grad, rtol=1e-5, atol=1e-7)
    assert float(stats["clip_frac"]) == pytest.approx(trl_stats["clip_ratio/region_mean"], rel=1e-6)
    # k3: with zero advantages the loss is beta * masked_mean(k3); its gradient checks every token's k3.
    beta = 0.04
    trl_loss, trl_grad, trl_stats = trl_grpo(np.zeros_like(advantages), beta)

    def kl_loss(logp):
        return beta * losses.masked_mean(losses.kl_penalty(logp, ref, "k3"), mask)

    loss, grad = jax.value_and_grad(kl_loss)(logp)
    assert float(loss) == pytest.approx(trl_loss, rel=1e-5)
    np.testing.assert_allclose(grad, trl_grad, rtol=1e-5, atol=1e-8)
    assert float(loss) / beta == pytest.approx(trl_stats["kl"], rel=1e-5)
    # k1 is inline in trl/trainer/rloo_trainer.py, RLOOTrainer._generate_and_score_completions:
    #     per_token_kl = old_per_token_logps - ref_per_token_logps
    old_per_token_logps, ref_per_token_logps = torch.tensor(logp), torch.tensor(ref)
    per_token_kl = old_per_token_logps - ref_per_token_logps
    np.testing.assert_allclose(losses.kl_penalty(logp, ref, "k1"), per_token_kl.numpy(), rtol=1e-6)


@pytest.mark.slow
def test_group_advantages_match_trl_grpo():
    pytest.importorskip("trl")
    import torch
    from trl.trainer.utils import nanstd

    rng = np.random.default_rng(11)
    num_generations = 4
    rewards_np = rng.normal(size=24).astype(np.float32)
    rewards_np[8:12] = 0.5  # a zero-std group
    for scale_rewards in ("group", "none"):
        # Verbatim from trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions, the
        # multi_objective_aggregation == "sum_then_normalize" branch (one reward function, no NaN rewards).
        rewards = torch.tensor(rewards_np)
        mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
        mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        advantages = rewards - mean_grouped_rewards
        if scale_rewards != "none":
            advantages = advantages / (std_rewards + 1e-4)
        ours = losses.group_advantages(rewards_np, num_generations, scale=scale_rewards != "none")
        np.testing.assert_allclose(ours, advantages.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_token_logprobs_and_entropy_match_trl():
    pytest.importorskip("trl")
    import torch
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    rng = np.random.default_rng(12)
    logits = rng.normal(scale=2.0, size=(3, 5, 17)).astype(np.float32)
    targets = rng.integers(0, 17, size=(3, 5))
    for temperature in (1.0, 0.7, 1.6):
        want = selective_log_softmax(torch.tensor(logits), torch.tensor(targets), temperature=temperature)
        np.testing.assert_allclose(losses.token_logprobs(logits, targets, temperature), want.numpy(), rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(losses.entropy(logits), entropy_from_logits(torch.tensor(logits)).numpy(), rtol=1e-5)
