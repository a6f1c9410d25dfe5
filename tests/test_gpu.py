"""cuDNN flash attention (`model.attention_impl=cudnn`) on an NVIDIA GPU: the same model, losses and gradients as
the reference, `auto` picks it, and the real train step trains with it.

These run only where jax sees a GPU, and the suite forces the CPU unless asked otherwise:

  GPTJAX_TEST_PLATFORMS=cuda,cpu python -m pytest tests/test_gpu.py -q

On a CPU-only machine (CI) every test here is skipped.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import kernels
from gptjax.model import GPT, ModelConfig, cross_entropy

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs an NVIDIA GPU: GPTJAX_TEST_PLATFORMS=cuda,cpu on a GPU machine")

# Head size 64 and a length cuDNN's flash kernel takes; bf16 compute with fp32 master weights, as trained.
SMALL = ModelConfig(vocab_size=256, num_layers=2, d_model=256, num_heads=4, max_len=256, dtype="bfloat16",
                    param_dtype="float32", dropout=0.0)


def loss_and_grads(cfg, params, tokens):
    def loss_fn(p):
        logits = GPT(cfg).apply({"params": p}, tokens[:, :-1])
        return cross_entropy(logits, tokens[:, 1:], None, cfg.loss_impl)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(params)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def test_auto_picks_cudnn_for_half_precision_and_falls_back():
    ask = dict(dtype=jnp.bfloat16, dropout=False, kv_mask=False, segments=False, T=256, S=256)
    assert kernels.select_attention("auto", **ask) == "cudnn"
    assert kernels.select_attention("auto", **{**ask, "dtype": jnp.float16}) == "cudnn"
    for why in (dict(dtype=jnp.float32), dict(dropout=True), dict(kv_mask=True), dict(segments=True)):
        assert kernels.select_attention("auto", **{**ask, **why}) == "reference", why


def test_cudnn_equals_reference_on_the_whole_model():
    """bf16 compute: cuDNN's loss and every gradient agree with the reference's, and each is as close to the fp32
    reference as the bf16 reference is (flash attention reorders the sums; it must not lose more than bf16 does)."""
    tokens = jax.random.randint(jax.random.key(0), (4, 257), 0, SMALL.vocab_size)
    params = nn.unbox(GPT(SMALL).init(jax.random.key(1), tokens[:, :-1])["params"])
    run = {impl: loss_and_grads(dataclasses.replace(SMALL, attention_impl=impl), params, tokens)
           for impl in ("cudnn", "reference")}
    exact_loss, exact_grads = loss_and_grads(dataclasses.replace(SMALL, attention_impl="reference", dtype="float32"),
                                             params, tokens)
    (loss_c, grads_c), (loss_r, grads_r) = run["cudnn"], run["reference"]
    np.testing.assert_allclose(loss_c, loss_r, rtol=2e-3)
    np.testing.assert_allclose(loss_c, exact_loss, rtol=5e-3)
    flat_c, flat_r, flat_x = (jax.tree_util.tree_leaves_with_path(g) for g in (grads_c, grads_r, exact_grads))
    for (path, c), (_, r), (_, x) in zip(flat_c, flat_r, flat_x):
        name = jax.tree_util.keystr(path)
        assert rel_err(c, r) < 3e-2, (name, rel_err(c, r))
        assert rel_err(c, x) < 2 * rel_err(r, x) + 1e-2, (name, rel_err(c, x), rel_err(r, x))


def test_cudnn_is_what_the_model_runs():
    """The compiled training forward calls cuDNN's fused attention (not a silent fallback to the einsums)."""
    cfg = dataclasses.replace(SMALL, attention_impl="auto")
    tokens = jnp.zeros((2, 256), jnp.int32)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), tokens)["params"])
    hlo = jax.jit(lambda p: GPT(cfg).apply({"params": p}, tokens)).lower(params).compile().as_text()
    assert "__cudnn$fmha" in hlo


def test_train_steps_with_cudnn_follow_the_reference(tmp_path):
    """The real Trainer step (gptjax/runs/pretrain.py) with attention_impl=cudnn: five steps on the same batches give the
    reference's losses to bf16 accuracy, and the loss goes down."""
    from gptjax import configs, sharding
    from gptjax.objectives import LanguageModeling
    from helpers import lm_trainer

    windows = [np.random.default_rng(s).integers(0, 64, (8, 129), dtype=np.int32) for s in range(5)]
    losses = {}
    for impl in ("cudnn", "reference"):
        c = configs.get_config()
        c.model.update(num_layers=2, num_heads=4, d_model=256, max_len=128, vocab_size=256, dropout=0.0,
                       dtype="bfloat16", attention_impl=impl)
        c.data.seq_len = 128
        c.train.update(steps=5, batch_size=8)
        c.optim.update(warmup_steps=1, lr=3e-3)
        config = configs.finalize(c)
        mesh = sharding.make_mesh(config.mesh.shape)
        trainer = lm_trainer(config, mesh)
        state = trainer.init_state(config.seed)
        out_losses = []
        with trainer.context():
            for w in windows:
                state, out = trainer.train_step(state, sharding.host_local_to_global(
                    LanguageModeling.from_windows(w), mesh))
                out_losses.append(float(out["train_loss"]))
        losses[impl] = out_losses
    np.testing.assert_allclose(losses["cudnn"], losses["reference"], rtol=1e-2)
    assert losses["cudnn"][-1] < losses["cudnn"][0] - 0.3, losses
