"""`gptjax plan`: compile the real train step for a target machine here, before a pod is allocated.

It builds the mesh of the target (a TPU topology through libtpu's ahead-of-time compiler, as MaxText's
`train_compile.py` does, or N virtual CPU devices), lowers and compiles the Trainer's jitted step with abstract
state and batch (`ShapeDtypeStruct`s carrying their shardings: nothing is allocated, nothing runs), and reports per
chip: parameter, optimizer-state and gradient bytes (from the shardings), the compiler's temporaries (activations
and gradients), whether that fits the chip's HBM, the model FLOPs per step, and the step time they imply. On a
TPU target the step time is a range read from the compiled program (gptjax/plan_cost.py): the bytes each chip
sends in collectives and moves to and from HBM, against the chip's bandwidths, beside the FLOPs at its peak; the
step takes at least the longest of those times and at most their sum, and the longest names the bound. On a CPU
target it is the compute term alone (no bandwidths are known for it).

TPU targets need libtpu (`pip install -e ".[tpu]"`, i.e. `jax[tpu]` at jax's version); without it a TPU target is
a one-line error and `--topology=cpu:N` still plans on N virtual CPU devices.
"""

import dataclasses
import importlib.util
import json
import math
import os
import re
import time

# libtpu takes a machine-wide lockfile for the one process that may drive local TPUs. Compiling for a topology
# drives none, and another jax process on this host (which loads libtpu too once it is installed) may hold it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# (libtpu is told not to query the metadata server on machines without TPUs by gptjax/__init__.py.)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from gptjax import kernels, metrics, plan_cost, sharding  # noqa: E402
from gptjax.errors import ConfigError, GptjaxError  # noqa: E402
from gptjax.model import ModelConfig  # noqa: E402

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Generation:
    hbm_bytes: int  # per chip
    device_kind: str  # as jax reports it: the key of metrics.PEAK_FLOPS
    dims: int  # 2D (v5e, v6e) or 3D (v4, v5p) torus
    name_counts_cores: bool  # v4-N and v5p-N count TensorCores (2 per chip); v5e-N and v6e-N count chips
    chip_config: str  # libtpu's chip_config_name


# HBM per chip (Google Cloud TPU system architecture pages) and the stated bf16 peak in metrics.PEAK_FLOPS.
GENERATIONS = {
    "v4": Generation(32 * GiB, "TPU v4", 3, True, "megacore"),
    "v5e": Generation(16 * GiB, "TPU v5 lite", 2, False, "default"),
    "v5p": Generation(95 * GiB, "TPU v5", 3, True, "megacore"),
    "v6e": Generation(32 * GiB, "TPU v6 lite", 2, False, "default"),
}
TOPOLOGY_HELP = "v5e-256, v4-128, v5p-512, v6e-64 (accelerator types), v5e:4x4, v4:4x4x4 (chip grids) or cpu:N"


class PlanError(GptjaxError):
    """The planned run does not fit, or the target cannot be compiled for; one line says why and what to change."""


# --- targets ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    name: str
    platform: str  # tpu | cpu
    devices: list
    generation: Generation | None = None
    num_slices: int = 1

    @property
    def num_chips(self) -> int:
        return len(self.devices)


