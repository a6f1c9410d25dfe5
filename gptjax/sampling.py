"""Text generation with a KV cache: one prefill pass over the prompt, then a jitted scan of one-token steps."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, ModelConfig


class PromptError(ValueError):
    """A prompt the model cannot take (longer than its context, or empty)."""


def sample_logits(rng, logits_BxV, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """Draws one token per row: greedy when temperature == 0, else from softmax(logits / temperature)
    restricted to the top_k most likely tokens and to the smallest set whose probability reaches top_p."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV / temperature
    neg = jnp.finfo(logits_BxV.dtype).min
    if top_k and top_k < logits_BxV.shape[-1]:
        kth_BxV = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_BxV, neg, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
        # Keep each token whose preceding mass is below top_p (the most likely token is always kept).
        keep = jnp.sum((cum_BxV - jax.nn.softmax(sorted_BxV, axis=-1)) < top_p, axis=-1, keepdims=True)
        cutoff_BxV = jnp.take_along_axis(sorted_BxV, keep - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < cutoff_BxV, neg, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


def check_prompt(prompt_len: int, max_new_tokens: int, max_len: int) -> None:
    if prompt_len == 0:
        raise PromptError("prompt: empty after tokenization; give at least one character")
    if max_new_tokens < 1:
        raise PromptError(f"max_new_tokens: must be at least 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > max_len:
        raise PromptError(
            f"prompt: {prompt_len} tokens + max_new_tokens={max_new_tokens} exceed the model's context "
            f"of {max_len} tokens"
        )


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate(model, params, prompt_BxP, rng, max_new_tokens, temperature, top_k, top_p):
    B, P = prompt_BxP.shape
    cache_shape = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((B, P + max_new_tokens), jnp.int32), decode=True)
    )["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shape)
    logits_BxPxV, variables = model.apply(
        {"params": params, "cache": cache}, prompt_BxP, decode=True, mutable=["cache"]
    )

    def step(carry, _):
        cache, logits_BxV, rng = carry
        rng, sub = jax.random.split(rng)
        token_B = sample_logits(sub, logits_BxV, temperature, top_k, top_p)
        logits_Bx1xV, variables = model.apply(
            {"params": params, "cache": cache}, token_B[:, None], decode=True, mutable=["cache"]
        )
        return (variables["cache"], logits_Bx1xV[:, -1], rng), token_B

    _, tokens_NxB = jax.lax.scan(step, (variables["cache"], logits_BxPxV[:, -1], rng), length=max_new_tokens)
    return tokens_NxB.T


def generate(
    model_cfg: ModelConfig,
    params,
    prompt_ids,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Continues one prompt `num_samples` times; returns the new token ids, int32 (num_samples, max_new_tokens)."""
    prompt = list(prompt_ids)
    check_prompt(len(prompt), max_new_tokens, model_cfg.max_len)
    model = GPT(dataclasses.replace(model_cfg, dropout=0.0))
    prompt_BxP = jnp.asarray(np.tile(np.asarray(prompt, np.int32), (num_samples, 1)))
    out = _generate(
        model, params, prompt_BxP, jax.random.PRNGKey(seed), max_new_tokens, float(temperature), int(top_k), float(top_p)
    )
    return np.asarray(out)
