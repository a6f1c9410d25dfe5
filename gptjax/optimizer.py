"""The one optimizer module every kind of training uses: optax AdamW with global-norm clipping and a weight-decay
mask, a learning-rate schedule chosen by `optim.schedule`, and frozen parameters through optax's `partition`.

Schedules (`optim.schedule`), all starting with a linear warmup over `optim.warmup_steps`:
  cosine    cosine decay to `optim.min_lr` at `optim.decay_steps` (0: train.steps); GPT-2/3's and nanoGPT's
  linear    linear decay to `optim.min_lr` at train.steps; GPT-1's fine-tuning schedule (with min_lr 0)
  constant  `optim.lr` after the warmup
Like nanoGPT, step 0 already trains at lr / (warmup + 1) instead of wasting a step at zero.

Freezing (LoRA's base model, a frozen backbone): `make_optimizer(..., frozen=prefixes)` gives the leaves under
those param-path prefixes zero updates and no optimizer state (`optax.set_to_zero` in an `optax.partition`); the
clipping and AdamW see the trainable leaves only.
"""

import jax
import optax

from gptjax.configs.default import SCHEDULES  # noqa: F401  (optim.schedule's values)


def schedule(optim_cfg, train_steps: int) -> optax.Schedule:
    o = optim_cfg
    warm = o.warmup_steps
    start = o.lr / (warm + 1) if warm else o.lr
    kind = o.get("schedule", "cosine")
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(init_value=start, peak_value=o.lr, warmup_steps=warm,
                                                  decay_steps=max(o.decay_steps or train_steps, warm + 1),
                                                  end_value=o.min_lr)
    after = (optax.linear_schedule(o.lr, o.min_lr, max(train_steps - warm, 1)) if kind == "linear"
             else optax.constant_schedule(o.lr))
    if not warm:
        return after
    return optax.join_schedules([optax.linear_schedule(start, o.lr, warm), after], [warm])


def decay_mask(params, decay_embeddings: bool = False):
    """True for weight matrices (every `*kernel` and an untied `lm_head`); biases, LayerNorm and the
    token/position embeddings are not decayed unless `decay_embeddings`. Decided by name, not rank, so
    that the stacked (scan) layout, where biases are 2-D, gets the same mask."""

    def is_decayed(path, _):
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        if name in ("wte", "wpe"):
            return decay_embeddings
        return name.endswith("kernel") or name == "lm_head"

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def _labels(frozen: tuple):
    """params -> "frozen" | "trainable" per leaf: frozen when its path starts with one of the `frozen` prefixes
    (tuples of dict keys, e.g. ("model",))."""

    def label(path, _):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        return "frozen" if any(keys[:len(p)] == tuple(p) for p in frozen) else "trainable"

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optim_cfg, train_steps: int, frozen: tuple = ()) -> optax.GradientTransformation:
    """Clipping and AdamW with `schedule(optim_cfg, train_steps)`; the leaves under the `frozen` path prefixes
    get no update and no state."""
    o = optim_cfg
    tx = optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
        optax.adamw(schedule(o, train_steps), b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                    mask=lambda p: decay_mask(p, o.decay_embeddings)),
    )
    if not frozen:
        return tx
    return optax.partition({"trainable": tx, "frozen": optax.set_to_zero()}, _labels(tuple(frozen)))
