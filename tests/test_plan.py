"""`gptjax plan`: the real train step compiled for a target (virtual CPU devices, or TPUs through libtpu's
ahead-of-time compiler), its per-chip memory against HBM, FLOPs and the estimates they imply; one line when it
does not fit or the input is bad."""

import importlib.util
import json
import math
import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # before any jax backend starts (see gptjax/plan.py)

import pytest  # noqa: E402

from gptjax import configs, metrics, plan  # noqa: E402

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="TPU targets need libtpu: pip install -e '.[tpu]'")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = os.path.join(ROOT, "experiments", "pretrain", "gpt2_124m.py")
GPT3 = os.path.join(ROOT, "experiments", "pretrain", "gpt3.py")
SMALL = ["--config.model.num_layers=2", "--config.model.d_model=128", "--config.model.num_heads=2",
         "--config.data.seq_len=128", "--config.train.batch_size=8"]


def in_process(capsys, *args):
    from gptjax import main

    status = main.main(["gptjax", "plan", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def plan_json(capsys, *args):
    status, out, err = in_process(capsys, "--json", *args)
    assert status == 0, err
    return json.loads(out)


def one_line(capsys, message, *args):
    status, out, err = in_process(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("gptjax: error: ")]
    assert status == 2 and len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert message in lines[0], lines[0]
    return lines[0]


def test_accelerator_types_map_to_chip_grids():
    assert plan.parse_topology("v5e-256") == ("v5e", "v5e-256", (16, 16))
    assert plan.parse_topology("v5e-8") == ("v5e", "v5e-8", (2, 4))
    assert plan.parse_topology("v4-128") == ("v4", "v4-128", (4, 4, 4))  # v4-N counts TensorCores: 64 chips
    assert plan.parse_topology("v4-32") == ("v4", "v4-32", (2, 2, 4))
    assert plan.parse_topology("v5p-1024") == ("v5p", "v5p-1024", (8, 8, 8))
    assert plan.parse_topology("v5e:4x4") == ("v5e", "v5e:4x4", (4, 4))
    assert plan.parse_topology("cpu:8") == ("cpu", "cpu:8", (8,))


def test_small_model_on_cpu8_fsdp(capsys):
    """Parameter and optimizer bytes per device follow the FSDP degree; FLOPs are the analytic ones; remat=full
    needs fewer temporaries than none, as the compiler sees them."""
    reports = {remat: plan_json(capsys, "--topology=cpu:8", "--config.mesh.shape=(1,8,1)", *SMALL,
                                "--config.train.batch_size=64", "--config.model.scan_layers=True",
                                f"--config.model.remat={remat}") for remat in ("none", "full")}
    r = reports["none"]
    assert r["num_chips"] == 8 and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and r["fits"]
    params_bytes = r["params"] * 4
    assert abs(r["per_chip_bytes"]["params"] - params_bytes / 8) < 0.1 * params_bytes / 8
    assert abs(r["per_chip_bytes"]["optimizer_state"] - 2 * params_bytes / 8) < 0.1 * 2 * params_bytes / 8
    assert r["per_chip_bytes"]["arguments"] >= r["per_chip_bytes"]["params"] + r["per_chip_bytes"]["optimizer_state"]
    D, V, L, T = 128, 2048, 2, 128
    matmul = V * D + L * 12 * D * D
    assert r["model_flops_per_step"] == pytest.approx((6 * matmul + 12 * L * T * D) * 64 * T)
    assert r["step_seconds_estimate"] == pytest.approx(
        r["model_flops_per_step"] / (8 * metrics.peak_flops_per_device("float32")))
    full = reports["full"]
    assert full["per_chip_bytes"]["temporaries"] < r["per_chip_bytes"]["temporaries"]
    assert full["flops_per_step_with_recompute_estimate"] > full["model_flops_per_step"] and full["mfu_estimate"] < 1


@pytest.mark.slow  # a second compile; the fast tier's plan is the JSON one above
def test_the_text_report(capsys):
    status, out, err = in_process(capsys, "--topology=cpu:2", "--config.mesh.shape=(1,-1,1)", *SMALL)
    assert status == 0, err
    assert "on cpu:2: 2 x cpu" in out and "parameters" in out and "estimated step time" in out, out


def test_bad_input_is_one_line(capsys, monkeypatch):
    one_line(capsys, "--topology: required", *SMALL)
    one_line(capsys, "--topology: 'v9-3' is not one of", "--topology=v9-3")
    one_line(capsys, "--topology: cpu:64 needs 64 CPU devices", "--topology=cpu:64")
    one_line(capsys, "mesh.shape: (1, 3, 1) needs 3 devices", "--topology=cpu:8", "--config.mesh.shape=(1,3,1)")
    one_line(capsys, "train.batch_size", "--topology=cpu:8", "--config.train.batch_size=4")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    one_line(capsys, 'compiling for TPUs needs libtpu: pip install -e ".[tpu]"', "--topology=v5e-8")


@pytest.mark.slow
@needs_libtpu
@needs_libtpu
def test_a_mesh_axis_no_whole_torus_axes_give_splits_physical_axes():
    """tensor 8 on v5p-128's 4 x 4 x 4 torus: no product of whole physical axes is 8, so the mesh splits one."""
    from gptjax import sharding

    mesh = plan.make_mesh((1, 8, 8), plan.make_target("v5p-128"))
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 8} and mesh.devices.size == 64
    assert len({d.id for d in mesh.devices.flat}) == 64
    assert dict(sharding.make_mesh((1, 16, 4), plan.make_target("v5p-128").devices).shape)["tensor"] == 4


def test_gpt3_175b_does_not_fit_on_v5e8(capsys):
    line = one_line(capsys, "does not fit on v5e-8", f"--config={GPT3}:size=gpt3-175b", "--topology=v5e-8")
    assert "biggest buffers: params['h']['block']['mlp']" in line and "try a topology with at least 167 chips" in line


@pytest.mark.slow
@needs_libtpu
def test_two_slices_split_the_data_axis(capsys):
    r = plan_json(capsys, "--topology=v5e:2x2", "--num_slices=2", "--config.mesh.shape=(2,4,1)", *SMALL,
                  "--config.model.dtype=bfloat16")
    assert r["num_chips"] == 8 and r["num_slices"] == 2 and r["fits"] and r["attention_impl"] == "splash"
    assert r["per_chip_bytes"]["params"] == pytest.approx(r["params"] * 4 / 4, rel=0.1)
    one_line(capsys, "which 2 slices cannot split", "--topology=v5e:2x2", "--num_slices=2",
             "--config.mesh.shape=(1,8,1)", *SMALL)


@pytest.mark.slow
@pytest.mark.parametrize("topology", [pytest.param("v5e:2x2", marks=needs_libtpu), "cpu:8"])
def test_gpt2_124m_params_per_chip_follow_fsdp(capsys, topology):
    chips = 4 if topology.startswith("v5e") else 8
    r = plan_json(capsys, f"--config={GPT2}", f"--topology={topology}", "--config.mesh.shape=(1,-1,1)",
                  f"--config.train.batch_size={chips}")
    assert r["params"] == pytest.approx(124.4e6, rel=0.01) and r["fits"] and r["compile"] == "ok"
    assert r["per_chip_bytes"]["params"] == pytest.approx(r["params"] * 4 / chips, rel=0.1)
    assert r["attention_impl"] == ("splash" if chips == 4 else "cpu_fused")
    if chips == 4:  # the TPU program's traffic (gptjax/plan_cost.py) against what FSDP over 4 chips must move
        moved = r["collective_bytes_per_chip"]
        one_pass = r["params"] * 2 * 3 / 4  # every bf16 weight gathered once: 3/4 of it arrives from the others
        # forward, recompute (remat full) and backward, some of it in f32 (the tied embedding): not 1/12 of that
        # (the scanned layers' loop counted once), nor the embedding gathered again in each of the 12 iterations
        assert 2 * one_pass <= moved["all-gather"] <= 6 * one_pass
        grads = r["params"] * 4 * 3 / 4  # the fp32 gradients reduce-scattered over a ring of 4 (some go in bf16)
        reduced = moved["reduce-scatter"] + moved["all-reduce"] + moved["collective-permute"]
        assert grads / 2 <= reduced <= 3 * grads
        lo, hi = r["step_seconds_range"]
        assert r["step_seconds_terms"][r["step_bound"]] == lo < hi == pytest.approx(sum(r["step_seconds_terms"].values()))


@pytest.mark.slow
@needs_libtpu
def test_gpt3_175b_plans_on_v5p_1024(capsys):
    r = plan_json(capsys, f"--config={GPT3}:size=gpt3-175b", "--topology=v5p-1024", "--config.train.grad_accum_steps=4")
    assert round(r["params"] / 1e9, 1) == 174.6
    assert r["mesh"] == {"data": 1, "fsdp": 64, "tensor": 8} and r["fits"] and r["compile"] == "ok"
    assert r["per_chip_bytes"]["params"] == pytest.approx(r["params"] * 4 / 512, rel=0.1)
    assert 0 < r["mfu_estimate"] < 1 and math.isfinite(r["step_seconds_estimate"])


@pytest.mark.slow
@needs_libtpu
def test_every_preset_state_fits_a_realistic_topology():
    """Each preset's parameters, optimizer state and gradients per chip (exact, from the shardings; not compiled)
    fit the HBM of a topology it would train on, with room left for activations."""
    where = {"gpt3-6.7b": "v5p-128", "gpt3-2.7b": "v5p-128", "gpt3-13b": "v5p-256", "gpt3-175b": "v5p-1024"}
    for preset in configs.PRESETS:
        c = configs.get_config()
        c.model.preset = preset
        c.data.seq_len, c.train.batch_size = 512, 512
        c.mesh.shape = (1, -1, 8 if preset in ("gpt3-13b", "gpt3-175b") else 1)
        r = plan.build_plan(configs.finalize(c), where.get(preset, "v5e-16"), compile_=False)
        assert r["params"] == pytest.approx(configs.PAPER_PARAMS[preset], rel=0.05), preset
        assert r["fits"] is None and r["per_chip_bytes"]["total"] < 0.5 * r["hbm_bytes_per_chip"], preset




def test_suggested_grad_accum_steps_divide_over_the_shards():
    """The not-fit line suggests a grad_accum_steps the run can use: 768 sequences on 256 data shards cannot take 2
    micro-batches (384 do not divide over 256), so the suggestion is 3; none once each shard has one sequence."""
    import types

    import ml_collections

    def nxt(batch, accum, fsdp, data=1):
        c = ml_collections.ConfigDict({"train": {"batch_size": batch, "grad_accum_steps": accum}})
        return plan._next_grad_accum(c, types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": 8}))

    assert nxt(768, 1, 256) == 3 and nxt(1536, 1, 64) == 2 and nxt(1536, 4, 64) == 6 and nxt(256, 1, 256) is None
    assert nxt(96, 1, 4, data=2) == 2 and nxt(96, 2, 4, data=2) == 3


@pytest.mark.slow
@needs_libtpu
def test_libtpu_flags_reach_the_compile_and_the_report(tmp_path):
    """LIBTPU_INIT_ARGS (the compiler flags a pod launch sets) apply to the planned program and are named in the
    report; a flag libtpu does not know stops the plan (libtpu reads the variable when it loads). libtpu's start
    prints nothing on a machine without TPUs."""
    import subprocess
    import sys

    def plan_with(flags):
        env = dict(os.environ, LIBTPU_INIT_ARGS=flags)
        return subprocess.run([sys.executable, "-m", "gptjax.main", "plan", "--json", "--topology=v5e:2x2",
                               "--config.mesh.shape=(1,4,1)", *SMALL, "--config.model.dtype=bfloat16"],
                              env=env, capture_output=True, text=True, cwd=tmp_path)

    ok = plan_with("--xla_tpu_scoped_vmem_limit_kib=98304")
    assert ok.returncode == 0, ok.stderr
    r = json.loads(ok.stdout)
    assert r["libtpu_init_args"] == "--xla_tpu_scoped_vmem_limit_kib=98304" and r["compile"] == "ok"
    # no metadata-server warnings from libtpu on a machine without TPUs (gptjax/plan.py sets what it would ask)
    assert "INVALID_ARGUMENT" not in ok.stderr and "could not determine" not in ok.stderr, ok.stderr
    bad = plan_with("--xla_no_such_flag_anywhere=1")
    assert bad.returncode != 0 and "xla_no_such_flag_anywhere" in bad.stderr
