"""The GPT decoder in Flax Linen: embeddings, causal self-attention with a decode cache, GELU MLP, blocks.

Shapes use suffixes: B batch, T query length, S key length, D model width, H heads, K head width, F MLP width,
V vocabulary, L layers. Every parameter carries logical axis names (`sharding.py` maps them to the mesh) and the
activations are constrained at block boundaries.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from gptjax import kernels
from gptjax.configs.model import REMAT_POLICIES, ModelConfig, model_config_dict  # noqa: F401  (the model's fields)
from gptjax.errors import ConfigError
from gptjax.kernels import reference

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "float64": jnp.float64}


# model.remat: which activations of a block are saved for the backward pass; the rest is recomputed there.
# none: no rematerialisation (everything saved). full: only the block's input. dots_saveable: every matmul output.
# dots_with_no_batch_dims_saveable: the projections, not the attention scores (dots with batch dims).
# save_qkv_proj: only the q/k/v projection. minimal (MaxText's name): the four projections (qkv_proj, out_proj,
# mlpwi, mlpwo), so only attention and elementwise work is recomputed. The names are checkpoint_name tags below.
_SAVED_NAMES = {"save_qkv_proj": ("qkv_proj",), "minimal": ("qkv_proj", "out_proj", "mlpwi", "mlpwo")}


def remat_policy(name: str):
    """The jax.checkpoint policy of `model.remat` (None for `none`, which does not rematerialise)."""
    cp = jax.checkpoint_policies
    if name == "none":
        return None
    if name == "full":
        return cp.nothing_saveable
    if name in ("dots_saveable", "dots_with_no_batch_dims_saveable"):
        return getattr(cp, name)
    if name in _SAVED_NAMES:
        return cp.save_only_these_names(*_SAVED_NAMES[name])
    raise ConfigError(f"model.remat: {name!r} is not one of {', '.join(REMAT_POLICIES)}")


def constrain(x, axes):
    """nn.with_logical_constraint, leaving a dimension unconstrained where its mesh axes do not divide it (a decode
    batch of one row on a mesh with data-parallel axes): XLA's partitioner would otherwise replicate the operands
    that meet it ("Involuntary full rematerialization")."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        spec = nn.logical_to_mesh_axes(axes)
        axes = tuple(a if not part or x.shape[i] % math.prod(
            mesh.shape.get(n, 1) for n in ((part,) if isinstance(part, str) else part)) == 0 else None
            for i, (a, part) in enumerate(zip(axes, spec)))
    return nn.with_logical_constraint(x, axes)


