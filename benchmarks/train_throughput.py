"""Training throughput of gptjax against a PyTorch peer of the same shapes, on this machine, in one run.

The peer is transformers' GPT2LMHeadModel (same n_layer / n_embd / n_head / n_positions / vocab, dropout 0) with
torch.optim.AdamW in fp32 and torch.set_num_threads(2); its step is forward, loss, backward,
clip_grad_norm_(1.0), step, zero_grad. gptjax runs the real `Trainer.train_step` of gptjax/runs/pretrain.py, built from
experiments/pretrain/shakespeare_char.py with the shape overridden.

Every variant runs in its own subprocess (XLA flags must be in the environment before jax is imported), one
after the other and alternating: each round runs every variant of a shape once, in a rotated order, and the
table reports the median over rounds and the ratio to the peer. All variants start from the same parameters
(gptjax's init of the seed, exported to the peer with gptjax.convert.hf) and train on the same tinyshakespeare
character batches (nanoGPT's get_batch: random windows, from np.random.default_rng([seed, step])) with the same
schedule (linear warmup, cosine decay), AdamW betas, weight-decay mask and clipping, so the losses after the same
number of steps are comparable. Each row also says how much CPU other programs took while it ran: the machine
is shared, and torch's OpenMP threads slow down many times over when a core is taken.

  python benchmarks/train_throughput.py                       # both shapes, peer + gptjax fp32 + bf16, 3 rounds
  python benchmarks/train_throughput.py --shapes=baby --rounds=5
  python benchmarks/train_throughput.py --variants=jax:float32:none,jax:float32:onednn   # an XLA flag ablation

Under GPTJAX_SMOKE=1 (benchmarks/common.py): the first shape, shrunk to gptjax's smoke model, one round of 2 timed
steps after 1, every variant.

A variant is `torch` or `jax:<compute dtype>:<flag set>`; flag sets are the keys of FLAG_SETS (`+` joins them).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import common  # benchmarks/common.py
from gptjax.configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "data", "shakespeare_char", "input.txt")  # nanoGPT's tinyshakespeare, in the repository

SHAPES = {
    # name: layers, heads, width, context, batch, vocab, warmup steps (untimed), timed steps
    "baby": dict(layers=4, heads=4, width=128, ctx=64, batch=12, vocab=65, warmup=10, steps=150),
    "6x384": dict(layers=6, heads=6, width=384, ctx=256, batch=16, vocab=65, warmup=2, steps=10),
    # gptjax's default run (configs/default.py: BPE-2048); here fed the same character ids.
    "default": dict(layers=4, heads=4, width=256, ctx=128, batch=16, vocab=2048, warmup=5, steps=40),
}
CHARS = 65  # tinyshakespeare's distinct characters

# Named sets of XLA CPU flags; a variant may join several with '+'.
FLAG_SETS = {
    "none": [],
    "onednn": ["--xla_cpu_experimental_onednn_custom_call=true"],
    "xnn": ["--xla_cpu_experimental_xnn_fusion_type=dot"],
    "xnngraph": ["--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"],
    "fastmath": ["--xla_cpu_enable_fast_math=true"],
    "noeigen": ["--xla_cpu_multi_thread_eigen=false"],
    "vec512": ["--xla_cpu_prefer_vector_width=512"],
    "fastrt": ["--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME"],
    "concsched": ["--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"],
    "memsched": ["--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"],
    # Two data-parallel CPU devices: faster on small shapes, but the all-reduce rendezvous can deadlock
    # when both devices' thunks wait in the two shared worker threads (seen here); not used by default.
    "dp2": ["--xla_force_host_platform_device_count=2"],
}
# No XLA flag made whole training steps faster here (benchmarks/README.md has the ablation), so the default run
# uses none; bf16 compute is slower than fp32 on this jaxlib (XLA:CPU converts bf16 dots to f32).
BEST_FLAGS = "none"
DEFAULT_VARIANTS = ["torch", f"jax:float32:{BEST_FLAGS}", f"jax:bfloat16:{BEST_FLAGS}"]


def xla_flags(flag_set: str) -> str:
    return " ".join(f for name in flag_set.split("+") for f in FLAG_SETS[name])


# ---------------------------------------------------------------- data and schedule, shared by both frameworks


def load_corpus():
    """nanoGPT's shakespeare_char/prepare.py: sorted characters, first 90% train, last 10% validation."""
    with open(DATA, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    assert len(chars) == CHARS, len(chars)
    table = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((table[c] for c in text), np.uint16, len(text))
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


def train_batch(tokens, step: int, batch: int, ctx: int, seed: int = 0) -> np.ndarray:
    """Rows of ctx + 1 tokens at random offsets: a pure function of (seed, step), as gptjax.data does it."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - ctx, size=batch)
    return np.asarray(tokens[starts[:, None] + np.arange(ctx + 1)], np.int32)


def val_batches(tokens, n: int, batch: int, ctx: int):
    """The same n consecutive validation batches every time."""
    for b in range(n):
        starts = (b * batch + np.arange(batch)) * ctx
        yield np.asarray(tokens[starts[:, None] + np.arange(ctx + 1)], np.int32)


def optim_settings(total_steps: int) -> dict:
    """experiments/pretrain/shakespeare_char.py's optimizer, with the warmup shortened to fit a short run."""
    return dict(lr=1e-3, min_lr=1e-4, warmup_steps=max(1, total_steps // 10), decay_steps=total_steps, b1=0.9,
                b2=0.99, eps=1e-8, weight_decay=0.1, clip_norm=1.0)


def lr_at(step: int, o: dict) -> float:
    """optax.warmup_cosine_decay_schedule as gptjax.optimizer.schedule configures it."""
    w, d = o["warmup_steps"], o["decay_steps"]
    init = o["lr"] / (w + 1)
    if step < w:
        return init + (o["lr"] - init) * step / w
    frac = min(step - w, d - w) / (d - w)
    return o["min_lr"] + (o["lr"] - o["min_lr"]) * 0.5 * (1 + math.cos(math.pi * frac))


# ---------------------------------------------------------------- gptjax worker


def jax_config(shape: dict, dtype: str, total_steps: int):
    sys.path.insert(0, os.path.join(REPO, "experiments", "pretrain"))
    import shakespeare_char

    from gptjax import configs

    c = shakespeare_char.get_config()
    c.data.path = DATA
    c.data.seq_len = shape["ctx"]
    c.model.update(num_layers=shape["layers"], num_heads=shape["heads"], d_model=shape["width"],
                   max_len=shape["ctx"], dropout=0.0, vocab_size=shape["vocab"], dtype=dtype, param_dtype="float32")
    c.train.update(steps=total_steps, batch_size=shape["batch"])
    c.optim.update(**optim_settings(total_steps))
    return configs.finalize(c)


def jax_worker(args, shape) -> dict:
    import jax

    from gptjax import metrics, sharding
    from gptjax.objectives import LanguageModeling
    from gptjax.runs.pretrain import planned
    from gptjax.trainer import Trainer

    total = shape["warmup"] + shape["steps"]
    config = jax_config(shape, args.dtype, total)
    mesh = sharding.make_mesh(config.mesh.shape)
    trainer = Trainer(config, mesh, *planned(config))
    state = trainer.init_state(config.seed)
    if args.export_init:  # the peer's starting point
        from gptjax.convert import hf

        hf.save_hf_gpt2(jax.device_get(state.params), trainer.model.cfg, args.export_init)
        return {}
    train_tokens, val_tokens = load_corpus()
    batches = [LanguageModeling.from_windows(train_batch(train_tokens, s, shape["batch"], shape["ctx"]))
               for s in range(total)]
    losses = []
    with trainer.context():
        t_compile = time.perf_counter()
        for s in range(shape["warmup"]):
            state, out = trainer.train_step(state, sharding.host_local_to_global(batches[s], mesh))
            losses.append(out["train_loss"])
            if s == 0:
                jax.block_until_ready(out)
                t_compile = time.perf_counter() - t_compile
        jax.block_until_ready(state)
        # Timed like the training loop runs: dispatch every step, sync once at the end.
        t0 = time.perf_counter()
        for s in range(shape["warmup"], total):
            state, out = trainer.train_step(state, sharding.host_local_to_global(batches[s], mesh))
            losses.append(out["train_loss"])
        jax.block_until_ready((state, out))
        elapsed = time.perf_counter() - t0
        val_loss = trainer.evaluate(state.params, (LanguageModeling.from_windows(b) for b in val_batches(
            val_tokens, args.val_batches, shape["batch"], shape["ctx"])))["val_loss"]
    losses = [float(x) for x in jax.device_get(losses)]
    flops_per_token = metrics.flops_per_token(state.params, trainer.model.cfg, shape["ctx"])
    return dict(elapsed=elapsed, compile_s=t_compile, losses=losses, val_loss=val_loss,
                flops_per_token=flops_per_token, peak=metrics.peak_flops_per_device(args.dtype))


# ---------------------------------------------------------------- PyTorch peer worker


def torch_peak_flops(torch, n: int = 1024) -> float:
    a = torch.ones(n, n)
    a @ a
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def torch_worker(args, shape) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(2)
    torch.manual_seed(0)
    total = shape["warmup"] + shape["steps"]
    o = optim_settings(total)
    model = GPT2LMHeadModel.from_pretrained(args.init_dir, attn_implementation=args.attn)  # dropout 0 in config
    model.train()
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size) == (
        shape["layers"], shape["width"], shape["heads"], shape["ctx"], shape["vocab"]), c
    decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 2 and "wte" not in n
             and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o["lr"], betas=(o["b1"], o["b2"]),
                            eps=o["eps"])
    train_tokens, val_tokens = load_corpus()
    batches = [torch.from_numpy(train_batch(train_tokens, s, shape["batch"], shape["ctx"]).astype(np.int64))
               for s in range(total)]

    def step(s):
        for g in opt.param_groups:
            g["lr"] = lr_at(s, o)
        b = batches[s]
        logits = model(input_ids=b[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), b[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses = [step(s) for s in range(shape["warmup"])]
    t0 = time.perf_counter()
    losses += [step(s) for s in range(shape["warmup"], total)]
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        vals = []
        for b in val_batches(val_tokens, args.val_batches, shape["batch"], shape["ctx"]):
            b = torch.from_numpy(b.astype(np.int64))
            logits = model(input_ids=b[:, :-1]).logits
            vals.append(float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), b[:, 1:].reshape(-1))))
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 2
                   and "wpe" not in n)
    flops_per_token = 6.0 * n_matmul + 12.0 * shape["layers"] * shape["ctx"] * shape["width"]
    return dict(elapsed=elapsed, compile_s=0.0, losses=[float(x) for x in losses], val_loss=float(np.mean(vals)),
                flops_per_token=flops_per_token, peak=torch_peak_flops(torch))


