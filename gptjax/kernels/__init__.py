"""Implementations of attention, LayerNorm and the token loss, behind one switch each.

`model.attention_impl`: auto | reference | cpu_fused | cudnn | splash; `model.norm_impl` and `model.loss_impl`:
auto | reference | cpu_fused. `reference` (reference.py) is the definition, differentiated by autodiff; the others
are tested equal to it. `auto` picks cpu_fused on CPU, cuDNN flash attention on GPU and splash attention on TPU,
and falls back to the reference for a call that kernel cannot take (attention dropout, a left-padding key mask,
packed segments for cuDNN, lengths that are not a multiple of 128 for splash, fp32 for cuDNN). Each choice is
printed once per process.

Adding an attention variant: change `reference.attention_heads` (or add a branch there keyed on a new config
field) and train with `model.attention_impl=reference`; the fast paths do not know about it, and `select_attention`
keeps them out of the way only when asked to.
"""

import contextlib

import sys

import jax
import jax.numpy as jnp

from gptjax.configs.model import ATTENTION_IMPLS, LOSS_IMPLS, NORM_IMPLS  # noqa: F401  (the switch's values)
from gptjax.errors import ConfigError
from gptjax.kernels import cpu_fused, reference

_AUTO_ATTENTION = {"cpu": "cpu_fused", "gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}
_announced = set()
_target = []  # platforms being compiled for ahead of time (gptjax plan), innermost last


@contextlib.contextmanager
def target_platform(name: str):
    """Chooses implementations for `name` ("tpu") instead of this process's backend: for compiling a TPU program
    ahead of time on a CPU host (`gptjax plan`), where splash must be the real kernel, not its interpreter."""
    _target.append(name)
    try:
        yield
    finally:
        _target.pop()


def platform() -> str:
    """The platform the model is being built for: the target of `target_platform`, else jax's default backend."""
    return _target[-1] if _target else jax.default_backend()


def announce(key: str, requested: str, chosen: str, why: str = "") -> None:
    if (key, requested, chosen, why) in _announced:
        return
    _announced.add((key, requested, chosen, why))
    if jax.process_index() == 0:
        note = f" ({why})" if why else ""
        # stderr: stdout is the command's output (sampled text, reports)
        print(f"gptjax: model.{key}={requested} -> {chosen} on {platform()}{note}", file=sys.stderr, flush=True)


def check_platform(requested: str) -> None:
    """Raises ConfigError when `model.attention_impl` names a kernel this platform cannot run (before any work)."""
    where = platform()
    if requested == "cudnn" and where not in ("gpu", "cuda"):
        raise ConfigError(f"model.attention_impl: cudnn needs an NVIDIA GPU; this process runs on {where}")
    if requested == "splash" and where not in ("tpu", "cpu"):
        raise ConfigError(f"model.attention_impl: splash is a TPU kernel; this process runs on {where}")


def select_attention(requested: str, *, dtype, dropout: bool, kv_mask: bool, segments: bool, T: int, S: int) -> str:
    """The attention implementation for one call (at trace time): `requested`, or for `auto` the platform's kernel,
    falling back to `reference` where that kernel cannot take the call."""
    check_platform(requested)
    chosen = _AUTO_ATTENTION.get(platform(), "reference") if requested == "auto" else requested
    why = ""
    if chosen in ("cudnn", "splash"):
        from gptjax.kernels import splash

        if dropout:
            why = "attention dropout"
        elif kv_mask:
            why = "a key padding mask"
        elif chosen == "cudnn" and segments:
            why = "packed segments"
        elif chosen == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
            why = f"{jnp.dtype(dtype).name} (cuDNN flash attention takes bfloat16 or float16)"
        elif chosen == "splash" and not splash.supports(T, S):
            why = f"length {T}x{S} (splash needs equal lengths, a multiple of 128)"
        if why:
            chosen = "reference"
    announce("attention_impl", requested, chosen, why and f"the kernel cannot take {why}")
    return chosen


def attention(impl: str, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS=None, segment_ids_BxT=None):
    """Runs implementation `impl` (as chosen by `select_attention`): (out_BxTxHxK, probs_BxHxTxS or None).
    Only the reference returns the probabilities (for `sow` and inspection)."""
    if impl == "reference":
        return reference.attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS)
    if impl == "cpu_fused":
        return cpu_fused.attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS), None
    if impl == "cudnn":
        from gptjax.kernels import cudnn

        return cudnn.attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, segment_ids_BxT), None
    if impl == "splash":
        from gptjax.kernels import splash

        return splash.attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, segment_ids_BxT,
                                interpret=platform() != "tpu"), None
    raise ConfigError(f"model.attention_impl: {impl!r} is not one of {', '.join(ATTENTION_IMPLS)}")


def _simple(key: str, requested: str):
    chosen = requested
    if requested == "auto":
        chosen = "cpu_fused" if platform() == "cpu" else "reference"
        announce(key, requested, chosen)
    if chosen not in NORM_IMPLS:
        raise ConfigError(f"model.{key}: {requested!r} is not one of {', '.join(NORM_IMPLS)}")
    return cpu_fused if chosen == "cpu_fused" else reference


def layer_norm_fn(requested: str):
    """The LayerNorm function for `model.norm_impl`: f(x, scale, bias, eps, dtype)."""
    return _simple("norm_impl", requested).layer_norm


def token_nll_fn(requested: str):
    """The per-token loss for `model.loss_impl`: f(logits_BxTxV, targets_BxT) -> nll_BxT (float32)."""
    return _simple("loss_impl", requested).token_nll
