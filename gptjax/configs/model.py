"""The model's fields, once: `ModelConfig` (shape, numerics, implementations) with its defaults, which
`gptjax/configs/default.py` turns into the `model` section of every config and `gptjax/model.py` builds the GPT
from. Plain Python: loading a config imports no jax."""

import dataclasses
import math

from gptjax.errors import ConfigError

# The implementations behind model.attention_impl, norm_impl and loss_impl (gptjax/kernels).
ATTENTION_IMPLS = ("auto", "reference", "cpu_fused", "cudnn", "splash")
NORM_IMPLS = ("auto", "reference", "cpu_fused")
LOSS_IMPLS = NORM_IMPLS
# model.embed_impl: the token and position lookups. gather: jnp.take. onehot: a one-hot matmul, which XLA's SPMD
# partitioner shards where it replicates a gathered table split over the mesh. auto: onehot when the table is split.
EMBED_IMPLS = ("auto", "gather", "onehot")
# model.remat: what a block keeps for the backward pass (gptjax/model.py::remat_policy).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_qkv_proj", "minimal")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's shape and numerics. This is the one list of model defaults: `configs/default.py` builds the
    `model` section of every config from it (`model_config_dict`), adding only `preset`."""

    vocab_size: int = 0  # 0: take it from the tokenizer
    num_layers: int = 4
    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 0  # 0: 4 * d_model
    max_len: int = 256  # size of the position table: the context
    pos_embedding: str = "learned"  # learned | sinusoidal
    norm: str = "pre"  # LayerNorm placement: pre (GPT-2/3: x + f(LN(x))) | post (GPT-1: LN(x + f(x)))
    final_norm: bool = True  # a LayerNorm after the last block (GPT-2 added it; the gpt1 preset turns it off)
    activation: str = "gelu"  # MLP nonlinearity: gelu (tanh approximation, GPT-1/2/3) | relu (the Transformer's)
    scale_residual_init: bool = True  # GPT-2: residual output projections start at init_std / sqrt(2 * layers)
    tie_embeddings: bool = True  # the LM head is the token embedding (all GPTs)
    # Token embeddings times sqrt(d_model) before positions are added, as the original Transformer did with its
    # sinusoids (values up to 1, which would drown embeddings drawn at init_std); GPTs do not scale.
    embed_scale: bool = False
    use_bias: bool = True
    dropout: float = 0.0  # on embeddings, attention weights and residual branches (GPT-1/2 used 0.1)
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype: bfloat16 for mixed precision
    scan_layers: bool = False  # nn.scan over blocks: one compiled block, faster compiles for deep models
    remat: str = "none"  # what each block keeps for the backward pass: one of REMAT_POLICIES (none keeps all)
    # Implementations (gptjax/kernels): reference is the plain definition; auto picks per platform.
    attention_impl: str = "auto"  # auto | reference | cpu_fused | cudnn | splash
    norm_impl: str = "auto"  # auto | reference | cpu_fused
    loss_impl: str = "auto"  # auto | reference | cpu_fused
    embed_impl: str = "auto"  # auto | gather | onehot (EMBED_IMPLS)
    # The loss in this many pieces of the sequence, each piece's logits made, reduced and remade in the backward pass,
    # so the whole float32 logits of a step never exist (MaxText's num_vocab_tiling); 1: whole logits.
    loss_chunks: int = 1
    # Scanned layers in a lower compute dtype: each layer casts its own slice of the stacked weights (an optimization
    # barrier keeps XLA from hoisting one lower-precision copy of the whole stack out of the loop: 0.85 GiB less per
    # chip for GPT-3 175B on a v6e-256). Off by default: the layers' FSDP all-gathers then move float32 (GPT-2 124M
    # on v5e:2x2: 24% more all-gather bytes and 5% more memory), so it pays only where memory is what binds.
    cast_in_layer: bool = False

    @classmethod
    def from_config(cls, cfg, vocab_size: int | None = None) -> "ModelConfig":
        """Builds the model config from the `model` ConfigDict; `vocab_size` fills a 0 in the config."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in fields}
        if not kwargs.get("vocab_size"):
            kwargs["vocab_size"] = vocab_size
        if not kwargs["vocab_size"]:
            raise ConfigError("model.vocab_size: unknown; set it or let the tokenizer set it")
        return cls(**kwargs)

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def residual_init_std(self) -> float:
        return self.init_std / math.sqrt(2 * self.num_layers) if self.scale_residual_init else self.init_std


def model_config_dict():
    """The defaults of every model field, as the `model` section of a ConfigDict."""
    import ml_collections

    return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
