"""The measured-plans tables of docs/plan.md: `gptjax plan --json` for each row, one process per row, with its
wall time (import, lowering and libtpu's compile) and the process's peak host memory.

  python benchmarks/plan_table.py                         # the presets table, then the remat table
  python benchmarks/plan_table.py --rows=175b,175b_noscan --out=plans.json
  python benchmarks/plan_table.py --rows=act                # activations over the tensor axis, before and after
  python benchmarks/plan_table.py --list
  python benchmarks/plan_table.py --validate              # the step-time estimate against published runs

Each row is a command a user can type (printed above the table). Compile time depends on the machine's load: run
it with nothing else on the cores. Needs libtpu (`pip install -e ".[tpu]"`).

Under GPTJAX_SMOKE=1 (benchmarks/common.py): one row, the first one asked for (by default the cheapest, GPT-2 124M on
v5e:2x2), its `gptjax plan` shrinking the model as every gptjax command does in a smoke run. libtpu's compile takes
most of its 30-60 s even so.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import common  # benchmarks/common.py

GPT2, GPT3 = "experiments/pretrain/gpt2_124m.py", "experiments/pretrain/gpt3.py"
ACCUM4 = "--config.train.grad_accum_steps=4"

# name -> (row label, `gptjax plan` arguments)
ROWS = {
    "124m_v4": ("GPT-2 124M, `gpt2_124m.py` (batch 480 x 1024)", [f"--config={GPT2}", "--topology=v4-32"]),
    "124m_v5e": ("GPT-2 124M, batch 16 x 1024", [f"--config={GPT2}", "--topology=v5e:2x2",
                                                 "--config.mesh.shape=(1,-1,1)", "--config.train.batch_size=16"]),
    "xl": ("GPT-3 XL, `gpt3.py:size=gpt3-xl` (batch 512 x 2048)", [f"--config={GPT3}:size=gpt3-xl",
                                                                   "--topology=v5e-64"]),
    "6.7b": ("GPT-3 6.7B, `gpt3.py:size=gpt3-6.7b` (batch 1024 x 2048)", [f"--config={GPT3}:size=gpt3-6.7b",
                                                                         "--topology=v5p-128"]),
    "175b_batch1536": ("GPT-3 175B, `gpt3.py:size=gpt3-175b` (batch 1536 x 2048)", [f"--config={GPT3}:size=gpt3-175b",
                                                                             "--topology=v5p-1024"]),
    "175b": ("GPT-3 175B, `grad_accum_steps=4`", [f"--config={GPT3}:size=gpt3-175b", "--topology=v5p-1024", ACCUM4]),
    "175b_noscan": ("GPT-3 175B, `grad_accum_steps=4`, `scan_layers=False`",
                    [f"--config={GPT3}:size=gpt3-175b", "--topology=v5p-1024", ACCUM4,
                     "--config.model.scan_layers=False"]),
    "175b_maxtext": ("GPT-3 175B, batch 768 x 2048, FSDP 256 (MaxText's v6e-256 recipe)",
                     [f"--config={GPT3}:size=gpt3-175b", "--topology=v6e-256", "--config.train.batch_size=768",
                      "--config.mesh.shape=(1,256,1)"]),
    "175b_maxtext_accum3": ("GPT-3 175B, batch 768 x 2048, FSDP 256, `grad_accum_steps=3`",
                            [f"--config={GPT3}:size=gpt3-175b", "--topology=v6e-256", "--config.train.batch_size=768",
                             "--config.mesh.shape=(1,256,1)", "--config.train.grad_accum_steps=3"]),
    "175b_v5e8": ("GPT-3 175B", [f"--config={GPT3}:size=gpt3-175b", "--topology=v5e-8"]),
}


def act_embed(axis) -> str:
    """The `--config.mesh.logical_axis_rules` override that maps the residual stream's width (`act_embed`) to
    `axis` and keeps every other rule of gptjax's default: the before/after rows of the activation-sharding table."""
    from gptjax import configs, sharding

    rules = sharding.with_rule(configs.get_config().mesh.logical_axis_rules, "act_embed", axis)
    return "--config.mesh.logical_axis_rules=" + repr(rules).replace("'", '"').replace(" ", "")


