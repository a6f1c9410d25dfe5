"""LoRA (Hu et al. 2021): W + (alpha / r) A B on chosen kernels, A (in, r) random, B (r, out) zero, so a fresh
adapter leaves the model unchanged. Only the adapters (and the task head) train: the objective names the frozen
base (`frozen`), and `optimizer.make_optimizer` gives it no updates and no optimizer state (optax's partition with
set_to_zero), which shows in the checkpoint's `train` item.

The adapters act on the params, not the activations: the step adds (alpha / r) A B to each adapted kernel before
the forward pass (one in x r x out matmul per kernel per step, small next to the forward). `merge` does it once and
returns plain params, which any gptjax code (sampling, evals, a further fine-tune) loads as an ordinary model.

Kernels by name: qkv (attention q, k and v, the fused `qkv_kernel` D x 3HK), out (`out_kernel` HK x D), fc
(`fc_kernel` D x F), proj (`proj_kernel` F x D). With model.scan_layers the kernels carry a leading layer axis and
so do the adapters.
"""

import math

import jax
import jax.numpy as jnp

TARGETS = {"qkv": ("qkv_kernel", 1), "out": ("out_kernel", 2), "fc": ("fc_kernel", 1), "proj": ("proj_kernel", 1)}
_NDIM = {"qkv_kernel": 4, "out_kernel": 3, "fc_kernel": 2, "proj_kernel": 2}


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _adapted(params, targets):
    """(path string, leaf, number of input dims, stacked) of every kernel that `targets` adapt."""
    names = {TARGETS[t][0]: TARGETS[t][1] for t in targets}
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = str(getattr(path[-1], "key", ""))
        if name in names:
            out.append((_key(path), leaf, names[name], leaf.ndim == _NDIM[name] + 1))
    return out


def init(rng, params, targets, rank: int) -> dict:
    """Adapters for the base `params`: {kernel path: {"a": (..., in, r), "b": (..., r, out)}}."""
    adapters = {}
    for i, (key, leaf, n_in, stacked) in enumerate(_adapted(params, targets)):
        lead = leaf.shape[:1] if stacked else ()
        dims = leaf.shape[len(lead):]
        d_in, d_out = math.prod(dims[:n_in]), math.prod(dims[n_in:])
        a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, d_in, rank), leaf.dtype) / math.sqrt(d_in)
        adapters[key] = {"a": a, "b": jnp.zeros((*lead, rank, d_out), leaf.dtype)}
    if not adapters:
        raise ValueError(f"no kernels named by {targets} in the params")
    return adapters


def merge(params, adapters: dict, alpha: float, rank: int):
    """`params` with (alpha / rank) A B added to each adapted kernel."""
    scale = alpha / rank

    def add(path, leaf):
        ad = adapters.get(_key(path))
        if ad is None:
            return leaf
        delta = jnp.einsum("...ir,...ro->...io", ad["a"], ad["b"]) * scale
        return leaf + delta.reshape(leaf.shape).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(add, params)
