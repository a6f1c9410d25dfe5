"""The plain definitions: attention, LayerNorm and the token loss, written once, differentiated by autodiff.

This is what research edits (ALiBi, soft-capping, QK-norm, sigmoid attention: change `attention_heads` and nothing
else) and what every fast implementation is tested against. Training, prefill and one-token decoding all call it.
"""

import math

import jax
import jax.numpy as jnp

NEG_INF = float(jnp.finfo(jnp.float32).min)  # a finite floor: fully masked rows (left padding) stay finite


def attention_heads(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, mask_BxTxS, keep_BxHxTxS=None):
    """softmax(q k^T / sqrt(K), masked) v on heads-major arrays; `keep` is the dropout multiplier (0 or
    1 / (1 - rate)) or None. Returns (out_BxHxTxK, probs_BxHxTxS), the probabilities before dropout."""
    dtype = q_BxHxTxK.dtype
    logits_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, preferred_element_type=jnp.float32)
    logits_BxHxTxS = logits_BxHxTxS * (1 / math.sqrt(q_BxHxTxK.shape[-1]))
    logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, NEG_INF)
    probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1)
    weights_BxHxTxS = probs_BxHxTxS if keep_BxHxTxS is None else probs_BxHxTxS * keep_BxHxTxS
    out_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", weights_BxHxTxS.astype(dtype), v_BxHxSxK)
    return out_BxHxTxK, probs_BxHxTxS


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS=None):
    """`attention_heads` on (batch, length, heads, head_dim) arrays: (out_BxTxHxK, probs_BxHxTxS)."""
    heads = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    out_BxHxTxK, probs_BxHxTxS = attention_heads(heads(q_BxTxHxK), heads(k_BxSxHxK), heads(v_BxSxHxK), mask_BxTxS,
                                                 keep_BxHxTxS)
    return heads(out_BxHxTxK), probs_BxHxTxS


def layer_norm(x, scale, bias, eps: float, dtype):
    """LayerNorm over the last axis, computed in float32, returned in `dtype`."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(dtype)


def token_nll(logits_BxTxV, targets_BxT):
    """-log softmax(logits)[target] per position, in float32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    return lse_BxT - jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
