"""The GPT decoder in Flax Linen: embeddings, causal self-attention with a decode cache, GELU MLP, blocks.

Shapes use suffixes: B batch, T query length, S key length, D model width, H heads, K head width, F MLP width,
V vocabulary, L layers. Every parameter carries logical axis names (`sharding.py` maps them to the mesh) and the
activations are constrained at block boundaries.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "float64": jnp.float64}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 0  # 0: 4 * d_model
    max_len: int = 256
    pos_embedding: str = "learned"  # learned | sinusoidal
    norm: str = "pre"  # pre (GPT-2/3) | post (GPT-1)
    tie_embeddings: bool = True
    use_bias: bool = True
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"

    @classmethod
    def from_config(cls, cfg, vocab_size: int | None = None) -> "ModelConfig":
        """Builds the model config from the `model` ConfigDict; `vocab_size` fills a 0 in the config."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in fields}
        if not kwargs.get("vocab_size"):
            kwargs["vocab_size"] = vocab_size
        if not kwargs["vocab_size"]:
            raise ValueError("model.vocab_size: unknown; set it or let the tokenizer set it")
        return cls(**kwargs)

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def _param(module, name, init_fn, shape, axes, cfg):
    init = nn.with_logical_partitioning(init_fn, axes)
    return module.param(name, init, shape, DTYPES[cfg.param_dtype])


class LayerNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        scale = _param(self, "scale", nn.initializers.ones, (c.d_model,), ("embed",), c)
        bias = _param(self, "bias", nn.initializers.zeros, (c.d_model,), ("embed",), c)
        return _layer_norm(x, scale, bias, c.layer_norm_eps, c.dtype)


# LayerNorm and attention have hand-written backward passes, for speed on XLA:CPU (benchmarks/README.md). With
# autodiff, the LayerNorm backward left a chain of elementwise ops along the residual stream that XLA fused, and
# recomputed transposed, into the weight-gradient matmuls of every later layer: steps were 1.5x slower. The
# attention backward takes the softmax term from rowsum(dout * out).
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, eps: float, dtype: str):
    return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
    x32 = x.astype(jnp.float32)
    centered = x32 - x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(centered).mean(-1, keepdims=True) + eps)
    xhat = centered * rstd
    y = (xhat * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(DTYPES[dtype])
    return y, (xhat, rstd, scale, jnp.zeros((0,), x.dtype))  # the empty array carries x's dtype


def _layer_norm_bwd(eps, dtype, res, dy):
    xhat, rstd, scale, x_dtype = res
    dy32 = dy.astype(jnp.float32)
    rows = tuple(range(dy.ndim - 1))
    g = dy32 * scale.astype(jnp.float32)
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx.astype(x_dtype.dtype), (dy32 * xhat).sum(rows).astype(scale.dtype), dy32.sum(rows).astype(scale.dtype)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@jax.custom_vjp
def _attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS):
    """softmax(q k / sqrt(K), masked) v, computed heads-major; `keep` is the dropout multiplier or None."""
    return _attention_fwd(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS)[0]


def _attention_fwd(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS):
    dtype = q_BxTxHxK.dtype
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK = (a.transpose(0, 2, 1, 3) for a in (q_BxTxHxK, k_BxSxHxK, v_BxSxHxK))
    logits_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, preferred_element_type=jnp.float32)
    logits_BxHxTxS = logits_BxHxTxS * (1 / math.sqrt(q_BxTxHxK.shape[-1]))
    # A finite floor keeps fully masked rows (left padding) from turning into NaN.
    logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, jnp.finfo(jnp.float32).min)
    probs_BxHxTxS = jnp.exp(logits_BxHxTxS - logits_BxHxTxS.max(-1, keepdims=True))
    probs_BxHxTxS = probs_BxHxTxS * (1 / probs_BxHxTxS.sum(-1, keepdims=True))
    dropped_BxHxTxS = probs_BxHxTxS if keep_BxHxTxS is None else probs_BxHxTxS * keep_BxHxTxS
    probs_BxHxTxS = probs_BxHxTxS.astype(dtype)
    out_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", dropped_BxHxTxS.astype(dtype), v_BxHxSxK)
    res = (q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, probs_BxHxTxS, keep_BxHxTxS, out_BxHxTxK, mask_BxTxS)
    return out_BxHxTxK.transpose(0, 2, 1, 3), res


