"""Beam search with a length penalty, as in t5x `decoding.py` and the GPT-3 paper (width 4, alpha 0.6).

Each prompt keeps `W` alive beams and a pool of the `W` best finished sequences. A sequence finishes when it emits
the end-of-text token or reaches max_new_tokens; it is ranked by its summed log-probability divided by the GNMT
length penalty ((5 + n) / 6) ** alpha, where n counts the generated tokens (the end token included). The search
stops early once no alive beam can beat the worst sequence in a full pool, so it returns what running to
max_new_tokens would.
"""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax import decoding

NEG_INF = -jnp.inf


def length_penalty(n, alpha: float):
    return ((5.0 + n) / 6.0) ** alpha


class _Beams(NamedTuple):
    dec: decoding.Cached  # B * W rows, beam w of prompt b in row b * W + w
    alive_seq_BxWxN: jax.Array
    alive_lp_BxWxN: jax.Array  # per-token log-probabilities
    alive_score_BxW: jax.Array  # summed log-probability; -inf for empty slots
    fin_seq_BxWxN: jax.Array
    fin_lp_BxWxN: jax.Array
    fin_len_BxW: jax.Array
    fin_score_BxW: jax.Array  # length-normalised, best first; -inf for empty slots
    step: jax.Array


class Result(NamedTuple):
    """Per prompt, the W best finished sequences, best first."""

    seqs_BxWxN: jax.Array
    lengths_BxW: jax.Array
    scores_BxW: jax.Array  # summed log-probability / length penalty
    logprobs_BxWxN: jax.Array  # per token
    steps: jax.Array  # decoding steps run (fewer than N when the search stopped early)


def _gather(x_BxWx, idx_BxK):
    return jnp.take_along_axis(x_BxWx, idx_BxK.reshape(idx_BxK.shape + (1,) * (x_BxWx.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "beam_size", "alpha", "eos_id", "early_stop",
                                                "rules", "vocab"))
def search(model, params, tokens_BxP, mask_BxP, *, max_new_tokens, beam_size, alpha, eos_id, early_stop=True,
           rules=(), vocab=0) -> Result:
    B, P = tokens_BxP.shape
    N, W = max_new_tokens, beam_size
    with nn.logical_axis_rules(rules):
        dec = decoding.repeat_rows(decoding.prefill(model, params, tokens_BxP, mask_BxP, P + N), W)
        zeros = jnp.zeros((B, W, N), jnp.int32)
        first = jnp.where(jnp.arange(W) == 0, 0.0, NEG_INF)  # one live beam at first, so no duplicates
        beams = _Beams(dec, zeros, zeros.astype(jnp.float32), jnp.broadcast_to(first, (B, W)), zeros,
                       zeros.astype(jnp.float32), jnp.zeros((B, W), jnp.int32), jnp.full((B, W), NEG_INF),
                       jnp.zeros((), jnp.int32))

        def body(s: _Beams) -> _Beams:
            t = s.step
            logp_BxWxV = jax.nn.log_softmax(decoding.within_vocab(s.dec.logits_BxV, vocab)).reshape(B, W, -1)
            V = logp_BxWxV.shape[-1]
            flat_BxWV = (s.alive_score_BxW[..., None] + logp_BxWxV).reshape(B, W * V)
            score_Bx2W, idx_Bx2W = jax.lax.top_k(flat_BxWV, 2 * W)  # 2W: at most W of them can end here
            beam_Bx2W, token_Bx2W = idx_Bx2W // V, idx_Bx2W % V
            token_lp_Bx2W = jnp.take_along_axis(logp_BxWxV.reshape(B, W * V), idx_Bx2W, axis=1)
            seq_Bx2WxN = _gather(s.alive_seq_BxWxN, beam_Bx2W).at[:, :, t].set(token_Bx2W)
            lp_Bx2WxN = _gather(s.alive_lp_BxWxN, beam_Bx2W).at[:, :, t].set(token_lp_Bx2W)
            ends_Bx2W = token_Bx2W == eos_id if eos_id is not None else jnp.zeros_like(token_Bx2W, bool)

            # Sequences that end now (their end token, or the length limit) compete for the finished pool.
            ending = ends_Bx2W | (t == N - 1)
            new_fin_Bx2W = jnp.where(ending & (score_Bx2W > NEG_INF), score_Bx2W / length_penalty(t + 1, alpha),
                                     NEG_INF)
            pool_score, pool_idx = jax.lax.top_k(jnp.concatenate([s.fin_score_BxW, new_fin_Bx2W], axis=1), W)
            cat = lambda a, b: _gather(jnp.concatenate([a, b], axis=1), pool_idx)  # noqa: E731
            fin_len = cat(s.fin_len_BxW, jnp.full((B, 2 * W), t + 1, jnp.int32))

            # The best W that did not end stay alive; the cache follows their parents.
            alive_score, alive_idx = jax.lax.top_k(jnp.where(ends_Bx2W, NEG_INF, score_Bx2W), W)
            parent_BxW = _gather(beam_Bx2W, alive_idx)
            dec = decoding.take_rows(s.dec, (jnp.arange(B)[:, None] * W + parent_BxW).reshape(-1))
            dec = decoding.step(model, params, dec, _gather(token_Bx2W, alive_idx).reshape(-1))
            return _Beams(dec, _gather(seq_Bx2WxN, alive_idx), _gather(lp_Bx2WxN, alive_idx), alive_score,
                          cat(s.fin_seq_BxWxN, seq_Bx2WxN), cat(s.fin_lp_BxWxN, lp_Bx2WxN), fin_len, pool_score,
                          t + 1)

        def running(s: _Beams):
            # An alive beam's sum only falls; the most its final score can be is that sum over the largest
            # penalty still ahead (the penalty is monotone in length).
            biggest = jnp.maximum(length_penalty(s.step + 1, alpha), length_penalty(N, alpha))
            bound_B = s.alive_score_BxW.max(axis=1) / biggest
            return (s.step < N) & (jnp.any(bound_B > s.fin_score_BxW[:, -1]) | (not early_stop))

        s = jax.lax.while_loop(running, body, beams)
    return Result(s.fin_seq_BxWxN, s.fin_len_BxW, s.fin_score_BxW, s.fin_lp_BxWxN, s.step)
