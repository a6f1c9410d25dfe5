"""Text generation: greedy, temperature, top-k and top-p sampling (any combination), and beam search.

The prompts are prefilled in one pass; then a jitted `lax.while_loop` adds one token per step from the KV cache. The
loop returns to Python only every `chunk_size` tokens (or at the end), which is where streamed text is printed and
stop strings are looked for. Sampling is reproducible: row r's draws depend only on (seed, r, step).
"""

import contextlib
import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import beam_search, decoding, sharding
from gptjax.decoding import PromptError  # noqa: F401  (part of this module's API)
from gptjax.model import ModelConfig


def sample_logits(keys_B, logits_BxV, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row: the argmax when temperature == 0, else a draw from softmax(logits / temperature)
    restricted to the top_k most likely tokens and to the nucleus, the most likely tokens whose probability
    first reaches top_p. `keys_B` holds one PRNG key per row."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32) / temperature
    V = logits_BxV.shape[-1]
    draw = jax.vmap(jax.random.categorical)
    k = top_k if 0 < top_k < V else (V if top_p < 1.0 else 0)
    if not k:
        return draw(keys_B, logits_BxV).astype(jnp.int32)
    top_BxK, ids_BxK = jax.lax.top_k(logits_BxV, k)  # best first
    if top_p < 1.0:
        probs_BxK = jax.nn.softmax(top_BxK, axis=-1)
        mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
        top_BxK = jnp.where(mass_before_BxK < top_p, top_BxK, -jnp.inf)  # the first token always stays
    choice_B = draw(keys_B, top_BxK)
    return jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=1)[:, 0].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One continuation. `tokens` are the new tokens (the end-of-text token included when it ended there);
    `text` is their text, without the end token and cut before a stop string; `logprobs` are the model's
    log-probabilities of `tokens` (before temperature, top-k and top-p); `score` is beam search's
    length-normalised score."""

    prompt_index: int
    tokens: np.ndarray
    text: str | None
    finish_reason: str  # "eos" | "stop" | "length"
    logprobs: np.ndarray | None = None
    score: float | None = None


class _Sampling(NamedTuple):
    dec: decoding.Cached
    tokens_BxN: jax.Array
    logprobs_BxN: jax.Array
    done_B: jax.Array
    count_B: jax.Array  # tokens generated per row
    keys_B: jax.Array
    step: jax.Array  # tokens generated in this window
    base: jax.Array  # tokens generated before this window (the context slid): draws are keyed by base + step


@functools.partial(jax.jit, static_argnames=("model", "num_new", "rules"))
def _start(model, params, tokens_BxP, mask_BxP, done_B, base, key, *, num_new, rules=()) -> _Sampling:
    B = tokens_BxP.shape[0]
    with nn.logical_axis_rules(rules):
        dec = decoding.prefill(model, params, tokens_BxP, mask_BxP, tokens_BxP.shape[1] + num_new)
    keys_B = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(B))
    return _Sampling(dec, jnp.zeros((B, num_new), jnp.int32), jnp.zeros((B, num_new), jnp.float32), done_B,
                     jnp.zeros((B,), jnp.int32), keys_B, jnp.zeros((), jnp.int32), base)


@functools.partial(
    jax.jit,
    static_argnames=("model", "temperature", "top_k", "top_p", "eos_id", "logprobs", "rules", "logprob_temperature",
                     "vocab"),
    donate_argnames=("s",),
)
def _continue(model, params, s: _Sampling, stop_at, *, temperature, top_k, top_p, eos_id, logprobs, rules=(),
              logprob_temperature=1.0, vocab=0):
    """Generates until `stop_at` tokens or until every row is done. Log-probabilities are of
    softmax(logits / logprob_temperature). With `vocab`, only ids below it are drawn (the model's table may have
    more rows than the tokenizer has tokens: GPT-1's and GPT-2's padded vocabularies)."""

    def body(s: _Sampling) -> _Sampling:
        logits_BxV = decoding.within_vocab(s.dec.logits_BxV, vocab)
        keys_B = jax.vmap(jax.random.fold_in, (0, None))(s.keys_B, s.base + s.step)
        token_B = jnp.where(s.done_B, 0, sample_logits(keys_B, logits_BxV, temperature, top_k, top_p))
        tokens_BxN = jax.lax.dynamic_update_slice(s.tokens_BxN, token_B[:, None], (0, s.step))
        logprobs_BxN = s.logprobs_BxN
        if logprobs:
            lp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BxV / logprob_temperature), token_B[:, None], axis=1)
            logprobs_BxN = jax.lax.dynamic_update_slice(logprobs_BxN, lp_B, (0, s.step))
        count_B = s.count_B + ~s.done_B
        done_B = s.done_B | (token_B == eos_id) if eos_id is not None else s.done_B
        dec = decoding.step(model, params, s.dec, token_B)
        return _Sampling(dec, tokens_BxN, logprobs_BxN, done_B, count_B, s.keys_B, s.step + 1, s.base)

    with nn.logical_axis_rules(rules):
        return jax.lax.while_loop(lambda s: (s.step < stop_at) & ~s.done_B.all(), body, s)


def sample_batch(model_cfg: ModelConfig, params, tokens_BxP, mask_BxP, key, *, max_new_tokens: int,
                 temperature: float = 1.0, eos_id: int | None = None, rules=()):
    """Rollouts for RL: `max_new_tokens` tokens drawn from softmax(logits / temperature) after each left-padded
    prompt, on device arrays (sharded as given) and with a key array, so a new key per batch compiles nothing new.
    Returns device arrays (tokens_BxN, logprobs_BxN, lengths_B): the log-probabilities are those of the
    distribution each token was drawn from (temperature applied); tokens after a row's end token are 0."""
    model = decoding.inference_model(model_cfg)
    if temperature <= 0:
        raise PromptError(f"temperature: rollouts sample, so it must be > 0, got {temperature}")
    if tokens_BxP.shape[1] + max_new_tokens > model_cfg.max_len:
        raise PromptError(f"max_new_tokens: prompts of {tokens_BxP.shape[1]} tokens + {max_new_tokens} new tokens "
                          f"exceed the model's context of {model_cfg.max_len}")
    rules = sharding.hashable_rules(rules)
    done_B = jnp.zeros(tokens_BxP.shape[:1], bool)
    s = _start(model, params, tokens_BxP, mask_BxP, done_B, jnp.int32(0), key, num_new=max_new_tokens, rules=rules)
    s = _continue(model, params, s, max_new_tokens, temperature=float(temperature), top_k=0, top_p=1.0,
                  eos_id=eos_id, logprobs=True, rules=rules, logprob_temperature=float(temperature))
    return s.tokens_BxN, s.logprobs_BxN, s.count_B


