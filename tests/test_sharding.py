"""The same run on 1 device and on 8 virtual devices with several meshes gives the same losses and gradients."""

import jax
import numpy as np
import pytest

from gptjax import configs, sharding
from gptjax.objectives import LanguageModeling
from helpers import lm_trainer

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]


def tiny_config(mesh_shape, accum=1, scan=False, act_embed=None):
    c = configs.get_config()
    c.model.update(vocab_size=64, num_layers=2, d_model=32, num_heads=4, max_len=16, dropout=0.1, scan_layers=scan)
    c.data.seq_len = 16
    c.train.update(batch_size=16, grad_accum_steps=accum, steps=10)
    c.optim.update(lr=1e-2, warmup_steps=2)
    c.mesh.shape = mesh_shape
    c.mesh.logical_axis_rules = sharding.with_rule(c.mesh.logical_axis_rules, "act_embed", act_embed)
    return configs.finalize(c)


def run(mesh_shape, accum=1, steps=3, scan=False, act_embed=None):
    """Losses of `steps` train steps, and the gradients at the initial state."""
    c = tiny_config(mesh_shape, accum, scan, act_embed)
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))])
    trainer = lm_trainer(c, mesh)
    state = trainer.init_state(seed=0)
    rng = np.random.default_rng(0)
    batches = [LanguageModeling.from_windows(rng.integers(0, 64, (16, 17)).astype(np.int32)) for _ in range(steps)]
    with trainer.context():
        batch0 = sharding.host_local_to_global(batches[0], mesh)
        loss = lambda p, b, r: trainer.objective.loss(trainer.model, p, b, r)[0]  # noqa: E731
        grads = jax.jit(jax.grad(loss))(state.params, batch0, jax.random.PRNGKey(3))
        grads = jax.device_get(grads)
        losses = []
        for b in batches:
            state, out = trainer.train_step(state, sharding.host_local_to_global(b, mesh))
            losses.append(float(out["train_loss"]))
    return np.array(losses), grads, state


@pytest.fixture(scope="module")
def reference():
    return run((1, 1, 1))


@pytest.mark.slow  # about 12 s: a train state and step compiled for two meshes (the fast tier's sharded check is
# tests/test_evals_scoring.py::test_sharded_equals_one_device, a forward pass)
@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_equals_single_device(reference, mesh_shape):
    ref_losses, ref_grads, _ = reference
    losses, grads, state = run(mesh_shape)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)
    # The state really is sharded as the rules say.
    spec = state.params["h_0"]["mlp"]["fc_kernel"].sharding.spec
    expect = tuple(a if mesh_shape[sharding.MESH_AXES.index(a)] > 1 else a for a in ("fsdp", "tensor"))
    assert tuple(spec) == expect
    assert state.params["h_0"]["mlp"]["fc_kernel"].sharding.mesh.devices.size == 8


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape,act_embed", [((2, 2, 2), None), ((1, 2, 4), "tensor"), ((4, 1, 2), "tensor")])
def test_gradient_accumulation_equals_full_batch(mesh_shape, act_embed):
    """4 micro-batches give the same losses as one batch (dropout off: the RNG streams differ)."""
    def run_nodrop(accum):
        c = tiny_config(mesh_shape, accum, act_embed=act_embed)
        with c.unlocked():
            c.model.dropout = 0.0
        mesh = sharding.make_mesh(mesh_shape)
        trainer = lm_trainer(c, mesh)
        state = trainer.init_state(0)
        rng = np.random.default_rng(0)
        out = []
        with trainer.context():
            for _ in range(3):
                b = sharding.host_local_to_global(LanguageModeling.from_windows(rng.integers(0, 64, (16, 17)).astype(np.int32)), mesh)
                state, m = trainer.train_step(state, b)
                out.append(float(m["train_loss"]))
        return np.array(out)

    np.testing.assert_allclose(run_nodrop(4), run_nodrop(1), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(1, 2, 4), (4, 1, 2)])
def test_activations_over_tensor_equal_one_device(reference, mesh_shape):
    """`act_embed` -> tensor (gpt3.py's rule where it shards over tensor): the residual stream split over the
    tensor axis gives one device's losses and gradients (micro-batches: the accumulation test above)."""
    ref_losses, ref_grads, _ = reference
    losses, grads, _ = run(mesh_shape, act_embed="tensor")
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)


def _logits_error(mesh_shape, rows, act_embed):
    """Largest difference between the logits of `rows` rows on `mesh_shape` and on one device."""
    c = tiny_config(mesh_shape, act_embed=act_embed)
    mesh = sharding.make_mesh(mesh_shape)
    trainer = lm_trainer(c, mesh)
    state = trainer.init_state(seed=0)
    tokens = np.random.default_rng(0).integers(0, 64, (rows, 16)).astype(np.int32)
    one = trainer.model.apply({"params": jax.device_get(state.params)}, tokens)
    with trainer.context():
        x = sharding.host_local_to_global({"x": tokens}, mesh)["x"]
        sharded = jax.jit(lambda p, x: trainer.model.apply({"params": p}, x))(state.params, x)
    return float(np.max(np.abs(jax.device_get(sharded) - one)))


@pytest.mark.slow
def test_a_2x2x2_mesh_with_four_rows_is_right_with_the_default_rules():
    assert _logits_error((2, 2, 2), 4, None) < 1e-5
    assert _logits_error((2, 2, 2), 8, "tensor") < 1e-5


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="jax 0.10.2 (XLA:CPU, Shardy or GSPMD alike): on mesh (2, 2, 2) with 4 rows "
                   "and act_embed -> tensor the attention's output is wrong (0.02 off, the logits 0.2); when this "
                   "passes, act_embed -> tensor can become the default (gptjax/configs/default.py)")
def test_a_2x2x2_mesh_with_four_rows_and_activations_over_tensor():
    assert _logits_error((2, 2, 2), 4, "tensor") < 1e-5


@pytest.mark.slow
def test_scan_layers_shard_over_the_mesh(reference):
    losses, _, state = run((1, 2, 4), scan=True, steps=1)
    assert state.params["h"]["block"]["mlp"]["fc_kernel"].shape[0] == 2  # stacked layers
    assert tuple(state.params["h"]["block"]["mlp"]["fc_kernel"].sharding.spec) == (None, "fsdp", "tensor")
    assert np.isfinite(losses).all()


def test_bad_mesh_and_batch_are_one_line_errors():
    with pytest.raises(configs.ConfigError, match=r"mesh.shape: \(2, 2, 4\) needs 16 devices"):
        sharding.make_mesh((2, 2, 4))
    from gptjax.trainer import check_batch_sizes

    c = tiny_config((8, 1, 1))
    with c.unlocked():
        c.train.batch_size = 12
    with pytest.raises(configs.ConfigError, match="train.batch_size: .* do not divide over 8"):
        check_batch_sizes(c, sharding.make_mesh((8, 1, 1)))
