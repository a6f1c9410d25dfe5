"""optax AdamW with linear warmup and cosine decay, global-norm clipping and a weight-decay mask."""

import jax
import optax


def schedule(optim_cfg, train_steps: int) -> optax.Schedule:
    """Linear warmup to `lr` over `warmup_steps`, then cosine to `min_lr` at `decay_steps` (0: train.steps).

    Like nanoGPT, step 0 already trains at lr / (warmup + 1) instead of wasting a step at zero.
    """
    o = optim_cfg
    decay_steps = max(o.decay_steps or train_steps, o.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=o.lr / (o.warmup_steps + 1) if o.warmup_steps else o.lr,
        peak_value=o.lr,
        warmup_steps=o.warmup_steps,
        decay_steps=decay_steps,
        end_value=o.min_lr,
    )


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


def make_optimizer(optim_cfg, train_steps: int) -> optax.GradientTransformation:
    o = optim_cfg
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
        optax.adamw(
            schedule(o, train_steps),
            b1=o.b1,
            b2=o.b2,
            eps=o.eps,
            weight_decay=o.weight_decay,
            mask=lambda p: decay_mask(p, o.decay_embeddings),
        ),
    )