def _to_device(x: np.ndarray, mesh):
    """A host array identical on every process -> one array, rows over the mesh's data axes when they divide."""
    if mesh is None:
        return x
    split = x.shape[0] % sharding.data_parallel_size(mesh) == 0
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    where = sharding.batch_sharding(mesh, x.ndim) if split else replicated
    return jax.make_array_from_callback(x.shape, where, lambda idx: x[idx])


class _Text:
    """Turns growing token rows into text: holds back a possible stop-string prefix and an unfinished multi-byte
    character, reports new text, and finds where a stop string first appears."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], eos_id: int | None):
        self.tok, self.stops, self.eos_id = tokenizer, tuple(s for s in stop_strings if s), eos_id
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        return self.tok.decode(ids)

    def find_stop(self, text: str) -> int:
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else -1

    def first_stop(self, ids, start: int):
        """(number of tokens, text before the stop string) for the shortest prefix longer than `start` tokens
        whose text holds a stop string, or None."""
        if self.find_stop(self.decode(ids)) < 0:
            return None
        for n in range(start + 1, len(ids) + 1):
            text = self.decode(ids[:n])
            if (i := self.find_stop(text)) >= 0:
                return n, text[:i]
        return None

    def ready(self, text: str, finished: bool) -> str:
        """The part of `text` that can be shown now."""
        if finished:
            return text
        text = text[: len(text) - self.hold] if self.hold else text
        return text.rstrip("\ufffd")


def generate(
    model_cfg: ModelConfig,
    params,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    beam_size: int = 1,
    length_penalty: float = 0.6,
    num_samples: int = 1,
    eos_id: int | None = None,
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    seed: int = 0,
    logprobs: bool = False,
    truncate: str = "error",
    on_text: Callable[[int, str], None] | None = None,
    chunk_size: int = 0,
    mesh=None,
    rules=(),
) -> list[Completion]:
    """Continues each prompt `num_samples` times; returns the completions prompt by prompt.

    Prompts are token lists, or strings when a tokenizer is given (it also gives `text`, stop strings and
    streaming). beam_size > 1 runs beam search and returns its num_samples best beams (temperature, top-k and top-p
    do not apply). `on_text(row, new_text)` receives text as it is generated (sampling only), every `chunk_size`
    tokens (default 16 when streaming or stopping on strings, else the whole run in one loop). With `mesh` and the
    logical-axis `rules` the batch is split over the mesh's data axes and the model runs as sharded in training.
    """
    check_options(temperature, top_k, top_p, beam_size, num_samples, stop_strings, tokenizer, on_text)
    ids = [tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
    ids = decoding.fit_prompts(ids, max_new_tokens, model_cfg.max_len, truncate, slide=beam_size == 1)
    model = decoding.inference_model(model_cfg)
    text = _Text(tokenizer, stop_strings, eos_id) if tokenizer is not None else None
    vocab = tokenizer.vocab_size if tokenizer is not None and tokenizer.vocab_size < model_cfg.vocab_size else 0
    rules = sharding.hashable_rules(rules)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        if beam_size > 1:
            return _beam(model, params, ids, max_new_tokens, beam_size, length_penalty, num_samples, eos_id, text,
                         logprobs, mesh, rules, vocab)
        rows = [p for p in ids for _ in range(num_samples)]
        return _sample(model, params, rows, num_samples, max_new_tokens, (temperature, top_k, top_p), eos_id, text,
                       seed, logprobs, on_text, chunk_size, mesh, rules, model_cfg.max_len, vocab)


def check_options(temperature=1.0, top_k=0, top_p=1.0, beam_size=1, num_samples=1, stop_strings=(),
                  tokenizer=None, on_text=None):
    """Raises PromptError naming the first bad option (generate() calls it; callers may call it before loading)."""
    if temperature < 0:
        raise PromptError(f"temperature: must be >= 0, got {temperature}")
    if top_k < 0:
        raise PromptError(f"top_k: must be >= 0 (0 keeps all tokens), got {top_k}")
    if not 0 < top_p <= 1:
        raise PromptError(f"top_p: must be in (0, 1], got {top_p}")
    if beam_size < 1 or num_samples < 1:
        raise PromptError(f"beam_size and num_samples: must be >= 1, got {beam_size} and {num_samples}")
    if beam_size > 1 and num_samples > beam_size:
        raise PromptError(f"num_samples: beam search returns at most beam_size={beam_size} beams, got {num_samples}")
    if (stop_strings or on_text) and tokenizer is None:
        raise PromptError("stop_strings and on_text: need the tokenizer")


def _sample(model, params, rows, num_samples, N, sampler, eos_id, text, seed, logprobs, on_text, chunk_size, mesh,
            rules, max_len, vocab=0) -> list[Completion]:
    """Samples N tokens per row in windows of the context: when a row reaches the end of the context, the last
    3/4 of the context (prompt and text so far) is prefilled again and generation goes on, as nanoGPT's sampler
    crops its input to the last block. Within a window every step attends to the whole cache."""
    temperature, top_k, top_p = sampler
    streaming = text is not None and (on_text is not None or text.stops)
    B = len(rows)
    keep = max_len - max(1, max_len // 4)  # context kept when the window slides
    seqs = [np.zeros(0, np.int32)] * B  # tokens generated so far, per row
    seq_lps = [np.zeros(0, np.float32)] * B
    stopped = [None] * B  # (tokens kept, text) of rows ended by a stop string
    shown = [0] * B
    done = np.zeros(B, bool)
    prompts, produced = rows, 0
    while True:
        tokens_BxP, mask_BxP = decoding.left_pad(prompts)
        n_new = min(N - produced, max_len - tokens_BxP.shape[1])
        s = _start(model, params, _to_device(tokens_BxP, mesh), _to_device(mask_BxP, mesh), _to_device(done, mesh),
                   jnp.int32(produced), jax.random.key(seed), num_new=n_new, rules=rules)
        chunk = chunk_size or (16 if streaming else n_new)
        step = 0
        while True:
            s = _continue(model, params, s, min(step + chunk, n_new), temperature=float(temperature),
                          top_k=int(top_k), top_p=float(top_p), eos_id=eos_id, logprobs=logprobs, rules=rules,
                          vocab=vocab)
            tokens, counts, done_now = sharding.to_host(s.tokens_BxN), sharding.to_host(s.count_B), sharding.to_host(s.done_B)
            step = int(sharding.to_host(s.step))
            ids = [np.concatenate([seqs[r], tokens[r, : counts[r]]]) for r in range(B)]
            finished = done_now | (produced + step >= N)
            if streaming:
                for r in range(B):
                    if stopped[r] is None and text.stops:
                        stopped[r] = text.first_stop(ids[r], max(0, len(ids[r]) - chunk))
                        if stopped[r] is not None:
                            finished[r] = True
                    if on_text is not None:
                        now = stopped[r][1] if stopped[r] else text.ready(text.decode(ids[r]), finished[r])
                        if len(now) > shown[r]:
                            on_text(r, now[shown[r]:])
                            shown[r] = len(now)
                if any(stopped) and not done_now.all():
                    newly = np.array([x is not None for x in stopped])
                    s = s._replace(done_B=_to_device(done_now | newly, mesh) if mesh is not None
                                   else s.done_B | newly)
            if finished.all() or step >= n_new:
                break
        if logprobs:
            lps = sharding.to_host(s.logprobs_BxN)
            seq_lps = [np.concatenate([seq_lps[r], lps[r, : counts[r]]]) for r in range(B)]
        seqs, produced = ids, produced + step
        done = done_now | np.array([x is not None for x in stopped])
        if finished.all():
            break
        prompts = [(list(rows[r]) + list(seqs[r]))[-keep:] for r in range(B)]
    out = []
    for r in range(B):
        n = stopped[r][0] if stopped[r] else len(seqs[r])
        toks = seqs[r][:n]
        reason = "stop" if stopped[r] else ("eos" if eos_id is not None and n and toks[-1] == eos_id else "length")
        row_text = None if text is None else (stopped[r][1] if stopped[r] else text.decode(toks))
        out.append(Completion(r // num_samples, toks, row_text, reason, seq_lps[r][:n] if logprobs else None))
    return out


def _beam(model, params, prompts, N, W, alpha, num_samples, eos_id, text, logprobs, mesh, rules, vocab=0):
    tokens_BxP, mask_BxP = decoding.left_pad(prompts)
    seqs, lengths, scores, lps, _ = (sharding.to_host(x) for x in beam_search.search(
        model, params, _to_device(tokens_BxP, mesh), _to_device(mask_BxP, mesh), max_new_tokens=N, beam_size=W,
        alpha=float(alpha), eos_id=eos_id, rules=rules, vocab=vocab))
    out = []
    for b in range(len(prompts)):
        for w in range(num_samples):
            toks = seqs[b, w, : lengths[b, w]]
            reason = "eos" if eos_id is not None and len(toks) and toks[-1] == eos_id else "length"
            row_text = None
            if text is not None:
                row_text = text.decode(toks)
                if (i := text.find_stop(row_text)) >= 0:
                    row_text, reason = row_text[:i], "stop"
            out.append(Completion(b, toks, row_text, reason, lps[b, w, : lengths[b, w]] if logprobs else None,
                                  float(scores[b, w])))
    return out
