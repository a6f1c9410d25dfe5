"""Rows of examples in batches: the one place fine-tuning, the reward model, DPO and the judge take their batches.

Training batches are addressed by step: the global batch of `step` is the next `batch_size` rows of a fresh
permutation per epoch (an epoch's tail runs into the next epoch's start), a pure function of (seed, step), so a
resumed run sees the same batches. Evaluation takes every row once, in order, in global batches whose last one is
filled with copies of the last row and a `real` mask that says which rows count. Each process takes its own
contiguous share of every global batch.

Written here rather than with grain: these are in-memory arrays of at most a few hundred thousand rows, addressed by
step; a permutation per epoch is all the machinery they need.
"""

import math
from collections.abc import Iterator

import jax
import numpy as np


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed % 2**32, epoch, 7]).permutation(n)


def row_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The row indices of the global batch at `step`: consecutive slices of a fresh permutation per epoch."""
    first = step * batch_size
    idx = []
    while len(idx) < batch_size:
        epoch, off = divmod(first + len(idx), n)
        take = min(batch_size - len(idx), n - off)
        idx.extend(epoch_order(n, seed, epoch)[off:off + take])
    return np.asarray(idx)


def local_rows(n: int) -> slice:
    """This process's share of a global batch of `n` rows."""
    pc, pi = jax.process_count(), jax.process_index()
    return slice(pi * n // pc, (pi + 1) * n // pc)


def train_rows(arrays: dict, batch_size: int, seed: int, step: int) -> dict:
    """This process's rows of the global training batch at `step` (every array's first axis is the row)."""
    n = len(next(iter(arrays.values())))
    idx = row_indices(n, batch_size, seed, step)[local_rows(batch_size)]
    return {k: v[idx] for k, v in arrays.items()}


def eval_rows(arrays: dict, batch_size: int, limit: int = 0) -> Iterator[tuple[dict, np.ndarray]]:
    """Every row once (the first `limit`, when > 0), in global batches of `batch_size`: yields (this process's
    rows, which of them are real); the last batch is filled with copies of the last row."""
    n = len(next(iter(arrays.values())))
    n = min(n, limit) if limit > 0 else n
    for b in range(math.ceil(n / batch_size)):
        idx = (b * batch_size + np.arange(batch_size))[local_rows(batch_size)]
        yield {k: v[np.minimum(idx, n - 1)] for k, v in arrays.items()}, idx < n
