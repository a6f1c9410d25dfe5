"""The GPT model: shapes, causality, presets, variants, mixed precision, scan layout, cached decoding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.configs import PAPER_PARAMS, PRESETS, apply_preset, get_config
from gptjax.convert.hf import stack_layers
from gptjax.model import GPT, ModelConfig, count_params

TINY = ModelConfig(vocab_size=61, num_layers=2, d_model=32, num_heads=4, max_len=24)


def init(cfg, T=8, seed=0):
    return nn.unbox(GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, T), jnp.int32))["params"])


def tokens(B=2, T=12, V=61, seed=1):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize("variant", [{}, {"norm": "post", "final_norm": False}, {"final_norm": False},
                                     {"activation": "relu", "scale_residual_init": False}, {"pos_embedding": "sinusoidal"}, {"tie_embeddings": False},
                                     {"use_bias": False}, {"d_ff": 48}])
def test_output_shape_and_finite(variant):
    cfg = dataclasses.replace(TINY, **variant)
    params = init(cfg)
    logits = GPT(cfg).apply({"params": params}, tokens())
    assert logits.shape == (2, 12, 61) and logits.dtype == jnp.float32
    assert bool(jnp.isfinite(logits).all())
    assert ("lm_head" in params) == (not cfg.tie_embeddings)
    assert ("wpe" in params) == (cfg.pos_embedding == "learned")
    assert ("ln_f" in params) == cfg.final_norm


@pytest.mark.parametrize("norm", ["pre", pytest.param("post", marks=pytest.mark.slow)])
def test_causal_by_gradient(norm):
    """d logits[t] / d embedding[s] is zero for every s > t and nonzero for s <= t."""
    cfg = dataclasses.replace(TINY, norm=norm)
    params = init(cfg)
    x = tokens(B=1, T=10)
    T = x.shape[1]

    def logits_sum(delta_TxD):
        # A perturbation of each position's input, added through the position table.
        p = dict(params, wpe=params["wpe"].at[:T].add(delta_TxD))
        return GPT(cfg).apply({"params": p}, x)[0].sum(-1)  # (T,)

    jac_TxTxD = jax.jit(jax.jacrev(logits_sum))(jnp.zeros((T, cfg.d_model)))
    for t in range(T):
        norms = jnp.abs(jac_TxTxD[t]).sum(-1)
        assert bool((norms[t + 1:] == 0).all()), f"position {t} depends on a later position"
        assert bool((norms[: t + 1] > 0).all()), f"position {t} ignores an earlier position"


# The small presets in the fast tier; tracing the deep ones (up to GPT-3's 96 layers) takes about a second each.
FAST_PRESETS = ("gpt1", "gpt2-small", "gpt3-small")


@pytest.mark.parametrize("name", [n if n in FAST_PRESETS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(PRESETS)])
def test_preset_parameter_counts(name):
    c = get_config()
    apply_preset(c.model, name)
    cfg = ModelConfig.from_config(c.model)
    shapes = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    n = count_params(shapes)
    if name == "gpt2-small":
        assert n == 124_439_808  # the well-known count with the 50257-token vocabulary
    tolerance = 0.001 if name in ("gpt3-175b", "gpt2-large", "gpt2-medium", "gpt2-xl") else 0.02
    assert abs(n / PAPER_PARAMS[name] - 1) < tolerance, f"{name}: {n:,} vs the paper's {PAPER_PARAMS[name]:,.0f}"


def test_gpt2_initialisation():
    cfg = ModelConfig(vocab_size=512, num_layers=4, d_model=256, num_heads=4, max_len=16)
    p = jax.jit(init, static_argnums=0)(cfg)
    assert abs(float(p["wte"].std()) - 0.02) < 0.002
    assert abs(float(p["h_0"]["mlp"]["fc_kernel"].std()) - 0.02) < 0.002
    scaled = 0.02 / np.sqrt(2 * cfg.num_layers)
    assert abs(float(p["h_0"]["mlp"]["proj_kernel"].std()) - scaled) < 0.1 * scaled
    assert abs(float(p["h_3"]["attn"]["out_kernel"].std()) - scaled) < 0.1 * scaled
    assert float(jnp.abs(p["h_0"]["attn"]["qkv_bias"]).max()) == 0.0
    assert float(p["h_0"]["ln_1"]["scale"].min()) == 1.0


def test_bf16_compute_with_fp32_params():
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    params = init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    x = tokens()
    lo = jax.jit(GPT(cfg).apply)({"params": params}, x)
    hi = jax.jit(GPT(TINY).apply)({"params": params}, x)
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, hi, atol=0.1)
    grads = jax.jit(jax.grad(lambda p: GPT(cfg).apply({"params": p}, x).mean()))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


@pytest.mark.slow  # the fast tier's bf16 test is the one above
def test_bf16_params():
    cfg = dataclasses.replace(TINY, dtype="bfloat16", param_dtype="bfloat16")
    params = init(cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert bool(jnp.isfinite(GPT(cfg).apply({"params": params}, tokens())).all())


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_layers_equal_unrolled(remat):
    params = init(TINY)
    scanned = dataclasses.replace(TINY, scan_layers=True, remat=remat)
    stacked = jax.tree.map(jnp.asarray, stack_layers(params, TINY.num_layers))
    x = tokens()
    np.testing.assert_allclose(
        GPT(scanned).apply({"params": stacked}, x), GPT(TINY).apply({"params": params}, x), atol=1e-5
    )


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cached_decoding_equals_full_forward(scan):
    cfg = dataclasses.replace(TINY, scan_layers=scan)
    params = init(TINY)
    if scan:
        params = jax.tree.map(jnp.asarray, stack_layers(params, TINY.num_layers))
    x = tokens(B=2, T=12)
    full = GPT(cfg).apply({"params": params}, x)
    cache = GPT(cfg).init(jax.random.key(0), jnp.zeros((2, 12), jnp.int32), decode=True)["cache"]
    # Prefill five tokens, then one at a time (one compiled step for the seven single tokens).
    decode = jax.jit(lambda p, c, x: GPT(cfg).apply({"params": p, "cache": c}, x, decode=True, mutable=["cache"]))
    logits, v = decode(params, cache, x[:, :5])
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-5)
    for t in range(5, 12):
        logits, v = decode(params, v["cache"], x[:, t:t + 1])
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_dropout_only_in_training():
    cfg = dataclasses.replace(TINY, dropout=0.5)
    params = init(cfg)
    x = tokens()
    a = GPT(cfg).apply({"params": params}, x)
    b = GPT(cfg).apply({"params": params}, x)
    np.testing.assert_array_equal(a, b)
    c = GPT(cfg).apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    d = GPT(cfg).apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert float(jnp.abs(c - d).max()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True, False])
def test_remat_policies_give_the_losses_and_gradients_of_none(scan):
    from gptjax.model import REMAT_POLICIES, cross_entropy

    cfg = dataclasses.replace(TINY, scan_layers=scan, dropout=0.1, attention_impl="reference")
    params = init(cfg)
    x, y = tokens(seed=1), tokens(seed=2)

    def loss_and_grads(remat):
        model = GPT(dataclasses.replace(cfg, remat=remat))
        loss = lambda p: cross_entropy(model.apply({"params": p}, x, train=True,  # noqa: E731
                                                   rngs={"dropout": jax.random.key(3)}), y)[0]
        return jax.jit(jax.value_and_grad(loss))(params)

    want_loss, want_grads = loss_and_grads("none")
    for remat in REMAT_POLICIES[1:]:
        loss, grads = loss_and_grads(remat)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=remat)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=remat), grads,
                     want_grads)


@pytest.mark.slow  # the fast tier runs remat="full" in test_scan_layers_equal_unrolled
def test_remat_policies_save_what_they_name():
    """Each policy keeps a different amount for the backward pass (none of them is `none` or `full` in disguise)."""
    from jax._src.ad_checkpoint import saved_residuals

    from gptjax.model import REMAT_POLICIES, cross_entropy

    cfg = dataclasses.replace(TINY, attention_impl="reference", norm_impl="reference", loss_impl="reference")
    params, x = init(cfg), tokens()
    counts = {}
    for remat in REMAT_POLICIES:
        model = GPT(dataclasses.replace(cfg, remat=remat))
        f = lambda p: cross_entropy(model.apply({"params": p}, x), x)[0]  # noqa: E731
        counts[remat] = sum(aval.size for aval, _ in saved_residuals(f, params))  # elements kept
    assert counts["full"] < counts["save_qkv_proj"] < counts["minimal"] < counts["dots_saveable"] < counts["none"]
    assert counts["dots_with_no_batch_dims_saveable"] < counts["dots_saveable"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_onehot_embedding_equals_the_gather(dtype):
    cfg = dataclasses.replace(TINY, dtype=dtype)
    params, ids = init(cfg), tokens()

    def loss(p, impl):
        return GPT(dataclasses.replace(cfg, embed_impl=impl)).apply({"params": p}, ids).astype(jnp.float32).mean()

    for impl in ("onehot", "auto"):  # auto is the gather on one device
        np.testing.assert_array_equal(GPT(dataclasses.replace(cfg, embed_impl=impl)).apply({"params": params}, ids),
                                      GPT(dataclasses.replace(cfg, embed_impl="gather")).apply({"params": params}, ids))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                     jax.grad(loss)(params, impl), jax.grad(loss)(params, "gather"))


def test_auto_embedding_is_onehot_when_the_table_is_split(capsys, monkeypatch):
    from gptjax import configs, kernels, sharding

    monkeypatch.setattr(kernels, "_announced", set())  # announced once per process: perhaps by an earlier test

    rules = sharding.hashable_rules(configs.get_config().mesh.logical_axis_rules)
    cfg, ids = dataclasses.replace(TINY, vocab_size=64), tokens(B=8)  # the logits split over the tensor axis
    params = init(cfg)
    lowered = {}
    for impl in ("auto", "gather"):
        mesh = sharding.make_mesh((2, 2, 2), jax.devices()[:8])
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            fn = jax.jit(lambda p, t, impl=impl: GPT(dataclasses.replace(cfg, embed_impl=impl)).apply({"params": p}, t))
            lowered[impl] = fn.lower(params, ids).as_text()
            np.testing.assert_allclose(fn(params, ids), GPT(cfg).apply({"params": params}, ids), rtol=1e-5, atol=1e-6)
    assert "dot_general" in lowered["auto"] and lowered["auto"].count("gather") < lowered["gather"].count("gather")
    assert "model.embed_impl=auto -> onehot" in capsys.readouterr().err


@pytest.mark.parametrize("mesh_shape", [None, pytest.param((2, 2, 2), marks=pytest.mark.slow)])
@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_equals_the_whole_logits_loss(mesh_shape, tied):
    from gptjax import configs, sharding
    from gptjax.objectives import LanguageModeling

    cfg = dataclasses.replace(TINY, vocab_size=64, tie_embeddings=tied, dropout=0.1)
    params = init(cfg)
    ids = tokens(B=8, T=13, V=64)
    batch = {"inputs": ids[:, :12], "targets": ids[:, 1:],
             "weights": (jax.random.uniform(jax.random.key(5), (8, 12)) > 0.3).astype(jnp.float32)}
    task = LanguageModeling(12)

    def loss_and_grads(chunks):
        model = GPT(dataclasses.replace(cfg, loss_chunks=chunks))
        fn = jax.jit(jax.value_and_grad(lambda p: task.loss(model, p, batch, jax.random.key(1))[0]))
        if mesh_shape is None:
            return fn(params), jax.jit(lambda p: task.evaluate(model, p, batch))(params)
        rules = sharding.hashable_rules(configs.get_config().mesh.logical_axis_rules)
        with jax.set_mesh(sharding.make_mesh(mesh_shape, jax.devices()[:8])), nn.logical_axis_rules(rules):
            return fn(params), jax.jit(lambda p: task.evaluate(model, p, batch))(params)

    (loss_1, grads_1), eval_1 = loss_and_grads(1)
    for chunks in (3, 4):
        (loss_c, grads_c), eval_c = loss_and_grads(chunks)
        np.testing.assert_allclose(loss_c, loss_1, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_c, grads_1)
        np.testing.assert_allclose(eval_c["val_loss"], eval_1["val_loss"], rtol=1e-6)


def test_the_chunked_loss_never_makes_the_whole_logits():
    from gptjax.objectives import LanguageModeling

    cfg = dataclasses.replace(TINY, vocab_size=8000, max_len=64)
    params, ids = init(cfg), tokens(B=4, T=65, V=8000)
    batch = {"inputs": ids[:, :64], "targets": ids[:, 1:]}
    temp = {}
    for chunks in (1, 8):
        model = GPT(dataclasses.replace(cfg, loss_chunks=chunks))
        grad = jax.jit(jax.grad(lambda p: LanguageModeling(64).loss(model, p, batch, None)[0]))
        temp[chunks] = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
    whole = 4 * 64 * 8000 * 4  # bytes of the float32 logits
    assert temp[1] - temp[8] >= whole, (temp, whole)  # the logits (and their gradient) are gone, less one piece


@pytest.mark.parametrize("pos_embedding", ["sinusoidal", "learned"])
def test_embed_scale_multiplies_token_embeddings_by_sqrt_d_model(pos_embedding):
    """model.embed_scale (the original Transformer's): the residual stream starts at wte[x] * sqrt(d_model) + the
    positions; off (the default, every GPT) it is wte[x] + the positions, as before the knob; the tied head still
    reads the unscaled table, and HF GPT-2, which cannot scale, refuses it."""
    from gptjax.convert.hf import save_hf_gpt2
    from gptjax.errors import CheckpointError
    from gptjax.model import sinusoidal_table

    assert ModelConfig(vocab_size=8).embed_scale is False
    cfg = dataclasses.replace(TINY, pos_embedding=pos_embedding)
    params, x = init(cfg), tokens()
    T = x.shape[1]
    positions = params["wpe"][:T] if pos_embedding == "learned" else sinusoidal_table(cfg.max_len, cfg.d_model)[:T]

    def stream_start(c):
        logits, state = GPT(c).apply({"params": params}, x, mutable=["residuals"])
        return logits, state["residuals"]["embeddings"][0]

    logits_off, off = stream_start(cfg)
    logits_on, on = stream_start(dataclasses.replace(cfg, embed_scale=True))
    np.testing.assert_allclose(off, params["wte"][x] + positions, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(on, params["wte"][x] * np.sqrt(32) + positions, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(logits_off, GPT(cfg).apply({"params": params}, x), rtol=1e-6)  # sow changes nothing
    assert not np.allclose(logits_on, logits_off, atol=1e-3)
    with pytest.raises(CheckpointError, match="model.embed_scale=True cannot be represented by HF GPT-2"):
        save_hf_gpt2(params, dataclasses.replace(TINY, embed_scale=True), "/nonexistent")


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_casting_each_scanned_layer_gives_the_same_loss_and_gradients(mesh_shape):
    """model.cast_in_layer (opt-in): with scanned layers in bfloat16 over float32 weights, each layer's slice
    is cast inside the loop behind an optimization barrier (on TPU, XLA otherwise keeps a bfloat16 copy of the whole
    stack: 0.85 GiB per chip at GPT-3 175B on v6e-256, docs/plan.md). The barrier is an identity: the loss and the
    gradients are those without it, on one device and on 8 (data x fsdp x tensor)."""
    from gptjax import configs, sharding
    from gptjax.objectives import LanguageModeling

    cfg = dataclasses.replace(TINY, vocab_size=64, scan_layers=True, remat="full", dtype="bfloat16")
    params = init(dataclasses.replace(cfg, dtype="float32"))
    ids = tokens(B=8, T=13, V=64)
    batch = {"inputs": ids[:, :12], "targets": ids[:, 1:]}

    def loss_and_grads(cast_in_layer):
        model = GPT(dataclasses.replace(cfg, cast_in_layer=cast_in_layer))
        fn = jax.jit(jax.value_and_grad(lambda p: LanguageModeling(12).loss(model, p, batch, None)[0]))
        text = fn.lower(params).as_text()
        if mesh_shape is None:
            return fn(params), text
        rules = sharding.hashable_rules(configs.get_config().mesh.logical_axis_rules)
        with jax.set_mesh(sharding.make_mesh(mesh_shape, jax.devices()[:8])), nn.logical_axis_rules(rules):
            return fn(params), text

    (loss_on, grads_on), text_on = loss_and_grads(True)
    (loss_off, grads_off), text_off = loss_and_grads(False)
    assert "optimization_barrier" in text_on and "optimization_barrier" not in text_off
    np.testing.assert_array_equal(loss_on, loss_off)
    jax.tree.map(np.testing.assert_array_equal, grads_on, grads_off)
