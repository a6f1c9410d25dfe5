"""Hand-written backward passes for XLA:CPU: LayerNorm, attention and the token loss (custom VJPs).

They compute what `reference.py` defines, and tests hold them equal to it (losses and gradients, fp32, 1e-6
relative). On XLA:CPU they make a training step 1.3-1.4x faster than autodiff of the reference
(benchmarks/README.md): autodiff's LayerNorm backward left a chain of elementwise ops along the residual stream
that XLA fused, and recomputed transposed, into the weight-gradient matmuls of every later layer; the attention
backward here takes the softmax term from rowsum(dout * out); the loss backward is softmax - one_hot in one pass.
The price: attention keeps its (B, H, T, S) probabilities as residuals, so this path is for CPUs, and a change
to the attention math must be made in `reference.py` and run with `model.attention_impl=reference`.
"""

import functools
import math

import jax
import jax.numpy as jnp

from gptjax.kernels.reference import NEG_INF


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x, scale, bias, eps: float, dtype):
    return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
    x32 = x.astype(jnp.float32)
    centered = x32 - x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(centered).mean(-1, keepdims=True) + eps)
    xhat = centered * rstd
    y = (xhat * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)
    return y, (xhat, rstd, scale, jnp.zeros((0,), x.dtype))  # the empty array carries x's dtype


def _layer_norm_bwd(eps, dtype, res, dy):
    xhat, rstd, scale, x_dtype = res
    dy32 = dy.astype(jnp.float32)
    rows = tuple(range(dy.ndim - 1))
    g = dy32 * scale.astype(jnp.float32)
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx.astype(x_dtype.dtype), (dy32 * xhat).sum(rows).astype(scale.dtype), dy32.sum(rows).astype(scale.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS):
    """softmax(q k / sqrt(K), masked) v, computed heads-major; `keep` is the dropout multiplier or None."""
    return _attention_fwd(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS)[0]


def _attention_fwd(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS):
    dtype = q_BxTxHxK.dtype
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = (a.transpose(0, 2, 1, 3) for a in (q_BxTxHxK, k_BxSxHxK, v_BxSxHxK))
    logits_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, preferred_element_type=jnp.float32)
    logits_BxHxTxS = logits_BxHxTxS * (1 / math.sqrt(q_BxTxHxK.shape[-1]))
    logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, NEG_INF)
    probs_BxHxTxS = jnp.exp(logits_BxHxTxS - logits_BxHxTxS.max(-1, keepdims=True))
    probs_BxHxTxS = probs_BxHxTxS * (1 / probs_BxHxTxS.sum(-1, keepdims=True))
    dropped_BxHxTxS = probs_BxHxTxS if keep_BxHxTxS is None else probs_BxHxTxS * keep_BxHxTxS
    probs_BxHxTxS = probs_BxHxTxS.astype(dtype)
    out_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", dropped_BxHxTxS.astype(dtype), v_BxHxSxK)
    res = (q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, probs_BxHxTxS, keep_BxHxTxS, out_BxHxTxK, mask_BxTxS)
    return out_BxHxTxK.transpose(0, 2, 1, 3), res


def _attention_bwd(res, dout_BxTxHxK):
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, probs_BxHxTxS, keep_BxHxTxS, out_BxHxTxK, mask_BxTxS = res
    dtype, scale = q_BxHxTxK.dtype, 1 / math.sqrt(q_BxHxTxK.shape[-1])
    dout_BxHxTxK = dout_BxTxHxK.transpose(0, 2, 1, 3)
    dropped_BxHxTxS = probs_BxHxTxS if keep_BxHxTxS is None else (probs_BxHxTxS * keep_BxHxTxS).astype(dtype)
    dv_BxHxSxK = jnp.einsum("bhts,bhtk->bhsk", dropped_BxHxTxS, dout_BxHxTxK)
    dprobs_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", dout_BxHxTxK, v_BxHxSxK, preferred_element_type=jnp.float32)
    if keep_BxHxTxS is not None:
        dprobs_BxHxTxS = dprobs_BxHxTxS * keep_BxHxTxS
    # Softmax backward p * (dp - sum_s p dp), where sum_s p dp = dout . out (with dropout too).
    row_BxHxT = jnp.einsum("bhtk,bhtk->bht", dout_BxHxTxK.astype(jnp.float32), out_BxHxTxK.astype(jnp.float32))
    dlogits_BxHxTxS = probs_BxHxTxS.astype(jnp.float32) * (dprobs_BxHxTxS - row_BxHxT[..., None])
    # Masked logits get no gradient (rows that are all masked, left padding, have uniform probs).
    dlogits_BxHxTxS = jnp.where(mask_BxTxS[:, None], dlogits_BxHxTxS * scale, 0.0).astype(dtype)
    dq_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", dlogits_BxHxTxS, k_BxHxSxK)
    dk_BxHxSxK = jnp.einsum("bhts,bhtk->bhsk", dlogits_BxHxTxS, q_BxHxTxK)
    back = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    return back(dq_BxHxTxK), back(dk_BxHxSxK), back(dv_BxHxSxK), None, None


attention.defvjp(_attention_fwd, _attention_bwd)


@jax.custom_vjp
def token_nll(logits_BxTxV, targets_BxT):
    """-log softmax(logits)[target] per position; its backward is softmax - one_hot in one elementwise pass."""
    return _token_nll_fwd(logits_BxTxV, targets_BxT)[0]


def _token_nll_fwd(logits_BxTxV, targets_BxT):
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return lse_BxT - target_logit_BxT, (logits_BxTxV, lse_BxT, targets_BxT)


def _token_nll_bwd(res, g_BxT):
    logits_BxTxV, lse_BxT, targets_BxT = res
    one_hot_BxTxV = targets_BxT[..., None] == jnp.arange(logits_BxTxV.shape[-1])
    probs_BxTxV = jnp.exp(logits_BxTxV - lse_BxT[..., None])
    return (probs_BxTxV - one_hot_BxTxV) * g_BxT[..., None], None


token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)