# Activations over the tensor axis (docs/plan.md), each mesh with the residual stream replicated over the tensor
# axis (`act_embed` -> None, gptjax's default) and split over it (-> tensor, what gpt3.py takes with tensor > 1).
ROWS["175b_batch1536_act_none"] = ("GPT-3 175B (batch 1536), `act_embed` -> None",
                                   [*ROWS["175b_batch1536"][1], act_embed(None)])
ROWS["175b_batch1536"] = ("GPT-3 175B (batch 1536), `act_embed` -> tensor (`gpt3.py`'s)", ROWS["175b_batch1536"][1])
for _t, _topology in ((4, "v5p-128"), (8, "v5p-256")):
    _args = [f"--config={GPT3}:size=gpt3-6.7b", f"--topology={_topology}", f"--config.mesh.shape=(1,16,{_t})"]
    ROWS[f"6.7b_t{_t}"] = (f"GPT-3 6.7B, fsdp 16 x tensor {_t}, `act_embed` -> None", [*_args, act_embed(None)])
    ROWS[f"6.7b_t{_t}_act"] = (f"GPT-3 6.7B, fsdp 16 x tensor {_t}, `act_embed` -> tensor",
                               [*_args, act_embed("tensor")])
ACT_ROWS = ["6.7b_t4", "6.7b_t4_act", "6.7b_t8", "6.7b_t8_act", "175b_batch1536_act_none", "175b_batch1536"]
REMATS = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_qkv_proj", "minimal")
# The remat table: GPT-3 6.7B on v5p-128, one policy per row (the config's own is `full`).
for _p in REMATS:
    ROWS[f"remat_{_p}"] = (f"`remat={_p}`", [f"--config={GPT3}:size=gpt3-6.7b", "--topology=v5p-128",
                                             f"--config.model.remat={_p}"])
DEFAULT_ROWS = ["124m_v4", "124m_v5e", "xl", "6.7b", "175b_batch1536", "175b", "175b_noscan", "175b_maxtext",
                "175b_maxtext_accum3", "175b_v5e8", *(f"remat_{p}" for p in REMATS)]

# Published runs, each rebuilt as a gptjax config of the same shape: (label, `gptjax plan` args, published TFLOP/s per
# chip or None, published seconds per step or None, source). MaxText's models (configs/tpu/v4 and v5p in
# AI-Hypercomputer/maxtext) have a gated MLP (3 matrices of mlp_dim) and 128-wide heads; the gptjax row keeps
# d_model, layers, vocabulary (32,000, untied), batch, mesh and remat policy, takes d_model / 128 heads, and a d_ff
# that gives each layer MaxText's matmul parameter count (attention then differs by under 5% of the FLOPs). The
# published step time is gptjax's model FLOPs per step over the published TFLOP/s per chip times the chips.
def _maxtext(d, layers, mlp, heads, batch, mesh, topology, remat, chunks=1, accum=1):
    d_ff = (4 * d * heads * 128 + 3 * d * mlp - 4 * d * d) // (2 * d)  # MaxText's per-layer matmul params
    return [f"--config={GPT3}:size=gpt3-13b", f"--topology={topology}", f"--config.model.d_model={d}",
            f"--config.model.num_heads={d // 128}", f"--config.model.num_layers={layers}", f"--config.model.d_ff={d_ff}",
            "--config.model.vocab_size=32000", "--config.model.tie_embeddings=False", f"--config.model.remat={remat}",
            f"--config.model.loss_chunks={chunks}", f"--config.train.batch_size={batch}", f"--config.mesh.shape={mesh}",
            *([f"--config.train.grad_accum_steps={accum}"] if accum > 1 else [])]