def _chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The chip grid of an accelerator type with `chips` chips: v5e-16 is 4x4, v4-128 (64 chips) is 4x4x4."""
    if chips < 1 or chips & (chips - 1):
        raise ConfigError(f"--topology: {chips} chips is not a power of two; give the chip grid instead "
                          f"({'v4:4x4x12' if dims == 3 else 'v5e:4x8'} and the like)")
    grid = [2, 2, 1] if dims == 3 and chips >= 4 else [1] * dims
    while math.prod(grid) < chips:  # double the smallest side, the last of equals first: 2x2x4, 2x4x4, 4x4x4
        i = max(j for j in range(dims) if grid[j] == min(grid))
        grid[i] *= 2
    if math.prod(grid) != chips:
        raise ConfigError(f"--topology: no {dims}D grid of {chips} chips")
    return tuple(grid)


def parse_topology(text: str, num_slices: int = 1) -> tuple[str, str, tuple[int, ...]]:
    """'v5e-256' | 'v4-128' | 'v5e:4x4' | 'cpu:8' -> (generation or 'cpu', name, chip grid or (N,))."""
    text = text.strip().lower()
    if m := re.fullmatch(r"cpu:(\d+)", text):
        return "cpu", text, (int(m.group(1)),)
    if m := re.fullmatch(r"(v\d+[a-z]?)-(\d+)", text):
        gen, count = m.group(1), int(m.group(2))
        if gen in GENERATIONS:
            g = GENERATIONS[gen]
            chips = count // 2 if g.name_counts_cores else count
            return gen, text, _chip_grid(chips, g.dims)
    if m := re.fullmatch(r"(v\d+[a-z]?):(\d+(?:x\d+)+)", text):
        gen, grid = m.group(1), tuple(int(x) for x in m.group(2).split("x"))
        if gen in GENERATIONS and len(grid) == GENERATIONS[gen].dims:
            return gen, text, grid
    raise ConfigError(f"--topology: {text!r} is not one of {TOPOLOGY_HELP} (generations: {', '.join(GENERATIONS)})")


def make_target(topology: str, num_slices: int = 1) -> Target:
    gen, name, grid = parse_topology(topology, num_slices)
    if num_slices < 1:
        raise ConfigError(f"--num_slices: must be positive, got {num_slices}")
    if gen == "cpu":
        if num_slices != 1:
            raise ConfigError("--num_slices: slices are TPU slices; a cpu:N target has one")
        n = grid[0]
        from jax._src import xla_bridge

        forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        if not forced and not xla_bridge.backends_are_initialized() and jax.config.jax_num_cpu_devices < n:
            jax.config.update("jax_num_cpu_devices", n)
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise ConfigError(f"--topology: cpu:{n} needs {n} CPU devices, this process has {len(devices)} (start it "
                              f"with XLA_FLAGS=--xla_force_host_platform_device_count={n})")
        return Target(name, "cpu", devices[:n])
    if importlib.util.find_spec("libtpu") is None:
        raise PlanError(f"--topology={topology}: compiling for TPUs needs libtpu: pip install -e \".[tpu]\" "
                        f"(jax[tpu]=={jax.__version__}), or plan on --topology=cpu:N")
    from jax.experimental import topologies

    g = GENERATIONS[gen]
    grid_name = f"{gen}:{'x'.join(map(str, grid))}"
    host_bounds = (2, 2, 1) if math.prod(grid) >= 4 else (*grid, 1)[:3]
    desc = topologies.get_topology_desc(platform="tpu", topology_name=grid_name, chip_config_name=g.chip_config,
                                        chips_per_host_bounds=host_bounds, num_slices=num_slices)
    label = name if num_slices == 1 else f"{num_slices} x {name}"
    return Target(label, "tpu", list(desc.devices), g, num_slices)


def make_mesh(shape, target: Target) -> jax.sharding.Mesh:
    """The config's (data, fsdp, tensor) mesh over the target's devices; several slices split the data axis
    (data parallelism over the data-centre network, fsdp and tensor inside each slice)."""
    if target.num_slices == 1:
        return sharding.make_mesh(shape, target.devices)
    from jax.experimental import mesh_utils

    shape = sharding.resolve_mesh_shape(shape, target.num_chips)
    if shape[0] % target.num_slices:
        raise ConfigError(f"mesh.shape: {shape} has data={shape[0]}, which {target.num_slices} slices cannot split; "
                          f"give --config.mesh.shape='({target.num_slices},-1,{shape[2]})'")
    ici = (shape[0] // target.num_slices, shape[1], shape[2])
    grid = mesh_utils.create_hybrid_device_mesh(ici, (target.num_slices, 1, 1), target.devices,
                                                allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


# --- FLOPs --------------------------------------------------------------------------------------------------


def recompute_flops_per_token(model_cfg, seq_len: int) -> float:
    """Forward FLOPs per token that `model.remat` recomputes in the backward pass (an estimate by policy): per
    layer, the q/k/v projection is 6 D^2, the output projection 2 D^2, the MLP 4 D F and attention 4 T D."""
    D, F, T, L = model_cfg.d_model, model_cfg.ff_width, seq_len, model_cfg.num_layers
    qkv, out, mlp, attn = 6 * D * D, 2 * D * D, 4 * D * F, 4 * T * D
    per_layer = {
        "none": 0,
        "full": qkv + out + mlp + attn,
        "dots_saveable": 0,
        "dots_with_no_batch_dims_saveable": attn,  # attention scores are dots with batch dims
        "save_qkv_proj": out + mlp + attn,
        "minimal": attn,
    }[model_cfg.remat]
    return float(L * per_layer)


# --- the plan -----------------------------------------------------------------------------------------------


def _shard_bytes(x) -> int:
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    return int(math.prod(shape)) * np.dtype(x.dtype).itemsize


def _tree_bytes(tree) -> int:
    return sum(_shard_bytes(x) for x in jax.tree.leaves(tree))


def _prepare(config):
    """A copy of `config` whose vocabulary is known (the tokenizer is not built to plan)."""
    config = config.copy_and_resolve_references()
    if not config.model.vocab_size:
        if config.data.tokenizer != "sentencepiece":
            raise ConfigError("model.vocab_size: unknown until the tokenizer is built; give --config.model.vocab_size")
        with config.unlocked():
            config.model.vocab_size = config.data.vocab_size
    return config


def _next_grad_accum(config, mesh) -> int | None:
    """The smallest grad_accum_steps above the config's whose micro-batches still divide over the data-parallel
    shards (768 sequences on 256 chips: 3, not 2); None when the micro-batch is already one sequence per shard."""
    batch, dp = config.train.batch_size, sharding.data_parallel_size(mesh)
    return next((k for k in range(config.train.grad_accum_steps + 1, batch // dp + 1)
                 if batch % k == 0 and (batch // k) % dp == 0), None)


def _suggestions(config, mesh, state_bytes: int, hbm: int) -> list[str]:
    m, shape = config.model, dict(mesh.shape)
    out = []
    if shape["data"] > 1 or shape["fsdp"] * shape["tensor"] < math.prod(shape.values()):
        out.append(f"mesh.shape with more fsdp (now {tuple(shape.values())})")
    if state_bytes > hbm:
        chips = math.prod(shape.values())
        out.append(f"a topology with at least {math.ceil(state_bytes * chips / hbm)} chips of this HBM (the state "
                   f"needs {state_bytes * chips / GiB:,.0f} GiB in all)")
    else:
        if m.remat not in ("full",):
            out.append(f"model.remat=full (now {m.remat})")
        accum = _next_grad_accum(config, mesh)
        if accum:
            out.append(f"train.grad_accum_steps={accum}")
        if not m.scan_layers:
            out.append("model.scan_layers=True")
    return out or ["a topology with more chips or more HBM per chip (each data shard already has one sequence)"]


def build_plan(config, topology: str, num_slices: int = 1, compile_: bool = True) -> dict:
    """Compiles the train step that `gptjax train` would run for `config` (a finalized ConfigDict: pretraining, or
    the model and objective of its fine-tuning or RL stage) for `topology`; returns the report as a dict (`fits`
    says whether it fits; `format_report` prints it)."""
    from gptjax import runs, trainer

    config = _prepare(config)
    kind = runs.module(config)
    if hasattr(kind, "configure"):  # what the kind sets in its config before it trains
        kind.configure(config)
    target = make_target(topology, num_slices)
    mesh = make_mesh(config.mesh.shape, target)
    trainer.check_batch_sizes(config, mesh)
    t0 = time.time()
    with kernels.target_platform(target.platform):
        run = trainer.Trainer(config, mesh, *runs.module(config).planned(config))
        state = run.abstract_state
        example = run.objective.example_batch()
        batch = {k: jax.ShapeDtypeStruct((config.train.batch_size, *v.shape[1:]), v.dtype,
                                         sharding=sharding.batch_sharding(mesh, v.ndim)) for k, v in example.items()}
        model_cfg = ModelConfig.from_config(config.model)
        params_bytes, opt_bytes = _tree_bytes(state.params), _tree_bytes(state.opt_state)
        grads_bytes = params_bytes  # gradients take the params' dtype and sharding
        n_params = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(state.params))
        seq = config.data.seq_len
        tokens = config.train.batch_size * seq
        model_flops = metrics.flops_per_token(state.params, model_cfg, seq) * tokens
        hw_flops = model_flops + recompute_flops_per_token(model_cfg, seq) * tokens
        device = target.devices[0]
        if target.generation is not None:
            hbm = target.generation.hbm_bytes
            peak = metrics.PEAK_FLOPS[target.generation.device_kind].get(config.model.dtype, None) or \
                metrics.PEAK_FLOPS[target.generation.device_kind]["bfloat16"]
        else:
            hbm, peak = None, metrics.peak_flops_per_device(config.model.dtype, device)
        leaves = sorted(((_shard_bytes(x), "params" + jax.tree_util.keystr(p), x) for p, x in
                         jax.tree_util.tree_leaves_with_path(state.params)), key=lambda r: -r[0])
        biggest = [f"{name} {np.dtype(x.dtype).name}{list(x.shape)} {b / GiB:.2f} GiB/chip"
                   for b, name, x in leaves[:3]]
        report = {
            "topology": target.name, "platform": target.platform, "device_kind": device.device_kind,
            "num_chips": target.num_chips, "num_slices": target.num_slices, "mesh": dict(mesh.shape),
            "hbm_bytes_per_chip": hbm, "params": n_params, "batch_size": config.train.batch_size, "seq_len": seq,
            "grad_accum_steps": config.train.grad_accum_steps, "dtype": config.model.dtype,
            "param_dtype": config.model.param_dtype, "remat": model_cfg.remat, "scan_layers": model_cfg.scan_layers,
            "attention_impl": kernels.select_attention(model_cfg.attention_impl, dtype=config.model.dtype,
                                                       dropout=model_cfg.dropout > 0, kv_mask=False, segments=False,
                                                       T=seq, S=seq),
            "per_chip_bytes": {"params": params_bytes, "optimizer_state": opt_bytes, "gradients": grads_bytes},
            "biggest_buffers": biggest,
            "model_flops_per_step": model_flops, "flops_per_step_with_recompute_estimate": hw_flops,
            "peak_flops_per_chip": peak,
            # libtpu's compiler flags change the program and its memory; a plan holds for a run with the same ones
            "libtpu_init_args": os.environ.get("LIBTPU_INIT_ARGS", "") if target.platform == "tpu" else "",
        }
        state_bytes = params_bytes + opt_bytes + grads_bytes
        compiled = None
        if hbm is not None and state_bytes > hbm:
            report["compile"] = "skipped: parameters, optimizer state and gradients alone exceed HBM"
        elif compile_:
            with run.context():
                lowered = run.train_step.lower(state, batch)
                try:
                    compiled = lowered.compile()
                except Exception as err:  # noqa: BLE001  (only an out-of-memory compile is turned into a report)
                    text = str(err)
                    if "RESOURCE_EXHAUSTED" not in text and "memory" not in text.lower():
                        raise
                    report["compile"] = "out of memory: " + " ".join(text.split())[:300]
        report["compile_seconds"] = time.time() - t0
    per_chip = report["per_chip_bytes"]
    if compiled is not None:
        mem = compiled.memory_analysis()
        per_chip["arguments"] = int(mem.argument_size_in_bytes)
        per_chip["outputs"] = int(mem.output_size_in_bytes)
        per_chip["donated"] = int(mem.alias_size_in_bytes)
        per_chip["temporaries"] = int(mem.temp_size_in_bytes)
        per_chip["code"] = int(mem.generated_code_size_in_bytes)
        per_chip["activations_estimate"] = max(0, per_chip["temporaries"] - grads_bytes)
        per_chip["total"] = (per_chip["arguments"] + per_chip["outputs"] - per_chip["donated"]
                             + per_chip["temporaries"] + per_chip["code"])
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        report["compiler_flops_per_chip"] = float((cost or {}).get("flops", float("nan")))
        moved = plan_cost.traffic(compiled.as_text(), target.num_chips)
        report["collective_bytes_per_chip"] = moved["collective_bytes"]
        report["hbm_traffic_bytes_per_chip"] = moved["hbm_bytes"]
        report["compile"] = "ok"
    else:
        per_chip["total"] = state_bytes
    if compiled is None and "compile" not in report:
        report["compile"], report["fits"] = "not asked", None  # compile_=False: the state only, nothing decided
    else:
        report["fits"] = (compiled is not None) and (hbm is None or per_chip["total"] <= hbm)
    if peak:
        bandwidth = plan_cost.BANDWIDTHS.get(device.device_kind) if "hbm_traffic_bytes_per_chip" in report else None
        moved = {"collective_bytes": report.get("collective_bytes_per_chip"),
                 "hbm_bytes": report.get("hbm_traffic_bytes_per_chip")}
        est = plan_cost.estimate(hw_flops / target.num_chips, peak, moved, bandwidth)
        report["step_seconds_terms"], report["step_bound"] = est["terms_seconds"], est["bound"]
        report["step_seconds_range"] = [est["low_seconds"], est["high_seconds"]]
        step = est["low_seconds"]
        report["step_seconds_estimate"] = step  # the range's low end: everything overlapped
        report["mfu_estimate"] = model_flops / (step * target.num_chips * peak)
        report["mfu_range"] = [model_flops / (est["high_seconds"] * target.num_chips * peak), report["mfu_estimate"]]
        report["tokens_per_second_estimate"] = tokens / step
    if report["fits"] is False:
        report["suggestions"] = _suggestions(config, mesh, state_bytes, hbm or 0)
    return report


def _g(b) -> str:
    return f"{b / GiB:8.2f} GiB"


def format_report(r: dict, config_name: str = "") -> str:
    b = r["per_chip_bytes"]
    hbm = r["hbm_bytes_per_chip"]
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    lines = [
        f"gptjax plan: {config_name} on {r['topology']}: {r['num_chips']} x {r['device_kind']}"
        + (f" ({hbm / GiB:.0f} GiB HBM each)" if hbm else "") + f", mesh {mesh}",
        f"  model: {r['params'] / 1e6:,.1f}M params ({r['param_dtype']}), {r['dtype']} compute, batch "
        f"{r['batch_size']} x {r['seq_len']} tokens, grad_accum_steps {r['grad_accum_steps']}, remat {r['remat']}, "
        f"scan_layers {r['scan_layers']}, attention {r['attention_impl']}",
        "  per chip:",
        f"    parameters                {_g(b['params'])}",
        f"    optimizer state           {_g(b['optimizer_state'])}",
        f"    gradients                 {_g(b['gradients'])}  (inside the temporaries)",
    ]
    if "temporaries" in b:
        lines += [
            f"    activations, other temps  {_g(b['activations_estimate'])}  (temporaries less gradients, estimate)",
            f"    temporaries (compiler)    {_g(b['temporaries'])}",
            f"    total (compiler)          {_g(b['total'])}  arguments + outputs - donated + temporaries + code",
        ]
    else:
        lines.append(f"    state alone               {_g(b['total'])}  (not compiled: {r.get('compile', '')})")
    if hbm and "temporaries" in b:
        lines.append(f"  fits in HBM: {'yes' if r['fits'] else 'NO'} ({100 * b['total'] / hbm:.0f}% of "
                     f"{hbm / GiB:.0f} GiB)")
    elif hbm:
        lines.append(f"  fits in HBM: NO ({r.get('compile', '')})")
    lines.append(f"  model FLOPs per step: {r['model_flops_per_step']:.3e} (6 x matmul params + attention, per token)"
                 f"; with remat recompute {r['flops_per_step_with_recompute_estimate']:.3e} (estimate)")
    if "step_seconds_estimate" in r and len(r.get("step_seconds_terms", {})) > 1:
        lo, hi = r["step_seconds_range"]
        terms = ", ".join(f"{k} {v:.3g} s" for k, v in r["step_seconds_terms"].items())
        moved = r["collective_bytes_per_chip"]
        lines.append(f"  estimated step time {lo:.3g}-{hi:.3g} s, bound by {r['step_bound']} ({terms}; at least the "
                     f"longest, at most their sum), MFU {100 * r['mfu_range'][0]:.0f}-{100 * r['mfu_range'][1]:.0f}%")
        lines.append(f"  moved per chip per step: collectives {sum(moved.values()) / GiB:,.1f} GiB ("
                     + ", ".join(f"{k} {v / GiB:,.1f}" for k, v in moved.items() if v) + f"), HBM "
                     f"{r['hbm_traffic_bytes_per_chip'] / GiB:,.0f} GiB; at the peak {r['peak_flops_per_chip'] / 1e12:.3g} "
                     "TFLOP/s and the bandwidths of gptjax/plan_cost.py")
    elif "step_seconds_estimate" in r:
        lines.append(f"  estimated step time {r['step_seconds_estimate']:.3f} s, MFU {100 * r['mfu_estimate']:.0f}%, "
                     f"{r['tokens_per_second_estimate']:,.0f} tokens/s (compute alone at the stated peak "
                     f"{r['peak_flops_per_chip'] / 1e12:.3g} TFLOP/s per chip: no bandwidths are known for "
                     f"{r['device_kind']})")
    if "compiler_flops_per_chip" in r:
        lines.append(f"  compiler's own FLOPs per chip: {r['compiler_flops_per_chip']:.3e} (cost_analysis; it does "
                     "not count inside custom kernels)")
    if r.get("libtpu_init_args"):
        lines.append(f"  libtpu flags (LIBTPU_INIT_ARGS): {r['libtpu_init_args']}")
    lines.append(f"  compile: {r.get('compile', '')} in {r['compile_seconds']:.1f} s")
    return "\n".join(lines)


def not_fit_line(r: dict) -> str:
    b, hbm = r["per_chip_bytes"], r["hbm_bytes_per_chip"]
    what = (f"needs {b['total'] / GiB:.1f} GiB per chip" if "temporaries" in b else
            f"parameters, optimizer state and gradients alone need {b['total'] / GiB:.1f} GiB per chip")
    if "temporaries" not in b and r.get("compile", "").startswith("out of memory"):
        what = "the compiler ran out of HBM (" + r["compile"].split("Ran out of memory", 1)[-1].strip(" .:,") + ")"
    return (f"does not fit on {r['topology']}: {what} of {hbm / GiB:.0f} GiB HBM (params {b['params'] / GiB:.1f}, "
            f"optimizer {b['optimizer_state'] / GiB:.1f}, gradients {b['gradients'] / GiB:.1f} GiB); biggest buffers: "
            f"{'; '.join(r['biggest_buffers'])}; try {', '.join(r['suggestions'])}")


def run(config, topology: str, num_slices: int = 1, as_json: bool = False, config_name: str = "") -> dict:
    """The `gptjax plan` command: prints the report (or JSON) and raises PlanError when the run does not fit."""
    import contextlib
    import sys

    # Implementation choices are announced on stdout; keep stdout for the report (the JSON must parse).
    with contextlib.redirect_stdout(sys.stderr):
        report = build_plan(config, topology, num_slices)
    if as_json or report["fits"]:  # a run that does not fit is one line (below), unless JSON is asked for
        print(json.dumps(report, indent=1) if as_json else format_report(report, config_name), flush=True)
    if not report["fits"]:
        raise PlanError(not_fit_line(report))
    return report
