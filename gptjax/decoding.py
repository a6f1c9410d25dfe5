"""The pieces every decoder shares: checking and left-padding prompts, the KV cache, prefill and one-token steps.

A batch of prompts of different lengths is left-padded to one length P, so that every row's next token lands in
the same cache slot. Each row keeps its own position ids (padding does not count) and a key mask that hides its
padding slots. The cache has P + max_new_tokens slots.
"""

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import PromptError  # noqa: F401  (part of this module's API)
from gptjax.model import GPT, ModelConfig


def fit_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, max_len: int, truncate: str = "error",
                slide: bool = False):
    """Checks each prompt against the context; with truncate="left" keeps the last tokens that fit.

    The strict rule (beam search, scoring): prompt + max_new_tokens must fit in the context. With `slide` (sampling,
    which moves its window along as nanoGPT crops its context) only the prompt must leave room for one new token."""
    if truncate not in ("error", "left"):
        raise PromptError(f"truncate: must be 'error' or 'left', got {truncate!r}")
    if max_new_tokens < 1:
        raise PromptError(f"max_new_tokens: must be at least 1, got {max_new_tokens}")
    if not slide and max_new_tokens >= max_len:
        raise PromptError(f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in a context of {max_len}")
    if not prompts:
        raise PromptError("prompts: none given")
    room = max_len - 1 if slide else max_len - max_new_tokens
    out = []
    for i, prompt in enumerate(prompts):
        prompt, name = [int(t) for t in prompt], "prompt" if len(prompts) == 1 else f"prompt {i}"
        if not prompt:
            raise PromptError(f"{name}: empty after tokenization; give at least one character")
        if len(prompt) > room:
            if truncate == "error":
                needs = "leaves no room for a new token in" if slide else f"+ max_new_tokens={max_new_tokens} exceed"
                raise PromptError(
                    f"{name}: {len(prompt)} tokens {needs} the model's context of {max_len} tokens "
                    f"(truncate from the left to keep the last {room})"
                )
            prompt = prompt[-room:]
        out.append(prompt)
    return out


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0):
    """(tokens_BxP int32, mask_BxP bool): prompts right-aligned, padding on the left."""
    P = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    mask = np.zeros((len(prompts), P), bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = p
        mask[i, P - len(p):] = True
    return tokens, mask


def within_vocab(logits_BxV, vocab: int):
    """The logits with ids from `vocab` on ruled out (0: none are): a table padded beyond the tokenizer's tokens."""
    if not vocab or vocab >= logits_BxV.shape[-1]:
        return logits_BxV
    return jnp.where(jnp.arange(logits_BxV.shape[-1]) < vocab, logits_BxV, -jnp.inf)


class Cached(NamedTuple):
    """A batch mid-generation: the cache, the logits for the next token, and where that token goes."""

    cache: Any
    logits_BxV: jax.Array  # float32 logits of the next token
    pos_B: jax.Array  # its position id
    kv_mask_BxS: jax.Array  # which cache slots hold real tokens (False: left padding)


def inference_model(model_cfg: ModelConfig) -> GPT:
    return GPT(dataclasses.replace(model_cfg, dropout=0.0))


def prefill(model: GPT, params, tokens_BxP, mask_BxP, num_slots: int) -> Cached:
    """Runs the prompts through the model in one pass, filling a cache of `num_slots` slots (call under jit)."""
    B, P = tokens_BxP.shape
    positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0).astype(jnp.int32)
    kv_mask_BxS = jnp.concatenate([mask_BxP, jnp.ones((B, num_slots - P), bool)], axis=1)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), jnp.zeros((B, num_slots), jnp.int32), jnp.zeros((B, num_slots), jnp.int32),
            decode=True,
        )
    )["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    logits_BxPxV, variables = model.apply(
        {"params": params, "cache": cache}, tokens_BxP, positions_BxP, kv_mask_BxS, decode=True, mutable=["cache"]
    )
    return Cached(variables["cache"], logits_BxPxV[:, -1], positions_BxP[:, -1] + 1, kv_mask_BxS)


def step(model: GPT, params, state: Cached, token_B) -> Cached:
    """Appends one token per row to the cache; returns the logits for the token after it."""
    logits_Bx1xV, variables = model.apply(
        {"params": params, "cache": state.cache}, token_B[:, None], state.pos_B[:, None], state.kv_mask_BxS,
        decode=True, mutable=["cache"],
    )
    return Cached(variables["cache"], logits_Bx1xV[:, 0], state.pos_B + 1, state.kv_mask_BxS)


def take_rows(state: Cached, rows_B) -> Cached:
    """Row `i` of the result is row `rows_B[i]` of `state` (beam search reorders its beams this way)."""

    def take(x):
        # Keys and values are (B, S, H, K), or (L, B, S, H, K) with scanned layers; the slot index is shared.
        return jnp.take(x, rows_B, axis=x.ndim - 4) if x.ndim >= 4 else x

    return Cached(jax.tree.map(take, state.cache), *(jnp.take(x, rows_B, axis=0) for x in state[1:]))


def repeat_rows(state: Cached, n: int) -> Cached:
    """Each row repeated n times in place: rows b*n .. b*n + n - 1 are copies of row b."""
    B = state.pos_B.shape[0]
    return take_rows(state, jnp.repeat(jnp.arange(B), n))