MAXTEXT = "AI-Hypercomputer/maxtext src/maxtext/configs/tpu/{}"
PUBLISHED = {
    "pub_175b_v6e": ("GPT-3 175B, v6e-256, batch 768, FSDP 256, remat full", ROWS["175b_maxtext"][1], None, 17.18,
                     "tpu-recipes training/trillium/GPT3-175B-MaxText/bf16 (MaxText, 17.18 s/step)"),
    "pub_22b_v4": ("MaxText 22B, v4-128, batch 832, FSDP 64, remat full",
                   _maxtext(6144, 48, 24576, 24, 13 * 64, "(1,64,1)", "v4-128", "full", 8), 156e12, None,
                   MAXTEXT.format("v4/22b.sh, README: 156 TFLOP/s/chip")),
    "pub_52b_v4": ("MaxText 52B, v4-384, batch 1344, FSDP 192, remat full",
                   _maxtext(12288, 32, 49152, 32, 7 * 192, "(1,192,1)", "v4:4x4x12", "full", 8), 154e12, None,
                   MAXTEXT.format("v4/52b.sh, README: 154 TFLOP/s/chip")),
    # MaxText's own shapes, in one batch: gpt3.py (their base) splits the activations over the tensor axis, as
    # MaxText does (before it did, gptjax needed 113.6 GiB of temporaries per chip for the 32B shape and ran 2
    # micro-batches)
    "pub_32b_v5p": ("MaxText 32B, v5p-128, batch 384, FSDP 16 x tensor 4, remat minimal",
                    _maxtext(8192, 32, 28672, 64, 6 * 64, "(1,16,4)", "v5p-128", "minimal"), 328e12, None,
                    MAXTEXT.format("v5p/32b.sh, README: 328 TFLOP/s/chip")),
    "pub_64b_v5p": ("MaxText 64B, v5p-128, batch 192, FSDP 16 x tensor 4, remat minimal",
                    _maxtext(8192, 64, 28672, 64, 3 * 64, "(1,16,4)", "v5p-128", "minimal"), 323e12, None,
                    MAXTEXT.format("v5p/64b.sh, README: 323 TFLOP/s/chip")),
}
SMOKE_ROW = "124m_v5e"  # the cheapest plan (4 chips, batch 16)

GiB = 1024**3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the rows' config paths are relative to it


def run_row(args: list[str], timeout: float) -> dict:
    """Runs `gptjax plan --json ARGS` in a child process; returns its report (or its error line) with the wall
    time and the child's peak resident memory."""
    cmd = [sys.executable, "-m", "gptjax.main", "plan", "--json", *args]
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t0 = time.time()
        child = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, cwd=ROOT)
        while True:  # os.wait4 reaps the child with its own resource usage (peak RSS), not all children's
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - t0 > timeout:
                child.kill()
                child.wait()
                return {"error": f"did not finish in {timeout:.0f} s", "wall_seconds": time.time() - t0}
            time.sleep(0.2)
        wall = time.time() - t0
        returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    report = {"wall_seconds": wall, "peak_rss_bytes": usage.ru_maxrss * 1024}  # ru_maxrss is in KiB on Linux
    text = out.strip()
    if text.startswith("{"):
        report.update(json.loads(text[: text.rindex("}") + 1]))
    errors = [ln for ln in err.splitlines() if ln.startswith("gptjax: error:")]
    if errors:
        report["error"] = errors[-1].removeprefix("gptjax: error: ")
    elif returncode:
        report["error"] = f"exit {returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"
    return report


def mesh_text(r):
    return ", ".join(str(v) for v in r["mesh"].values()) if "mesh" in r else ""


def _range(pair, fmt=".3g") -> str:
    lo, hi = pair
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def validation_row(label: str, r: dict, tflops, seconds, source: str) -> str:
    """Published seconds per step (given, or the model FLOPs per step at the published TFLOP/s per chip) beside
    the estimate's range and its point estimate, the geometric mean of the range's ends (overlap half the time, in
    log terms). The error is the published time's distance from the point estimate."""
    if "step_seconds_range" not in r:
        return f"| {label} | {source} | | {r.get('error', r.get('compile', ''))} | | |"
    published = seconds or r["model_flops_per_step"] / (tflops * r["num_chips"])
    lo, hi = r["step_seconds_range"]
    point = (lo * hi) ** 0.5
    error = point / published - 1
    terms = ", ".join(f"{k} {v:.3g}" for k, v in r["step_seconds_terms"].items())
    inside = "inside" if lo <= published <= hi else "outside"
    return (f"| {label} | {source} | {published:.3g} s | {lo:.3g}-{hi:.3g} s ({r['step_bound']}; {terms}), "
            f"{inside} | {point:.3g} s | {100 * error:+.0f}% | {'yes' if abs(error) <= 0.25 else 'no'} |")


VALIDATION_HEADER = ("| published run (gptjax's rebuild) | source | published s/step | gptjax range (bound; terms, s), "
                     "published inside? | point estimate | its error | within 25% |\n|---|---|---:|---|---:|---:|---|")


