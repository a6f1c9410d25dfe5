"""Warmup-cosine schedule, weight-decay mask, clipping and gradient accumulation."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import optimizer
from gptjax.configs import get_config
from gptjax.convert.hf import stack_layers
from gptjax.model import GPT, ModelConfig


def nanogpt_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay=2000):
    """nanoGPT's get_lr, the reference."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_warmup_cosine_values():
    c = get_config().optim
    c.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000)
    sched = optimizer.schedule(c, train_steps=5000)
    assert float(sched(0)) > 0
    assert abs(float(sched(100)) - 1e-3) < 1e-9  # the peak at the end of warmup
    assert abs(float(sched(2000)) - 1e-4) < 1e-9  # the floor at decay_steps
    assert abs(float(sched(4000)) - 1e-4) < 1e-9  # and after
    assert all(float(sched(i)) < float(sched(i + 1)) for i in range(0, 100, 7))  # rising in warmup
    assert all(float(sched(i)) > float(sched(i + 1)) for i in range(100, 2000, 97))  # falling in decay
    for it in (50, 100, 500, 1050, 1999):  # nanoGPT's schedule, within its one-step warmup offset
        assert abs(float(sched(it)) - nanogpt_lr(it)) < 2e-5, it
    # decay_steps 0 means train.steps
    c.decay_steps = 0
    assert abs(float(optimizer.schedule(c, train_steps=300)(300)) - 1e-4) < 1e-9


@functools.cache
def _unrolled_params():
    """Built once (one compiled init) for every test here; no test changes them."""
    cfg = ModelConfig(vocab_size=50, num_layers=2, d_model=16, num_heads=2, max_len=8, tie_embeddings=False)
    return nn.unbox(jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


def _params(scan=False):
    params = _unrolled_params()
    return jax.tree.map(jnp.asarray, stack_layers(params, 2)) if scan else params


def test_weight_decay_mask():
    for scan in (False, True):
        mask = optimizer.decay_mask(_params(scan))
        flat = {"/".join(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)}
        decayed = sorted(k for k, v in flat.items() if v)
        layer = "h/block" if scan else "h_0"
        assert f"{layer}/attn/qkv_kernel" in decayed and f"{layer}/mlp/proj_kernel" in decayed
        assert "lm_head" in decayed
        for name in ("wte", "wpe", "ln_f/scale", f"{layer}/attn/qkv_bias", f"{layer}/ln_1/bias", f"{layer}/mlp/fc_bias"):
            assert not flat[name], name
    with_emb = optimizer.decay_mask(_params(), decay_embeddings=True)
    assert with_emb["wte"] and with_emb["wpe"]


def test_decay_applies_only_to_masked_params():
    c = get_config().optim
    c.update(lr=0.1, min_lr=0.1, warmup_steps=0, weight_decay=0.5, clip_norm=0.0)
    params = _params()
    tx = optimizer.make_optimizer(c, train_steps=10)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
    # With zero gradients only decoupled weight decay moves a parameter: -lr * wd * p.
    np.testing.assert_allclose(updates["h_0"]["mlp"]["fc_kernel"], -0.05 * params["h_0"]["mlp"]["fc_kernel"], rtol=1e-5)
    assert float(jnp.abs(updates["wte"]).max()) == 0.0
    assert float(jnp.abs(updates["h_0"]["ln_1"]["scale"]).max()) == 0.0


def test_clipping_happens_before_adam():
    """With a large eps Adam is not scale-invariant, so clipped and unclipped gradients differ."""
    c = get_config().optim
    c.update(lr=1.0, min_lr=1.0, warmup_steps=0, weight_decay=0.0, eps=1.0, clip_norm=1.0)
    p = {"a_kernel": jnp.zeros((4,))}
    big = {"a_kernel": jnp.array([30.0, -40.0, 0.0, 0.0])}  # global norm 50
    tx = optimizer.make_optimizer(c, 10)
    clipped, _ = tx.update(big, tx.init(p), p)
    c.clip_norm = 0.0
    tx = optimizer.make_optimizer(c, 10)
    by_hand, _ = tx.update(jax.tree.map(lambda g: g / 50.0, big), tx.init(p), p)
    unclipped, _ = tx.update(big, tx.init(p), p)
    np.testing.assert_allclose(clipped["a_kernel"], by_hand["a_kernel"], rtol=1e-5)
    assert float(jnp.abs(clipped["a_kernel"] - unclipped["a_kernel"]).max()) > 0.1
