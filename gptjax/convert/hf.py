"""Hugging Face transformers GPT-2 checkpoints <-> gptjax params, with numpy and safetensors only.

A transformers GPT-2 directory holds config.json and model.safetensors (or shards listed in
model.safetensors.index.json). HF GPT-2 uses Conv1D layers, whose weights are stored (in, out) like gptjax
kernels, so the mapping is reshapes only: c_attn.weight (D, 3D) is qkv_kernel (D, 3, H, K), attn.c_proj.weight
(D, D) is out_kernel (H, K, D). Pickled checkpoints (pytorch_model.bin) are refused: unpickling can run code.
"""

import json
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can read bf16 checkpoints)
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from gptjax import files
from gptjax.errors import CheckpointError
from gptjax.model import GPT, ModelConfig

# gptjax path inside block h_i -> HF name inside transformer.h.{i}
_BLOCK_NAMES = {
    ("ln_1", "scale"): "ln_1.weight",
    ("ln_1", "bias"): "ln_1.bias",
    ("attn", "qkv_kernel"): "attn.c_attn.weight",
    ("attn", "qkv_bias"): "attn.c_attn.bias",
    ("attn", "out_kernel"): "attn.c_proj.weight",
    ("attn", "out_bias"): "attn.c_proj.bias",
    ("ln_2", "scale"): "ln_2.weight",
    ("ln_2", "bias"): "ln_2.bias",
    ("mlp", "fc_kernel"): "mlp.c_fc.weight",
    ("mlp", "fc_bias"): "mlp.c_fc.bias",
    ("mlp", "proj_kernel"): "mlp.c_proj.weight",
    ("mlp", "proj_bias"): "mlp.c_proj.bias",
}
_TOP_NAMES = {("wte",): "wte.weight", ("wpe",): "wpe.weight", ("ln_f", "scale"): "ln_f.weight",
              ("ln_f", "bias"): "ln_f.bias"}
_IGNORED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers of old checkpoints
_PREFIX = "transformer."

# config.json field -> (GPT2Config default, values gptjax can represent)
_REQUIRED = {
    "model_type": ("gpt2", ("gpt2",)),
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
    "reorder_and_upcast_attn": (False, (False,)),
    "add_cross_attention": (False, (False,)),
    "tie_word_embeddings": (True, (True,)),
}
_ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions", "num_attention_heads": "n_head",
            "num_hidden_layers": "n_layer"}


def _hf_names(num_layers: int) -> dict[tuple, str]:
    """Every gptjax param path (non-scan layout) -> its HF key without the "transformer." prefix."""
    names = dict(_TOP_NAMES)
    for i in range(num_layers):
        names.update({(f"h_{i}", *path): f"h.{i}.{name}" for path, name in _BLOCK_NAMES.items()})
    return names


def _hf_shape(path: tuple, shape: tuple) -> tuple:
    """The HF (Conv1D) shape of a gptjax param: attention tensors have their head axes merged."""
    if path[-1] == "qkv_kernel":
        return shape[0], math.prod(shape[1:])
    if path[-1] == "qkv_bias":
        return (math.prod(shape),)
    if path[-1] == "out_kernel":
        return math.prod(shape[:-1]), shape[-1]
    return tuple(shape)


def _param_shapes(cfg: ModelConfig) -> dict[tuple, tuple]:
    """Flat path -> shape of GPT(cfg)'s params, without allocating them."""
    abstract = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return {p: tuple(x.shape) for p, x in traverse_util.flatten_dict(nn.unbox(abstract["params"])).items()}


def stack_layers(params: dict, num_layers: int) -> dict:
    """Non-scan layout (h_0 .. h_{L-1}) -> scan layout (params['h']['block'], leaves with a leading layer axis)."""
    layer_keys = {k for k in params if re.fullmatch(r"h_\d+", k)}
    if layer_keys != {f"h_{i}" for i in range(num_layers)}:
        raise CheckpointError(f"params have layers {sorted(layer_keys)}, expected h_0 .. h_{num_layers - 1}")
    blocks = [params[f"h_{i}"] for i in range(num_layers)]
    rest = {k: v for k, v in params.items() if k not in layer_keys}
    return {**rest, "h": {"block": jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)}}


def unstack_layers(params: dict, num_layers: int) -> dict:
    """Scan layout (params['h']['block']) -> non-scan layout (h_0 .. h_{L-1}), numpy leaves."""
    block = params["h"]["block"]
    depths = {x.shape[0] for x in jax.tree.leaves(block)}
    if depths != {num_layers}:
        raise CheckpointError(f"scanned params have leading layer axes {sorted(depths)}, expected {num_layers}")
    rest = {k: v for k, v in params.items() if k != "h"}
    return {**rest, **{f"h_{i}": jax.tree.map(lambda x: np.asarray(x[i]), block) for i in range(num_layers)}}


def _check_dir(hf_dir: str) -> None:
    if not os.path.isdir(hf_dir):
        what = "is a file, not a directory" if os.path.exists(hf_dir) else "no such directory"
        raise CheckpointError(f"--hf_dir={hf_dir}: {what} (a transformers GPT-2 directory: config.json and "
                              "model.safetensors)")


def _read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    hf = files.read_json(path, CheckpointError, "a transformers config.json")
    for alias, name in _ALIASES.items():
        if alias in hf:
            hf.setdefault(name, hf[alias])
    for field, (default, allowed) in _REQUIRED.items():
        value = hf.get(field, default)
        if value not in allowed:
            raise CheckpointError(f"{path}: {field}={value!r} cannot be represented in gptjax (needs one of {allowed})")
    return hf


def _model_overrides(hf: dict, path: str = "config.json") -> dict:
    """gptjax `config.model` fields for a GPT2Config dict (GPT2Config's defaults where a field is absent); a field
    that is not a number is one CheckpointError naming `path`, the file the dict came from."""
    def number(field, default, kind=int):
        value = hf.get(field, default)
        value = default if field == "n_inner" and not value else value  # GPT2Config's n_inner=None: 4 * n_embd
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                or value < 0:
            raise CheckpointError(f"{path}: {field}={value!r} is not a {'whole ' * (kind is int)}number")
        return kind(value)

    d_model = number("n_embd", 768)
    return dict(
        vocab_size=number("vocab_size", 50257),
        num_layers=number("n_layer", 12),
        d_model=d_model,
        num_heads=number("n_head", 12),
        d_ff=number("n_inner", 4 * d_model),
        max_len=number("n_positions", 1024),
        layer_norm_eps=number("layer_norm_epsilon", 1e-5, float),
        norm="pre",
        tie_embeddings=True,
        pos_embedding="learned",
        use_bias=True,
        dropout=number("resid_pdrop", 0.1, float),
    )