def table_row(label: str, r: dict) -> str:
    b = r.get("per_chip_bytes", {})
    hbm = r.get("hbm_bytes_per_chip") or 0
    state = f"{(b['params'] + b['optimizer_state'] + b['gradients']) / GiB:.2f} GiB" if b else ""
    if "temporaries" in b:
        total = f"{b['total'] / GiB:.2f} / {hbm / GiB:.0f} GiB ({100 * b['total'] / hbm:.0f}%)"
    elif r.get("compile", "").startswith("out of memory"):
        need = re.search(r"temporaries \(([\d.]+)G\)", r["compile"])
        total = f"compiler: {need.group(1)} GiB of temporaries" if need else "compiler: out of HBM"
    elif b:
        total = f"state alone {b['total'] / GiB:.1f} GiB (not compiled)"
    else:
        total = r.get("error", "")
    fits = {True: "yes", False: "no", None: ""}[r.get("fits")]
    step = f"{_range(r['step_seconds_range'])} s ({r['step_bound']})" if r.get("fits") else ""
    mfu = f"{_range([100 * m for m in r['mfu_range']], '.0f')}%" if r.get("fits") else ""
    topo = f"{r['topology']} ({r['num_chips']})" if "topology" in r else ""
    rss = f"{r['peak_rss_bytes'] / GiB:.1f} GiB" if "peak_rss_bytes" in r else ""
    return (f"| {label} | {topo} | {mesh_text(r)} | {state} | {total} | {fits} | {step} | {mfu} | "
            f"{r['wall_seconds']:.0f} s | {rss} |")


HEADER = ("| config | topology (chips) | mesh (data, fsdp, tensor) | state per chip | total per chip / HBM | fits | "
          "est. step time | est. MFU | plan wall time | peak host memory |\n|---|---|---|---|---|---|---|---|---|---|")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="", help="comma-separated row names (--list); default: all, as in docs/plan.md")
    p.add_argument("--timeout", type=float, default=600, help="seconds per row (the issue's 10-minute bound)")
    p.add_argument("--out", default="", help="also write every report here as JSON")
    p.add_argument("--list", action="store_true")
    p.add_argument("--validate", action="store_true", help="the published runs' table instead (docs/plan.md)")
    a = p.parse_args()
    if a.list:
        for name, (label, args, *_) in {**ROWS, **PUBLISHED}.items():
            print(f"{name:16s} {label}\n{'':16s} gptjax plan {shlex.join(args)}")
        return
    results = {}
    if a.validate:
        lines = [VALIDATION_HEADER]
        names = [n.strip() for n in (a.rows or ",".join(PUBLISHED)).split(",") if n.strip()]
        unknown = [n for n in names if n not in PUBLISHED]
        if unknown:
            sys.exit(f"plan_table: unknown published rows {unknown}; --list shows them (the pub_* names)")
        if common.smoke_run("one published run's row, its `gptjax plan` shrinking the model (GPTJAX_SMOKE)"):
            names = names[:1]
        for name in names:
            label, args, tflops, seconds, source = PUBLISHED[name]
            print(f"gptjax plan {shlex.join(args)}", flush=True)
            results[name] = run_row(args, a.timeout)
            lines.append(validation_row(label, results[name], tflops, seconds, source))
            print(lines[-1], flush=True)
            if a.out:
                with open(a.out, "w") as f:
                    json.dump(results, f, indent=1)
        print("\n" + "\n".join(lines))
        return
    names = [n.strip() for n in (a.rows or ",".join(DEFAULT_ROWS)).split(",") if n.strip()]
    names = [m for n in names for m in (ACT_ROWS if n == "act" else [n])]  # --rows=act: the activation table
    if common.smoke_run("one row, planning gptjax's smoke model (`gptjax plan` inherits GPTJAX_SMOKE)"):
        names = names[:1] if a.rows else [SMOKE_ROW]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"plan_table: unknown rows {unknown}; --list shows them")
    lines = [HEADER]
    for name in names:
        label, args = ROWS[name]
        print(f"gptjax plan {shlex.join(args)}", flush=True)
        r = run_row(args, a.timeout)
        results[name] = r
        lines.append(table_row(label, r))
        print(lines[-1], flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=1)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