# ---------------------------------------------------------------- orchestration


def summarize(shape_name: str, shape: dict, variants, results) -> list[str]:
    tokens = shape["batch"] * shape["ctx"] * shape["steps"]
    rows = {}
    for v in variants:
        rs = results[v]
        tps = [tokens / r["elapsed"] for r in rs]
        rows[v] = dict(
            tps=statistics.median(tps), spread=(min(tps), max(tps)),
            mfu=statistics.median(t * r["flops_per_token"] / r["peak"] for t, r in zip(tps, rs)),
            peak=statistics.median(r["peak"] for r in rs),
            loss=statistics.median(float(np.mean(r["losses"][-10:])) for r in rs),
            val=statistics.median(r["val_loss"] for r in rs),
            compile=statistics.median(r["compile_s"] for r in rs),
            others=statistics.median(r["others"] for r in rs),
        )
    ref = rows.get("torch") or rows[variants[0]]
    total = shape["warmup"] + shape["steps"]
    out = [f"\n### {shape_name}: {shape['layers']} layers x {shape['width']} wide, {shape['heads']} heads, context "
           f"{shape['ctx']}, batch {shape['batch']}, vocab {shape['vocab']}; {len(results[variants[0]])} rounds x "
           f"{shape['steps']} timed steps (after {shape['warmup']}); losses after {total} steps\n",
           "| variant | XLA flags | tokens/s (median) | min..max | ratio vs peer | MFU | peak matmul GFLOP/s | "
           "train loss (last 10) | val loss | compile s | other load (cores) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        r = rows[v]
        flags = "" if v == "torch" else (xla_flags(v.split(":")[2]) or "(none)")
        name = "PyTorch GPT2LMHeadModel fp32" if v == "torch" else f"gptjax {v.split(':')[1]}"
        out.append(f"| {name} | `{flags}` | {r['tps']:,.0f} | {r['spread'][0]:,.0f}..{r['spread'][1]:,.0f} | "
                   f"{r['tps'] / ref['tps']:.2f}x | {100 * r['mfu']:.1f}% | {r['peak'] / 1e9:.0f} | {r['loss']:.4f} | "
                   f"{r['val']:.4f} | {r['compile']:.1f} | {r['others']:.2f} |")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="baby,6x384", help=f"comma-separated, of {sorted(SHAPES)}")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated: torch | jax:<dtype>:<flag set>[+<flag set>...]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="timed steps per round (0: the shape's default)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps first (-1: the shape's default)")
    p.add_argument("--val_batches", type=int, default=8)
    p.add_argument("--attn", default="sdpa", help="the peer's attn_implementation (sdpa | eager)")
    p.add_argument("--json", default="", help="also write the raw per-round results here")
    # worker mode (one variant, one process)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--framework", default="jax", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--shape", default="baby", help=argparse.SUPPRESS)
    p.add_argument("--init_dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--export_init", default="", help=argparse.SUPPRESS)
    p.add_argument("--shape_json", default="", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        shape = json.loads(args.shape_json)
        result = (torch_worker if args.framework == "torch" else jax_worker)(args, shape)
        print(json.dumps(result))
        return

    smoke_run = common.smoke_run("the first shape, shrunk to gptjax's smoke model, 1 round of 2 timed steps")
    if smoke_run:
        args.shapes = args.shapes.split(",")[0]
        args.rounds, args.steps, args.warmup, args.val_batches = 1, 2, 1, 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v != "torch":
            _, dtype, flag_set = v.split(":")
            assert all(f in FLAG_SETS for f in flag_set.split("+")), f"unknown flag set in {v}"
    t_start = time.time()
    tables, raw = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape_name in args.shapes.split(","):
            shape = dict(SHAPES[shape_name])
            if smoke_run:
                shape = common.smoke_shape(shape)
            if args.steps:
                shape["steps"] = args.steps
            if args.warmup >= 0:
                shape["warmup"] = args.warmup
            init_dir = os.path.join(tmp, shape_name)
            args_shape = ["--shape_json", json.dumps(shape)]
            subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--framework", "jax",
                            "--export_init", init_dir, *args_shape], check=True, cwd=REPO,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True)
            results = {v: [] for v in variants}
            for r in range(args.rounds):
                order = variants[r % len(variants):] + variants[:r % len(variants)]  # rotate who goes first
                for v in order:
                    res = run_variant(v, shape_name, shape, init_dir, args)
                    results[v].append(res)
                    tps = shape["batch"] * shape["ctx"] * shape["steps"] / res["elapsed"]
                    print(f"[{time.time() - t_start:6.0f}s] {shape_name} round {r + 1}/{args.rounds} {v}: "
                          f"{tps:,.0f} tok/s, loss {np.mean(res['losses'][-10:]):.4f}, other programs "
                          f"{res['others']:.2f} cores", file=sys.stderr, flush=True)
            raw[shape_name] = results
            tables += summarize(shape_name, shape, variants, results)
    print(f"\n## gptjax vs PyTorch training throughput ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores)")
    print(f"command: python benchmarks/train_throughput.py {' '.join(sys.argv[1:])}".rstrip())
    print("\n".join(tables))
    print(f"\n(total {time.time() - t_start:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


def run_variant(variant, shape_name, shape, init_dir, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--shape_json", json.dumps(shape),
           "--init_dir", init_dir, "--val_batches", str(args.val_batches), "--attn", args.attn]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if variant == "torch":
        cmd += ["--framework", "torch"]
        env.pop("XLA_FLAGS", None)
    else:
        _, dtype, flag_set = variant.split(":")
        cmd += ["--framework", "jax", "--dtype", dtype]
        # A smoke run keeps the caller's flags (the tests' cheap compiles) before the variant's own.
        inherited = os.environ.get("XLA_FLAGS", "") if smoke.enabled() else ""
        env["XLA_FLAGS"] = f"{inherited} {xla_flags(flag_set)}".strip()
    busy0, own0, t0 = machine_busy_seconds(), children_cpu_seconds(), time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.exit(f"{variant} on {shape_name} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # CPU time other programs took while this variant ran, in cores: the machine is shared.
    result["others"] = max(0.0, (machine_busy_seconds() - busy0) - (children_cpu_seconds() - own0)) / (time.time() - t0)
    return result


def machine_busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat: user nice system irq softirq steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    main()
