"""Scoring primitives for evaluation: log-likelihoods of continuations, rolling log-likelihoods of documents, and
greedy generation, for a model in memory (training) or a workdir.

Requests are scored the way lm-evaluation-harness scores them:
- `loglikelihood(context, continuation)`: trailing spaces of the context move to the continuation, the pair is
  tokenized whole and the continuation is what the whole adds to the context's tokens; an empty context is
  replaced by the end-of-text token. The input is the last max_len tokens of context + continuation without its
  final token (left truncation); the result is the summed log-probability of the continuation's tokens and whether
  each of them is the argmax.
- `loglikelihood_rolling(text)`: the document in windows of max_len predicted tokens, the first conditioned on the
  end-of-text token, each later one on the tokens just before it (lm-eval's `get_rolling_token_windows` with
  context_len=1 and `make_disjoint_window`). A tokenizer without an end-of-text token conditions on the first token,
  which is then not scored.

Batching: inputs (context + continuation without its final token) are packed into rows, longest first, best fit:
inputs up to PACK_LEN tokens share rows of PACK_LEN as separate segments (attention stays inside a segment and
positions restart in each, so a packed input is scored exactly as alone); longer inputs get rows of the next length
in 16, 32, 64, ... max_len. Each row length has a fixed number of rows per batch, so few shapes compile and little
of a batch is padding. Only the positions a continuation is scored at go through the LM head (at GPT-2's 50k
vocabulary the head and its log-softmax over every position cost about as much as the backbone). Requests with the
same input tokens (the choices of a multiple-choice question whose answers are single tokens, for example) share
one input. The batch is split over the mesh's data axes; every process builds the same global batch from the same
request list and takes its rows.
"""

import bisect
import contextlib
import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import sharding
from gptjax.errors import DataError, PromptError
from gptjax.model import GPT, ModelConfig, lm_head_params, unembed

MIN_BUCKET = 16
PACK_LEN = 512  # inputs up to this many tokens share rows of this length


