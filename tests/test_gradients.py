"""The hand-written backward passes in gptjax.kernels.cpu_fused (LayerNorm, attention, cross-entropy; written for
speed on XLA:CPU), and the package's own reference (kernels.reference), equal autodiff through the plain
implementations written here, with masks, dropout and bf16."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import model
from gptjax.kernels import cpu_fused, reference


def ref_layer_norm(x, scale, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


def ref_attention(q, k, v, mask, keep):
    logits = jnp.einsum("bthk,bshk->bhts", q, k).astype(jnp.float32) / math.sqrt(q.shape[-1])
    logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if keep is not None:
        probs = probs * keep
    return jnp.einsum("bhts,bshk->bthk", probs.astype(q.dtype), v)


def ref_nll(logits, targets):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]


def rand(shape, seed, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def assert_grads_close(f, g, args, argnums, rtol, atol):
    cot = rand(jax.eval_shape(f, *args).shape, 99)
    # Jitted: one program each instead of dozens of eagerly dispatched ops (the tier's time is mostly compiling).
    ga = jax.jit(jax.grad(lambda *a: (f(*a) * cot).sum(), argnums))(*args)
    gb = jax.jit(jax.grad(lambda *a: (g(*a) * cot).sum(), argnums))(*args)
    np.testing.assert_allclose(jax.jit(f)(*args), jax.jit(g)(*args), rtol=rtol, atol=atol)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", [cpu_fused, reference])
def test_layer_norm_gradients(impl):
    x, scale, bias = rand((3, 5, 16), 0) * 3 + 1, rand((16,), 1), rand((16,), 2)
    assert_grads_close(lambda *a: impl.layer_norm(*a, 1e-5, jnp.float32),
                       lambda *a: ref_layer_norm(*a, 1e-5), (x, scale, bias), (0, 1, 2), 1e-5, 1e-5)


def attention_of(impl):
    if impl is reference:
        return lambda *a: reference.attention(*a)[0]
    return cpu_fused.attention


@pytest.mark.parametrize("impl", [cpu_fused, reference])
@pytest.mark.parametrize("padded,dropout", [(False, False), (True, False), (False, True), (True, True)])
def test_attention_gradients(impl, padded, dropout):
    B, T, H, K = 2, 7, 3, 8
    q, k, v = rand((B, T, H, K), 0), rand((B, T, H, K), 1), rand((B, T, H, K), 2)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
    if padded:  # left padding: the first two keys of row 0 are masked everywhere
        mask = mask.at[0, :, :2].set(False)
    keep = None
    if dropout:
        keep = jax.random.bernoulli(jax.random.key(5), 0.8, (B, H, T, T)).astype(jnp.float32) / 0.8
    f = lambda q, k, v: attention_of(impl)(q, k, v, mask, keep)  # noqa: E731
    g = lambda q, k, v: ref_attention(q, k, v, mask, keep)  # noqa: E731
    if padded:  # rows with no visible key have no defined output; compare the others
        f0, g0 = f, g
        f = lambda *a: f0(*a)[:, 2:]  # noqa: E731
        g = lambda *a: g0(*a)[:, 2:]  # noqa: E731
    assert_grads_close(f, g, (q, k, v), (0, 1, 2), 1e-5, 1e-5)


@pytest.mark.parametrize("impl", [cpu_fused, reference])
def test_attention_gradients_bf16(impl):
    q, k, v = (rand((2, 6, 2, 8), i).astype(jnp.bfloat16) for i in range(3))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((6, 6), bool)), (2, 6, 6))
    assert_grads_close(lambda *a: attention_of(impl)(*a, mask, None), lambda *a: ref_attention(*a, mask, None),
                       (q, k, v), (0, 1, 2), 5e-2, 5e-2)


@pytest.mark.parametrize("impl", [cpu_fused, reference])
def test_cross_entropy_gradients(impl):
    logits, targets = rand((2, 5, 11), 0) * 4, jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    assert_grads_close(lambda x: impl.token_nll(x, targets), lambda x: ref_nll(x, targets), (logits,), (0,),
                       1e-5, 1e-6)
    weights = jnp.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], jnp.float32)
    loss, total = model.cross_entropy(logits, targets, weights, impl=impl.__name__.rsplit(".", 1)[-1])
    assert float(total) == 7.0
    np.testing.assert_allclose(loss, (ref_nll(logits, targets) * weights).sum() / 7.0, rtol=1e-6)