def _split_over_mesh(axes) -> bool:
    """Whether a parameter with logical `axes` is split over a mesh axis of size > 1 under the current mesh and
    logical-axis rules (at trace time)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    names = [n for part in nn.logical_to_mesh_axes(axes) if part for n in ((part,) if isinstance(part, str) else part)]
    return any(mesh.shape.get(n, 1) > 1 for n in names)


def lookup(table_NxD, ids, axes, impl: str, dtype):
    """Rows `ids` of `table_NxD` (logical `axes`) in `dtype`. `gather` is jnp.take; `onehot` is one_hot(ids) @ table,
    exact (each output is one product by 1.0) and sharded by XLA's SPMD partitioner like any matmul, where a gather
    from a table split over the mesh makes it replicate the table ("Involuntary full rematerialization"). `auto`:
    onehot when the table is split over the mesh (its cost, 2*N*D flops a token, is the LM head's over again for
    the token table: small beside a sharded model's, not beside a laptop model's), else gather."""
    if impl == "auto":
        impl = "onehot" if _split_over_mesh(axes) else "gather"
        if impl == "onehot":
            kernels.announce("embed_impl", "auto", impl, "the table is split over the mesh")
    if impl == "gather":
        return jnp.take(table_NxD, ids, axis=0).astype(dtype)
    # In the table's dtype, then cast, as the gather is: the backward pass sums a token's rows in float32 too.
    one_hot = jax.nn.one_hot(ids, table_NxD.shape[0], dtype=table_NxD.dtype)
    return jnp.einsum("...n,nd->...d", one_hot, table_NxD, precision=jax.lax.Precision.HIGHEST).astype(dtype)


def _param(module, name, init_fn, shape, axes, cfg):
    init = nn.with_logical_partitioning(init_fn, axes)
    w = module.param(name, init, shape, DTYPES[cfg.param_dtype])
    # See ModelConfig.cast_in_layer. Not the embeddings and head outside the scan: behind a barrier their FSDP
    # all-gather moves float32 (at GPT-2 124M on v5e:2x2, 24% more all-gather bytes per step).
    if cfg.cast_in_layer and cfg.scan_layers and cfg.param_dtype != cfg.dtype and name not in ("wte", "wpe", "lm_head"):
        return jax.lax.optimization_barrier(w)
    return w


class LayerNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        scale = _param(self, "scale", nn.initializers.ones, (c.d_model,), ("embed",), c)
        bias = _param(self, "bias", nn.initializers.zeros, (c.d_model,), ("embed",), c)
        return kernels.layer_norm_fn(c.norm_impl)(x, scale, bias, c.layer_norm_eps, DTYPES[c.dtype])


def attention_mask(q_pos_T, S: int, kv_mask_BxS=None, segment_ids_BxT=None):
    """Query t sees key slots <= q_pos_T[t] that kv_mask_BxS marks real and that are in its own segment (packed
    examples never see each other): bool (B or 1, T, S)."""
    mask_BxTxS = (jnp.arange(S)[None, :] <= q_pos_T[:, None])[None]
    if kv_mask_BxS is not None:
        mask_BxTxS = mask_BxTxS & kv_mask_BxS[:, None, :].astype(bool)
    if segment_ids_BxT is not None:
        mask_BxTxS = mask_BxTxS & (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])
    return mask_BxTxS


def segment_positions(segment_ids_BxT):
    """Position ids that restart at 0 where each packed segment starts."""
    T = segment_ids_BxT.shape[1]
    idx_BxT = jnp.broadcast_to(jnp.arange(T), segment_ids_BxT.shape)
    starts_BxT = jnp.concatenate([jnp.ones_like(segment_ids_BxT[:, :1], bool),
                                  segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]], axis=1)
    return idx_BxT - jax.lax.cummax(jnp.where(starts_BxT, idx_BxT, 0), axis=1)


class CausalSelfAttention(nn.Module):
    """Multi-head attention over earlier positions. With decode=True it keeps keys and values in a `cache`
    collection sized by the input it was initialised with, and each call appends its T positions. The reference
    implementation sows its probabilities into `intermediates` (read them with mutable=["intermediates"])."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, segment_ids_BxT, train: bool, decode: bool):
        c = self.cfg
        dtype = DTYPES[c.dtype]
        H, K, D = c.num_heads, c.head_dim, c.d_model
        normal = nn.initializers.normal(c.init_std)
        w_qkv = _param(self, "qkv_kernel", normal, (D, 3, H, K), ("embed", None, "heads", "kv"), c)
        # One (B*T, D) x (D, 3*H*K) matmul with a row-major result; q, k and v are slices of it.
        qkv_BxTx3xHxK = jnp.einsum("btd,dnhk->btnhk", x_BxTxD, w_qkv.astype(dtype))
        if c.use_bias:
            b_qkv = _param(self, "qkv_bias", nn.initializers.zeros, (3, H, K), (None, "heads", "kv"), c)
            qkv_BxTx3xHxK = qkv_BxTx3xHxK + b_qkv.astype(dtype)
        qkv_BxTx3xHxK = checkpoint_name(qkv_BxTx3xHxK, "qkv_proj")
        q_BxTxHxK, k_BxSxHxK, v_BxSxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
        B, T = x_BxTxD.shape[:2]
        probs_BxHxTxS = None

        if decode:
            # The cache is heads-major (B, H, S, K), the layout attention reads, so a step transposes only its
            # own T new positions, not the whole cache. A one-token step writes its slot with a select, which
            # XLA:CPU does in place inside the decode loop; a dynamic_update_slice that the attention then reads
            # made it copy every cache buffer twice per step (1.5x slower at batch 8, benchmarks/README.md).
            to_heads = lambda a: a.transpose(0, 2, 1, 3).astype(dtype)  # noqa: E731
            is_init = not self.has_variable("cache", "key")
            key = self.variable("cache", "key", jnp.zeros, (B, H, T, K), dtype)
            value = self.variable("cache", "value", jnp.zeros, (B, H, T, K), dtype)
            index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
            if not is_init:
                i, S = index.value, key.value.shape[2]
                q_BxHxTxK, k_BxHxTxK, v_BxHxTxK = (to_heads(a) for a in (q_BxTxHxK, k_BxSxHxK, v_BxSxHxK))
                if T == 1:
                    at_S = (jnp.arange(S) == i)[None, None, :, None]
                    key.value = jnp.where(at_S, k_BxHxTxK, key.value)
                    value.value = jnp.where(at_S, v_BxHxTxK, value.value)
                else:
                    key.value = jax.lax.dynamic_update_slice(key.value, k_BxHxTxK, (0, 0, i, 0))
                    value.value = jax.lax.dynamic_update_slice(value.value, v_BxHxTxK, (0, 0, i, 0))
                index.value = i + T
                mask_BxTxS = attention_mask(jnp.arange(T) + i, S, kv_mask_BxS)
                out_BxHxTxK, probs_BxHxTxS = reference.attention_heads(q_BxHxTxK, key.value, value.value, mask_BxTxS)
                out_BxTxHxK = out_BxHxTxK.transpose(0, 2, 1, 3)
        if not decode or is_init:
            S = k_BxSxHxK.shape[1]
            dropout = train and c.dropout > 0
            impl = kernels.select_attention(c.attention_impl, dtype=dtype, dropout=dropout,
                                            kv_mask=kv_mask_BxS is not None, segments=segment_ids_BxT is not None,
                                            T=T, S=S)
            mask_BxTxS = attention_mask(jnp.arange(T), S, kv_mask_BxS, segment_ids_BxT)
            keep_BxHxTxS = None  # attention dropout as a multiplier, 0 or 1 / (1 - rate), from flax's Dropout
            if dropout:
                keep_BxHxTxS = nn.Dropout(c.dropout)(jnp.ones((B, H, T, S), jnp.float32), deterministic=False)
            out_BxTxHxK, probs_BxHxTxS = kernels.attention(impl, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS,
                                                           keep_BxHxTxS, segment_ids_BxT)
        if probs_BxHxTxS is not None:
            self.sow("intermediates", "attention_probs", probs_BxHxTxS)
        out_BxTxHxK = constrain(out_BxTxHxK, ("batch", "length", "act_heads", "kv"))

        w_o = _param(self, "out_kernel", nn.initializers.normal(c.residual_init_std), (H, K, D),
                     ("heads", "kv", "embed"), c)
        y_BxTxD = jnp.einsum("bthk,hkd->btd", out_BxTxHxK, w_o.astype(dtype))
        if c.use_bias:
            y_BxTxD = y_BxTxD + _param(self, "out_bias", nn.initializers.zeros, (D,), ("embed",), c).astype(dtype)
        return checkpoint_name(y_BxTxD, "out_proj")


_ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        c = self.cfg
        dtype = DTYPES[c.dtype]
        D, F = c.d_model, c.ff_width
        w_in = _param(self, "fc_kernel", nn.initializers.normal(c.init_std), (D, F), ("embed", "mlp"), c)
        h_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, w_in.astype(dtype))
        if c.use_bias:
            h_BxTxF = h_BxTxF + _param(self, "fc_bias", nn.initializers.zeros, (F,), ("mlp",), c).astype(dtype)
        h_BxTxF = checkpoint_name(h_BxTxF, "mlpwi")
        h_BxTxF = constrain(_ACTIVATIONS[c.activation](h_BxTxF), ("batch", "length", "act_mlp"))
        w_out = _param(self, "proj_kernel", nn.initializers.normal(c.residual_init_std), (F, D), ("mlp", "embed"), c)
        y_BxTxD = jnp.einsum("btf,fd->btd", h_BxTxF, w_out.astype(dtype))
        if c.use_bias:
            y_BxTxD = y_BxTxD + _param(self, "proj_bias", nn.initializers.zeros, (D,), ("embed",), c).astype(dtype)
        return checkpoint_name(y_BxTxD, "mlpwo")


class Block(nn.Module):
    """One transformer block; pre-LN: x + f(LN(x)); post-LN (GPT-1): LN(x + f(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, segment_ids_BxT, train: bool, decode: bool):
        c = self.cfg
        drop = nn.Dropout(c.dropout)
        attn_mod = CausalSelfAttention(c, name="attn")
        attn = lambda h: attn_mod(h, kv_mask_BxS, segment_ids_BxT, train, decode)  # noqa: E731
        mlp = MLP(c, name="mlp")
        ln_1, ln_2 = LayerNorm(c, name="ln_1"), LayerNorm(c, name="ln_2")
        if c.norm == "pre":
            x_BxTxD = x_BxTxD + drop(attn(ln_1(x_BxTxD)), deterministic=not train)
            x_BxTxD = x_BxTxD + drop(mlp(ln_2(x_BxTxD)), deterministic=not train)
        else:
            x_BxTxD = ln_1(x_BxTxD + drop(attn(x_BxTxD), deterministic=not train))
            x_BxTxD = ln_2(x_BxTxD + drop(mlp(x_BxTxD), deterministic=not train))
        x_BxTxD = constrain(x_BxTxD, ("batch", "length", "act_embed"))
        self.sow("residuals", "stream", x_BxTxD)  # kept only when "residuals" is mutable (gptjax.analysis)
        return x_BxTxD


class _ScanBlock(nn.Module):
    """Block with the (carry, broadcast args) signature nn.scan wants."""

    cfg: ModelConfig
    train: bool
    decode: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, segment_ids_BxT):
        return Block(self.cfg, name="block")(x_BxTxD, kv_mask_BxS, segment_ids_BxT, self.train, self.decode), None


def sinusoidal_table(max_len: int, d_model: int):
    """The 'Attention is all you need' position table, (max_len, d_model)."""
    pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    table = jnp.zeros((max_len, d_model), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(pos * freq))
    return table.at[:, 1::2].set(jnp.cos(pos * freq[: d_model // 2]))


class GPT(nn.Module):
    """Decoder-only transformer language model: float32 logits (B, T, V), or with return_hidden=True
    (hidden_BxTxD, logits_BxTxV), where hidden is the backbone's output (after the final LayerNorm, if any) that
    task heads (classifier, reward, value) read. Unused logits cost nothing under jit: XLA removes them.

    tokens_BxT: int token ids. positions_BxT: position ids (default 0..T-1, restarting in each segment when
    segment_ids_BxT is given). kv_mask_BxS: False marks padding keys (left-padded batches). segment_ids_BxT: packed
    examples, attention stays inside a segment."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT=None, kv_mask_BxS=None, segment_ids_BxT=None, train: bool = False,
                 decode: bool = False, return_hidden: bool = False):
        c = self.cfg
        dtype = DTYPES[c.dtype]
        B, T = tokens_BxT.shape
        if positions_BxT is None and segment_ids_BxT is not None:
            positions_BxT = segment_positions(segment_ids_BxT)
        if positions_BxT is None:
            start = 0
            if decode:  # continue from where the cache stands
                pos_index = self.variable("cache", "pos_index", lambda: jnp.zeros((), jnp.int32))
                start = pos_index.value
                if self.is_initializing():
                    start = 0
                else:
                    pos_index.value = start + T
            positions_BxT = jnp.broadcast_to(start + jnp.arange(T), (B, T))

        wte = _param(self, "wte", nn.initializers.normal(c.init_std), (c.vocab_size, c.d_model), ("vocab", "embed"), c)
        x_BxTxD = lookup(wte, tokens_BxT, ("vocab", "embed"), c.embed_impl, dtype)
        if c.embed_scale:  # the Transformer's sqrt(d_model); the tied head still reads the unscaled table
            x_BxTxD = x_BxTxD * jnp.asarray(math.sqrt(c.d_model), dtype)
        if c.pos_embedding == "learned":
            wpe = _param(self, "wpe", nn.initializers.normal(c.init_std / 2), (c.max_len, c.d_model), (None, "embed"), c)
            x_BxTxD = x_BxTxD + lookup(wpe, positions_BxT, (None, "embed"), c.embed_impl, dtype)
        else:
            x_BxTxD = x_BxTxD + jnp.take(sinusoidal_table(c.max_len, c.d_model), positions_BxT, axis=0).astype(dtype)
        x_BxTxD = nn.Dropout(c.dropout)(x_BxTxD, deterministic=not train)
        x_BxTxD = constrain(x_BxTxD, ("batch", "length", "act_embed"))
        self.sow("residuals", "embeddings", x_BxTxD)  # the residual stream before the first block

        if c.scan_layers:
            block = _ScanBlock
            if c.remat != "none":
                block = nn.remat(block, prevent_cse=False, policy=remat_policy(c.remat))
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0, "intermediates": 0, "residuals": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxTxD, _ = stack(c, train, decode, name="h")(x_BxTxD, kv_mask_BxS, segment_ids_BxT)
        else:
            block = Block
            if c.remat != "none":
                block = nn.remat(Block, static_argnums=(4, 5), policy=remat_policy(c.remat))
            for i in range(c.num_layers):
                x_BxTxD = block(c, name=f"h_{i}")(x_BxTxD, kv_mask_BxS, segment_ids_BxT, train, decode)

        if c.final_norm:
            x_BxTxD = LayerNorm(c, name="ln_f")(x_BxTxD)
        head = wte if c.tie_embeddings else _param(self, "lm_head", nn.initializers.normal(c.init_std),
                                                   (c.d_model, c.vocab_size), ("embed", "vocab"), c)
        logits_BxTxV = unembed(c, x_BxTxD, head)
        return (x_BxTxD, logits_BxTxV) if return_hidden else logits_BxTxV