def bucket_lengths(max_len: int) -> list[int]:
    """16, 32, 64, ... below max_len, then max_len."""
    out, n = [], MIN_BUCKET
    while n < max_len:
        out.append(n)
        n *= 2
    return out + [max_len]


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) token pairs that score every token of `tokens` once, lm-eval's window rule with
    context_len=1: the first window predicts tokens[:max_len] after `prefix_token`; each later window predicts the
    next max_len tokens (fewer at the end) from the max_len tokens before its last one."""
    tokens = list(tokens)
    out, done = [], min(max_len, len(tokens))
    if not tokens:
        return out
    out.append(([prefix_token], tokens[:done]))
    while done < len(tokens):
        n = min(len(tokens) - done, max_len)
        end = done + n
        window = tokens[max(end - max_len - 1, 0):end - 1]
        out.append((window[:len(window) - (n - 1)], tokens[end - n:end]))
        done = end
    return out


@functools.partial(jax.jit, static_argnames=("model", "rules"))
def _score_rows(model, params, tokens_BxT, segments_BxT, query_pos_BxQ, query_tok_BxQ, rules=()):
    """For each query (a position of a packed row and a token): log p(token) there, and whether it is the argmax.
    Only the queried positions go through the LM head."""
    with nn.logical_axis_rules(rules):
        hidden_BxTxD, _ = model.apply({"params": params}, tokens_BxT, segment_ids_BxT=segments_BxT,
                                      return_hidden=True)  # XLA drops the unused logits
        hidden_BxQxD = jnp.take_along_axis(hidden_BxTxD, query_pos_BxQ[..., None], axis=1)
        logits_BxQxV = unembed(model.cfg, hidden_BxQxD, lm_head_params(model.cfg, params))
    logp_BxQxV = jax.nn.log_softmax(logits_BxQxV, axis=-1)
    lp_BxQ = jnp.take_along_axis(logp_BxQxV, query_tok_BxQ[..., None], axis=-1)[..., 0]
    return lp_BxQ, jnp.argmax(logits_BxQxV, axis=-1) == query_tok_BxQ


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Best-fit decreasing: indices of `lengths` (each <= row_len) grouped into rows whose lengths sum to at most
    row_len, longest first, each into the fullest row it fits."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at == len(free):
            rows.append([i])
            bisect.insort(free, (row_len - lengths[i], len(rows) - 1))
        else:
            room, r = free.pop(at)
            rows[r].append(i)
            bisect.insort(free, (room - lengths[i], r))
    return rows


@dataclasses.dataclass
class Scorer:
    """Scores requests with `params` of the GPT `model_cfg`. `tokens_per_batch` sets the rows per bucket (a
    multiple of the mesh's data-parallel size, at least one per shard); `progress` shows a tqdm bar on process 0."""

    model_cfg: ModelConfig
    params: object
    tokenizer: object
    mesh: object = None
    rules: tuple = ()
    tokens_per_batch: int = 4096
    buckets: tuple[int, ...] = ()
    progress: bool = False

    def __post_init__(self):
        self.rules = sharding.hashable_rules(self.rules)
        self.model = GPT(self.model_cfg)
        self.buckets = tuple(sorted(self.buckets)) or tuple(bucket_lengths(self.model_cfg.max_len))
        if self.buckets[-1] < self.model_cfg.max_len:
            self.buckets += (self.model_cfg.max_len,)
        self.forward_rows = 0  # inputs actually run (several share a packed row), for tests and benchmarks

    @property
    def max_len(self) -> int:
        return self.model_cfg.max_len

    @property
    def prefix_token(self) -> int | None:
        return self.tokenizer.eos_id

    # --- token level ---------------------------------------------------------------------------------------------

    def rows_for(self, length: int) -> int:
        dp = sharding.data_parallel_size(self.mesh) if self.mesh is not None else 1
        rows = max(1, self.tokens_per_batch // length)
        return max(dp, rows // dp * dp)

    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                             desc: str = "loglikelihood") -> list[tuple[float, bool]]:
        """(context tokens, continuation tokens) -> (sum log p(continuation), all continuation tokens greedy)."""
        L = self.max_len
        rows: dict[tuple, list[tuple[int, int, int]]] = {}  # input tokens -> [(request, n scored, final target)]
        for i, (ctx, cont) in enumerate(requests):
            ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
            if not cont:
                raise PromptError(f"request {i}: empty continuation")
            if len(cont) > L:
                raise PromptError(f"request {i}: continuation of {len(cont)} tokens exceeds the context of {L}")
            if not ctx:
                raise PromptError(f"request {i}: empty context (give the end-of-text token as context)")
            full = (ctx + cont)[-(L + 1):]
            rows.setdefault(tuple(full[:-1]), []).append((i, len(cont), full[-1]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        inputs = list(rows)
        pack_len = max([b for b in self.buckets if b <= PACK_LEN] or self.buckets[:1])
        by_len: dict[int, list[tuple]] = {}  # row length -> its inputs
        for inp in inputs:
            by_len.setdefault(max(pack_len, next(b for b in self.buckets if b >= len(inp))), []).append(inp)
        batches = []
        for T, group in sorted(by_len.items()):
            packed = [[group[i] for i in row] for row in pack_rows([len(x) for x in group], T)]
            B = self.rows_for(T)
            batches += [(T, packed[start:start + B], B) for start in range(0, len(packed), B)]
        bar = self._bar(len(batches), desc)
        for T, chunk, B in batches:
            tokens, segments = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
            queries = [[] for _ in range(B)]  # per row: (position, token)
            asked = []  # (request, row, first query, number of queries)
            for r, row in enumerate(chunk):
                offset = 0
                for seg, inp in enumerate(row, start=1):
                    n = len(inp)
                    tokens[r, offset:offset + n] = inp
                    segments[r, offset:offset + n] = seg
                    for i, m, final in rows[inp]:
                        asked.append((i, r, len(queries[r]), m))
                        # the continuation's tokens are predicted at input positions n-m .. n-1
                        queries[r] += [(offset + p, inp[p + 1] if p + 1 < n else final) for p in range(n - m, n)]
                    offset += n
                self.forward_rows += len(row)
            Q = 1 << (max(len(q) for q in queries) - 1).bit_length()  # a power of two: few compiles
            query_pos, query_tok = np.zeros((B, Q), np.int32), np.zeros((B, Q), np.int32)
            for r, q in enumerate(queries):
                if q:
                    query_pos[r, :len(q)], query_tok[r, :len(q)] = zip(*q)
            lp, greedy = self._run(tokens, segments, query_pos, query_tok)
            for i, r, q, m in asked:
                results[i] = (float(lp[r, q:q + m].sum(dtype=np.float64)), bool(greedy[r, q:q + m].all()))
            bar.update(1)
        bar.close()
        return results

    def _run(self, *arrays):
        mesh = self.mesh
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            out = _score_rows(self.model, self.params, *(self._to_device(x) for x in arrays), rules=self.rules)
        return tuple(sharding.to_host(x) for x in out)

    def _to_device(self, x: np.ndarray):
        if self.mesh is None:
            return x
        where = sharding.batch_sharding(self.mesh, x.ndim)
        return jax.make_array_from_callback(x.shape, where, lambda idx: x[idx])

    def _bar(self, total: int, desc: str):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is optional
            tqdm = None
        show = self.progress and jax.process_index() == 0 and tqdm is not None
        if not show:
            return _NoBar()
        return tqdm(total=total, desc=desc, unit="batch", leave=False)

    # --- text level (lm-eval's request types) ------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        except ValueError as e:  # a character vocabulary meets a character it does not have
            raise DataError(f"the model's tokenizer cannot encode the evaluation text: {e}") from e

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's `_encode_pair`: trailing spaces of the context go to the continuation; the continuation's
        tokens are what tokenizing the whole adds after the context's tokens."""
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        if not context:
            if self.prefix_token is None:
                raise PromptError("empty context: this tokenizer has no end-of-text token to stand for it")
            return [self.prefix_token], self.encode(continuation)
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests])

    def rolling_requests(self, text: str) -> list[tuple[list[int], list[int]]]:
        tokens = self.encode(text)
        if self.prefix_token is not None:
            return rolling_windows(tokens, self.prefix_token, self.max_len)
        return rolling_windows(tokens[1:], tokens[0], self.max_len) if len(tokens) > 1 else []

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Summed log-probability of each whole text, in windows of the model's context."""
        windows = [self.rolling_requests(t) for t in texts]
        flat = [w for ws in windows for w in ws]
        scores = self.loglikelihood_tokens(flat, desc="loglikelihood_rolling")
        out, i = [], 0
        for ws in windows:
            out.append(sum(s for s, _ in scores[i:i + len(ws)]))
            i += len(ws)
        return out

    def generate_until(self, requests: Sequence[tuple[str, Sequence[str], int]]) -> list[str]:
        """(context, stop strings, max new tokens) -> greedy continuation cut before the first stop string.
        Requests with the same stops and length are generated together, in batches sorted by length."""
        from gptjax import sampling

        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, (_, stops, max_new) in enumerate(requests):
            groups.setdefault((tuple(stops), int(max_new)), []).append(i)
        dp = sharding.data_parallel_size(self.mesh) if self.mesh is not None else 1
        rows = max(dp, self.tokens_per_batch // self.max_len // dp * dp)
        bar = self._bar(sum(math.ceil(len(g) / rows) for g in groups.values()), "generate_until")
        for (stops, max_new), idx in groups.items():
            max_new = min(max_new, self.max_len - 1)
            prompts = [self.encode(requests[i][0]) or ([self.prefix_token] if self.prefix_token is not None
                                                                 else []) for i in idx]
            order = sorted(range(len(idx)), key=lambda j: len(prompts[j]))
            for s in range(0, len(order), rows):
                chunk = order[s:s + rows]
                batch = [prompts[j] for j in chunk]
                pad = (-len(batch)) % dp  # whole rows per data shard
                completions = sampling.generate(
                    self.model_cfg, self.params, batch + batch[-1:] * pad, tokenizer=self.tokenizer,
                    max_new_tokens=max_new, temperature=0.0, stop_strings=[s for s in stops if s],
                    eos_id=self.tokenizer.eos_id, truncate="left", mesh=self.mesh, rules=self.rules)
                for j, c in zip(chunk, completions):
                    out[idx[j]] = c.text
                bar.update(1)
        bar.close()
        return out


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass
