"""Hugging Face GPT-2 conversion, checked by logits against transformers' own GPT2LMHeadModel.

The checks against transformers are in the slow tier (importing torch and transformers alone takes about 4 s);
the fast tier has the round trip through the safetensors layout and the refusals."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from gptjax.convert import hf
from gptjax.model import GPT, ModelConfig

SHAPE = dict(vocab_size=97, num_layers=2, d_model=64, num_heads=4, max_len=32)


def _torch_model(seed=0):
    """A small random GPT2LMHeadModel with LayerNorm parameters and biases that are not 1 and 0."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=97,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


def _jax_logits(cfg, params, tokens):
    return np.asarray(jax.jit(GPT(cfg).apply)({"params": params}, tokens))  # one program, not op by op


def _gptjax_params(cfg, seed=0):
    """Random gptjax params with perturbed LayerNorms and biases."""
    params = nn.unbox(jax.jit(GPT(cfg).init)(jax.random.key(seed), np.zeros((1, 1), np.int32))["params"])
    rng = np.random.default_rng(seed)

    def perturb(path, x):
        x = np.asarray(x)
        return x + 0.1 * rng.standard_normal(x.shape, np.float32) if path[-1].key.endswith(("scale", "bias")) else x

    return jax.tree_util.tree_map_with_path(perturb, params)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 97, (2, 32)).astype(np.int32)


@pytest.mark.slow
def test_import_from_transformers(tmp_path, tokens):
    model = _torch_model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    overrides, params = hf.load_hf_gpt2(str(tmp_path))
    assert overrides == dict(SHAPE, d_ff=256, layer_norm_eps=1e-5, norm="pre", tie_embeddings=True,
                             pos_embedding="learned", use_bias=True, dropout=0.0)
    cfg = ModelConfig(**overrides)
    expected = nn.unbox(jax.eval_shape(GPT(cfg).init, jax.random.key(0), tokens)["params"])
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), params) == jax.tree.map(lambda x: (x.shape, x.dtype), expected)
    np.testing.assert_allclose(_jax_logits(cfg, params, tokens), _torch_logits(model, tokens), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_export_to_transformers(tmp_path, tokens):
    from transformers import GPT2LMHeadModel

    cfg = ModelConfig(**SHAPE)
    params = _gptjax_params(cfg)
    hf.save_hf_gpt2(params, cfg, str(tmp_path), extra_config={"eos_token_id": 5})
    model, info = GPT2LMHeadModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    assert model.config.eos_token_id == 5 and model.config.n_inner is None
    np.testing.assert_allclose(_torch_logits(model.eval(), tokens), _jax_logits(cfg, params, tokens), atol=1e-4, rtol=0)


def test_round_trip_and_scan_layout(tmp_path, tokens):
    cfg = ModelConfig(**SHAPE, d_ff=96)
    params = _gptjax_params(cfg, seed=1)
    scan_cfg = ModelConfig(**SHAPE, d_ff=96, scan_layers=True)
    stacked = hf.stack_layers(params, cfg.num_layers)
    scan_shapes = nn.unbox(jax.eval_shape(GPT(scan_cfg).init, jax.random.key(0), tokens)["params"])
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, scan_shapes)
    np.testing.assert_allclose(_jax_logits(scan_cfg, stacked, tokens), _jax_logits(cfg, params, tokens), atol=1e-5)

    hf.save_hf_gpt2(stacked, scan_cfg, str(tmp_path))  # the scan layout is detected
    overrides, loaded = hf.load_hf_gpt2(str(tmp_path))
    assert ModelConfig(**overrides) == cfg
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    jax.tree.map(np.testing.assert_array_equal, hf.unstack_layers(stacked, cfg.num_layers), params)


@pytest.mark.slow
def test_sharded_checkpoint_with_old_buffers(tmp_path, tokens):
    """Shards listed by an index, keys without the "transformer." prefix, a tied lm_head and mask buffers."""
    model = _torch_model(seed=2)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    _, sharded = hf.load_hf_gpt2(str(tmp_path))

    flat = {k.removeprefix("transformer."): v.numpy() for k, v in model.state_dict().items()}
    flat.update({"lm_head.weight": flat["wte.weight"], "h.0.attn.bias": np.tril(np.ones((1, 1, 32, 32), np.float32)),
                 "h.0.attn.masked_bias": np.array(-1e4, np.float32)})
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.json").write_text((tmp_path / "config.json").read_text())
    save_file(flat, str(single / "model.safetensors"))
    overrides, params = hf.load_hf_gpt2(str(single))
    jax.tree.map(np.testing.assert_array_equal, params, sharded)
    np.testing.assert_allclose(_jax_logits(ModelConfig(**overrides), params, tokens), _torch_logits(model, tokens),
                               atol=1e-4, rtol=0)


def test_refuses_pickles_and_unrepresentable_configs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*convert it to safetensors") as err:
        hf.load_hf_gpt2(str(tmp_path))
    assert "\n" not in str(err.value)
    src = pathlib.Path(hf.__file__).parent
    assert not any("torch" in line for f in src.glob("*.py") for line in f.read_text().splitlines()
                   if "import" in line), "gptjax.convert must not import torch"
    assert all("torch.load" not in f.read_text() for f in src.parent.rglob("*.py"))

    for field, value in (("activation_function", "gelu"), ("scale_attn_by_inverse_layer_idx", True),
                         ("reorder_and_upcast_attn", True), ("tie_word_embeddings", False)):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", field: value}))
        with pytest.raises(ValueError, match=field):
            hf.load_hf_gpt2(str(tmp_path))

    for change in (dict(norm="post"), dict(pos_embedding="sinusoidal"), dict(tie_embeddings=False),
                   dict(use_bias=False)):
        with pytest.raises(ValueError, match=next(iter(change))):
            hf.save_hf_gpt2({}, ModelConfig(**SHAPE, **change), str(tmp_path / "out"))