def _read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors or of its shards, keys without the "transformer." prefix."""
    single, index = os.path.join(hf_dir, "model.safetensors"), os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(single):
        shards = [single]
    elif os.path.exists(index):
        weight_map = files.read_json(index, CheckpointError, "a safetensors index (JSON with a weight_map)").get(
            "weight_map")
        if not isinstance(weight_map, dict) or not weight_map or \
                not all(isinstance(name, str) and name for name in weight_map.values()):
            raise CheckpointError(f"{index}: not a safetensors index: no weight_map of tensor name: file name")
        shards = [os.path.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
        missing = [f for f in shards if not os.path.isfile(f)]
        if missing:
            raise CheckpointError(f"{missing[0]}: no such file (listed in {index})"
                                  + (f"; and {len(missing) - 1} more shards are missing" if len(missing) > 1 else ""))
    else:
        for name in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
            if os.path.exists(os.path.join(hf_dir, name)):
                raise CheckpointError(f"{os.path.join(hf_dir, name)}: pickled PyTorch checkpoints are not loaded "
                                 "(unpickling can run code); convert it to safetensors (model.safetensors) first")
        raise CheckpointError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for file in shards:
        if os.path.isdir(file):
            raise CheckpointError(f"{file}: is a directory, not a safetensors file")
        try:
            with safe_open(file, framework="numpy") as f:
                for key in f.keys():
                    tensors[key.removeprefix(_PREFIX)] = f.get_tensor(key)
        except SafetensorError as err:  # its header or data do not fit the file: cut short, or not safetensors
            with open(file, "rb") as f:
                why = files.damaged(f.read(16), "a safetensors file")
            raise CheckpointError(f"{file}: {why} ({' '.join(str(err).split())[:160]}); download it again") \
                from None
    return tensors


def load_hf_gpt2(hf_dir: str) -> tuple[dict, dict]:
    """Reads a transformers GPT-2 directory; returns (model_overrides, params).

    model_overrides are gptjax `config.model` fields; params is the float32 numpy pytree, non-scan layout
    (h_0 .. h_{L-1}), with exactly the keys and shapes of GPT(ModelConfig(**model_overrides)).init(...)['params']
    (use `stack_layers` for scan_layers=True). Raises ValueError for what gptjax cannot represent.
    """
    _check_dir(hf_dir)
    overrides = _model_overrides(_read_config(hf_dir), os.path.join(hf_dir, "config.json"))
    tensors = _read_tensors(hf_dir)
    names = _hf_names(overrides["num_layers"])
    flat = {}
    for path, shape in _param_shapes(ModelConfig(**overrides)).items():
        name = names[path]
        if name not in tensors:
            raise CheckpointError(f"{hf_dir}: tensor {_PREFIX}{name} is missing")
        x = tensors.pop(name)
        if x.shape != _hf_shape(path, shape):
            raise CheckpointError(f"{hf_dir}: {_PREFIX}{name} has shape {x.shape}, config.json implies "
                             f"{_hf_shape(path, shape)}")
        flat[path] = np.asarray(x, np.float32).reshape(shape)
    head = tensors.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(np.asarray(head, np.float32), flat[("wte",)]):
        raise CheckpointError(f"{hf_dir}: lm_head.weight differs from {_PREFIX}wte.weight; gptjax ties them")
    unexpected = sorted(k for k in tensors if not _IGNORED.fullmatch(k))
    if unexpected:
        raise CheckpointError(f"{hf_dir}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return overrides, traverse_util.unflatten_dict(flat)


def save_hf_gpt2(params: dict, model_cfg: ModelConfig, out_dir: str, extra_config: dict | None = None) -> None:
    """Writes params (either layout, boxed or not) as a transformers GPT2LMHeadModel directory.

    config.json gets the GPT2Config fields of `model_cfg` (all three dropouts = model_cfg.dropout, no token
    ids) updated with `extra_config` (e.g. {"eos_token_id": 50256}); model.safetensors gets float32 tensors
    with the "transformer." prefix and no lm_head.weight (transformers ties it to wte on load).
    """
    c = model_cfg
    for ok, field in ((c.norm == "pre", "norm"), (c.pos_embedding == "learned", "pos_embedding"),
                      (c.tie_embeddings, "tie_embeddings"), (c.use_bias, "use_bias"),
                      (not c.embed_scale, "embed_scale")):
        if not ok:
            raise CheckpointError(f"model.{field}={getattr(c, field)!r} cannot be represented by HF GPT-2")
    params = nn.unbox(params)
    if "h" in params:
        params = unstack_layers(params, c.num_layers)
    flat = traverse_util.flatten_dict(params)
    names = _hf_names(c.num_layers)
    if set(flat) != set(names):
        raise CheckpointError(f"params do not match model_cfg: differing paths {sorted(set(flat) ^ set(names))[:5]}")
    tensors = {_PREFIX + names[p]: np.ascontiguousarray(np.asarray(x, np.float32).reshape(_hf_shape(p, x.shape)))
               for p, x in flat.items()}
    hf = dict(
        architectures=["GPT2LMHeadModel"],
        model_type="gpt2",
        vocab_size=c.vocab_size,
        n_positions=c.max_len,
        n_embd=c.d_model,
        n_layer=c.num_layers,
        n_head=c.num_heads,
        n_inner=None if c.ff_width == 4 * c.d_model else c.ff_width,
        activation_function="gelu_new",
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=c.layer_norm_eps,
        initializer_range=c.init_std,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        dtype="float32",
    )
    hf.update(extra_config or {})
    files.writable_dir(out_dir, "a transformers GPT-2 directory", create=True)
    with files.writing(os.path.join(out_dir, "config.json")):
        files.write_text(os.path.join(out_dir, "config.json"), json.dumps(hf, indent=2))
    weights = os.path.join(out_dir, "model.safetensors")
    try:
        save_file(tensors, weights, metadata={"format": "pt"})
    except SafetensorError as err:  # safetensors reports a refused write as its own error, with the OS's errno
        code = re.search(r"\(os error (\d+)\)", str(err))
        refused = code and files.write_error(OSError(int(code.group(1)), str(err)), weights)
        if not refused:
            raise
        raise refused from err