def _attention_bwd(res, dout_BxTxHxK):
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, probs_BxHxTxS, keep_BxHxTxS, out_BxHxTxK, mask_BxTxS = res
    dtype, scale = q_BxHxTxK.dtype, 1 / math.sqrt(q_BxHxTxK.shape[-1])
    dout_BxHxTxK = dout_BxTxHxK.transpose(0, 2, 1, 3)
    dropped_BxHxTxS = probs_BxHxTxS if keep_BxHxTxS is None else (probs_BxHxTxS * keep_BxHxTxS).astype(dtype)
    dv_BxHxSxK = jnp.einsum("bhts,bhtk->bhsk", dropped_BxHxTxS, dout_BxHxTxK)
    dprobs_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", dout_BxHxTxK, v_BxHxSxK, preferred_element_type=jnp.float32)
    if keep_BxHxTxS is not None:
        dprobs_BxHxTxS = dprobs_BxHxTxS * keep_BxHxTxS
    # Softmax backward p * (dp - sum_s p dp), where sum_s p dp = dout . out (with dropout too).
    row_BxHxT = jnp.einsum("bhtk,bhtk->bht", dout_BxHxTxK.astype(jnp.float32), out_BxHxTxK.astype(jnp.float32))
    dlogits_BxHxTxS = probs_BxHxTxS.astype(jnp.float32) * (dprobs_BxHxTxS - row_BxHxT[..., None])
    # Masked logits get no gradient (rows that are all masked, left padding, have uniform probs).
    dlogits_BxHxTxS = jnp.where(mask_BxTxS[:, None], dlogits_BxHxTxS * scale, 0.0).astype(dtype)
    dq_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", dlogits_BxHxTxS, k_BxHxSxK)
    dk_BxHxSxK = jnp.einsum("bhts,bhtk->bhsk", dlogits_BxHxTxS, q_BxHxTxK)
    back = lambda a: a.transpose(0, 2, 1, 3)  # noqa: E731
    return back(dq_BxHxTxK), back(dk_BxHxSxK), back(dv_BxHxSxK), None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _attend_heads(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, mask_BxTxS):
    """Attention on heads-major arrays, for decoding (no dropout, no custom backward)."""
    logits_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK, preferred_element_type=jnp.float32)
    logits_BxHxTxS = jnp.where(mask_BxTxS[:, None], logits_BxHxTxS * (1 / math.sqrt(q_BxHxTxK.shape[-1])),
                               jnp.finfo(jnp.float32).min)
    probs_BxHxTxS = jnp.exp(logits_BxHxTxS - logits_BxHxTxS.max(-1, keepdims=True))
    probs_BxHxTxS = (probs_BxHxTxS * (1 / probs_BxHxTxS.sum(-1, keepdims=True))).astype(q_BxHxTxK.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", probs_BxHxTxS, v_BxHxSxK)


def _causal_mask(q_pos_T, S: int, kv_mask_BxS):
    """Query t sees key slots <= q_pos_T[t] that kv_mask_BxS (if given) marks real: bool (B or 1, T, S)."""
    mask_1xTxS = (jnp.arange(S)[None, :] <= q_pos_T[:, None])[None]
    return mask_1xTxS if kv_mask_BxS is None else mask_1xTxS & kv_mask_BxS[:, None, :].astype(bool)


class CausalSelfAttention(nn.Module):
    """Multi-head attention over earlier positions. With decode=True it keeps keys and values in a `cache`
    collection sized by the input it was initialised with, and each call appends its T positions."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, train: bool, decode: bool):
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
        q_BxTxHxK, k_BxSxHxK, v_BxSxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
        B, T = x_BxTxD.shape[:2]

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
                mask_BxTxS = _causal_mask(jnp.arange(T) + i, S, kv_mask_BxS)
                out_BxHxTxK = _attend_heads(q_BxHxTxK, key.value, value.value, mask_BxTxS)
                out_BxTxHxK = out_BxHxTxK.transpose(0, 2, 1, 3)
        if not decode or is_init:
            S = k_BxSxHxK.shape[1]
            mask_BxTxS = _causal_mask(jnp.arange(T), S, kv_mask_BxS)
            keep_BxHxTxS = None  # attention dropout as a multiplier, 0 or 1 / (1 - rate), from flax's Dropout
            if train and c.dropout:
                keep_BxHxTxS = nn.Dropout(c.dropout)(jnp.ones((B, H, T, S), jnp.float32), deterministic=False)
            out_BxTxHxK = _attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, keep_BxHxTxS)
        out_BxTxHxK = nn.with_logical_constraint(out_BxTxHxK, ("batch", "length", "act_heads", "kv"))

        # GPT-2: residual output projections scaled by 1/sqrt(2 * num_layers).
        w_o = _param(self, "out_kernel", nn.initializers.normal(c.init_std / math.sqrt(2 * c.num_layers)),
                     (H, K, D), ("heads", "kv", "embed"), c)
        y_BxTxD = jnp.einsum("bthk,hkd->btd", out_BxTxHxK, w_o.astype(dtype))
        if c.use_bias:
            y_BxTxD = y_BxTxD + _param(self, "out_bias", nn.initializers.zeros, (D,), ("embed",), c).astype(dtype)
        return y_BxTxD


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
        h_BxTxF = nn.with_logical_constraint(jax.nn.gelu(h_BxTxF, approximate=True), ("batch", "length", "act_mlp"))
        w_out = _param(self, "proj_kernel", nn.initializers.normal(c.init_std / math.sqrt(2 * c.num_layers)),
                       (F, D), ("mlp", "embed"), c)
        y_BxTxD = jnp.einsum("btf,fd->btd", h_BxTxF, w_out.astype(dtype))
        if c.use_bias:
            y_BxTxD = y_BxTxD + _param(self, "proj_bias", nn.initializers.zeros, (D,), ("embed",), c).astype(dtype)
        return y_BxTxD


class Block(nn.Module):
    """One transformer block; pre-LN: x + f(LN(x)); post-LN (GPT-1): LN(x + f(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS, train: bool, decode: bool):
        c = self.cfg
        drop = nn.Dropout(c.dropout)
        attn = CausalSelfAttention(c, name="attn")
        mlp = MLP(c, name="mlp")
        ln_1, ln_2 = LayerNorm(c, name="ln_1"), LayerNorm(c, name="ln_2")
        if c.norm == "pre":
            x_BxTxD = x_BxTxD + drop(attn(ln_1(x_BxTxD), kv_mask_BxS, train, decode), deterministic=not train)
            x_BxTxD = x_BxTxD + drop(mlp(ln_2(x_BxTxD)), deterministic=not train)
        else:
            x_BxTxD = ln_1(x_BxTxD + drop(attn(x_BxTxD, kv_mask_BxS, train, decode), deterministic=not train))
            x_BxTxD = ln_2(x_BxTxD + drop(mlp(x_BxTxD), deterministic=not train))
        return nn.with_logical_constraint(x_BxTxD, ("batch", "length", "act_embed"))


class _ScanBlock(nn.Module):
    """Block with the (carry, broadcast args) signature nn.scan wants."""

    cfg: ModelConfig
    train: bool
    decode: bool

    @nn.compact
    def __call__(self, x_BxTxD, kv_mask_BxS):
        return Block(self.cfg, name="block")(x_BxTxD, kv_mask_BxS, self.train, self.decode), None


def sinusoidal_table(max_len: int, d_model: int):
    """The 'Attention is all you need' position table, (max_len, d_model)."""
    pos = jnp.arange(max_len, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    table = jnp.zeros((max_len, d_model), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(pos * freq))
    return table.at[:, 1::2].set(jnp.cos(pos * freq[: d_model // 2]))


class GPT(nn.Module):
    """Decoder-only transformer language model; returns float32 logits (B, T, V)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT=None, kv_mask_BxS=None, train: bool = False, decode: bool = False):
        c = self.cfg
        dtype = DTYPES[c.dtype]
        B, T = tokens_BxT.shape
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
        x_BxTxD = jnp.take(wte, tokens_BxT, axis=0).astype(dtype)
        if c.pos_embedding == "learned":
            wpe = _param(self, "wpe", nn.initializers.normal(c.init_std / 2), (c.max_len, c.d_model), (None, "embed"), c)
            x_BxTxD = x_BxTxD + jnp.take(wpe, positions_BxT, axis=0).astype(dtype)
        else:
            x_BxTxD = x_BxTxD + jnp.take(sinusoidal_table(c.max_len, c.d_model), positions_BxT, axis=0).astype(dtype)
        x_BxTxD = nn.Dropout(c.dropout)(x_BxTxD, deterministic=not train)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("batch", "length", "act_embed"))

        if c.scan_layers:
            block = _ScanBlock
            if c.remat == "full":
                block = nn.remat(block, prevent_cse=False)
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxTxD, _ = stack(c, train, decode, name="h")(x_BxTxD, kv_mask_BxS)
        else:
            block = nn.remat(Block, static_argnums=(3, 4)) if c.remat == "full" else Block
            for i in range(c.num_layers):
                x_BxTxD = block(c, name=f"h_{i}")(x_BxTxD, kv_mask_BxS, train, decode)

        if c.norm == "pre":
            x_BxTxD = LayerNorm(c, name="ln_f")(x_BxTxD)
        if c.tie_embeddings:
            logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, wte.astype(dtype))
        else:
            head = _param(self, "lm_head", nn.initializers.normal(c.init_std), (c.d_model, c.vocab_size),
                          ("embed", "vocab"), c)
            logits_BxTxV = jnp.einsum("btd,dv->btv", x_BxTxD, head.astype(dtype))
        logits_BxTxV = nn.with_logical_constraint(logits_BxTxV, ("batch", "length", "act_vocab"))
        return logits_BxTxV.astype(jnp.float32)


def count_params(params) -> int:
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params))


def cross_entropy(logits_BxTxV, targets_BxT, weights_BxT=None):
    """Mean next-token cross-entropy (nats), weighted; returns (loss, total weight)."""
    nll_BxT = _token_nll(logits_BxTxV, targets_BxT)
    if weights_BxT is None:
        weights_BxT = jnp.ones_like(nll_BxT)
    total = weights_BxT.sum()
    return (nll_BxT * weights_BxT).sum() / jnp.maximum(total, 1.0), total


@jax.custom_vjp
def _token_nll(logits_BxTxV, targets_BxT):
    """-log softmax(logits)[target] per position; its backward is softmax - one_hot in one elementwise pass."""
    return _token_nll_fwd(logits_BxTxV, targets_BxT)[0]


def _token_nll_fwd(logits_BxTxV, targets_BxT):
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    target_logit_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return lse_BxT - target_logit_BxT, (logits_BxTxV, lse_BxT, targets_BxT)


def _token_nll_bwd(res, g_BxT):
    logits_BxTxV, lse_BxT, targets_BxT = res
    one_hot_BxTxV = targets_BxT[..., None] == jnp.arange(logits_BxTxV.shape[-1])
    probs_BxTxV = jnp.exp(logits_BxTxV - lse_BxT[..., None])
    return (probs_BxTxV - one_hot_BxTxV) * g_BxT[..., None], None


_token_nll.defvjp(_token_nll_fwd, _token_nll_bwd)