def unembed(c: ModelConfig, x_BxTxD, head):
    """The LM head: float32 logits from backbone states. `head` is the token embedding (V, D) when tied, else the
    lm_head kernel (D, V). `lm_head_params` picks it from a params tree, for scoring a few positions only."""
    eq = "btd,vd->btv" if c.tie_embeddings else "btd,dv->btv"
    logits_BxTxV = jnp.einsum(eq, x_BxTxD, head.astype(DTYPES[c.dtype]))
    return constrain(logits_BxTxV, ("batch", "length", "act_vocab")).astype(jnp.float32)


def lm_head_params(c: ModelConfig, params):
    """The `head` argument of `unembed` in GPT's params (boxed with their logical axes or not)."""
    return nn.unbox(params["wte"] if c.tie_embeddings else params["lm_head"])


def count_params(params) -> int:
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params))


def chunked_cross_entropy(c: ModelConfig, x_BxTxD, head, targets_BxT, weights_BxT=None, chunks: int = 1,
                          impl: str = "auto"):
    """cross_entropy(unembed(c, x, head), ...) without the whole logits: the sequence in `chunks` pieces, scanned;
    each piece's float32 logits are made, reduced to its summed loss and remade in the backward pass
    (jax.checkpoint), so at most one piece's logits exist. The rows stay split over the mesh as the batch is."""
    B, T, D = x_BxTxD.shape
    if T % chunks:
        raise ConfigError(f"model.loss_chunks: {chunks} pieces do not split a sequence of {T}")
    if weights_BxT is None:
        weights_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
    weights_BxT = weights_BxT.astype(jnp.float32)
    nll_fn = kernels.token_nll_fn(impl)

    def pieces(a):  # (B, T, ...) -> (chunks, B, T / chunks, ...)
        return jnp.swapaxes(a.reshape(B, chunks, T // chunks, *a.shape[2:]), 0, 1)

    @jax.checkpoint
    def piece(x_BxCxD, t_BxC, w_BxC):
        return (nll_fn(unembed(c, x_BxCxD, head), t_BxC) * w_BxC).sum()

    total_nll, _ = jax.lax.scan(lambda acc, xs: (acc + piece(*xs), None), jnp.zeros((), jnp.float32),
                                (pieces(x_BxTxD), pieces(targets_BxT), pieces(weights_BxT)))
    total = weights_BxT.sum()
    return total_nll / jnp.maximum(total, 1.0), total


def cross_entropy(logits_BxTxV, targets_BxT, weights_BxT=None, impl: str = "auto"):
    """Mean next-token cross-entropy (nats), weighted; returns (loss, total weight). `impl` is model.loss_impl."""
    nll_BxT = kernels.token_nll_fn(impl)(logits_BxTxV, targets_BxT)
    if weights_BxT is None:
        weights_BxT = jnp.ones_like(nll_BxT)
    weights_BxT = weights_BxT.astype(jnp.float32)
    total = weights_BxT.sum()
    return (nll_BxT * weights_BxT).sum() / jnp.maximum(total, 1.0), total
