"""GPT-2 124M training on one GPU: gptjax with cuDNN flash attention against gptjax's reference attention, and
against nanoGPT (`torch.compile`, its own `model.py`) on the same machine, in one run.

Every variant trains the same shape as nanoGPT's `bench.py`: 12 layers x 768, 12 heads, context 1024, vocabulary
50,304, batch 12, dropout 0, bf16 compute with fp32 master weights, AdamW (fused for nanoGPT, optax for gptjax),
gradient clipping 1.0, on the same random token batches. gptjax runs the real `Trainer.train_step` of
gptjax/runs/pretrain.py; nanoGPT runs forward under `torch.autocast(bfloat16)`, backward, `clip_grad_norm_`, step,
`zero_grad`. Each variant runs in its own process (jax and torch would share the GPU's memory otherwise), rounds
alternate the variants, and both sides are timed the way their training loops run: dispatch every step, one
synchronisation at the end. MFU is the same model-FLOPs formula for all (`gptjax.metrics.flops_per_token`: 6 per
matmul parameter plus attention scores) over the stated bf16 dense peak of the device
(`gptjax.metrics.PEAK_FLOPS`).

  python benchmarks/gpu_train.py --nanogpt=PATH/TO/nanoGPT                 # all variants, 2 rounds
  python benchmarks/gpu_train.py --variants=gptjax:cudnn,gptjax:reference   # no peer needed

PATH/TO/nanoGPT is a checkout of github.com/karpathy/nanoGPT (only its model.py is imported). Without a GPU the
script stops at once with one line that says so (two of the three variants are CUDA programs); the CPU comparison
is benchmarks/train_throughput.py. Under GPTJAX_SMOKE=1 (benchmarks/common.py), on a GPU: gptjax's smoke model (the
shape shrunk as `gptjax train` shrinks it, the peer built the same), one round of 2 timed steps after 1.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import common  # benchmarks/common.py
from gptjax.configs import smoke

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(layers=12, heads=12, width=768, ctx=1024, vocab=50304)
VARIANTS = ("gptjax:cudnn", "gptjax:reference", "nanogpt:compile")


def batches(n: int, batch: int, ctx: int):
    """The same random (batch, ctx + 1) token windows for every variant; GPT-2's real vocabulary is 50,257."""
    return [np.random.default_rng(s).integers(0, 50257, (batch, ctx + 1), dtype=np.int32) for s in range(n)]


def gptjax_worker(attention: str, args) -> dict:
    import jax

    from gptjax import configs, metrics, sharding
    from gptjax.objectives import LanguageModeling
    from gptjax.runs.pretrain import planned
    from gptjax.trainer import Trainer

    c = configs.get_config()
    c.model.update(num_layers=SHAPE["layers"], num_heads=SHAPE["heads"], d_model=SHAPE["width"],
                   max_len=SHAPE["ctx"], vocab_size=SHAPE["vocab"], dropout=0.0, dtype="bfloat16",
                   param_dtype="float32", attention_impl=attention)
    c.data.seq_len = SHAPE["ctx"]
    c.train.update(steps=args.warmup + args.steps, batch_size=args.batch)
    c.optim.update(lr=6e-4, warmup_steps=2, b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
    config = configs.finalize(c)
    mesh = sharding.make_mesh(config.mesh.shape)
    trainer = Trainer(config, mesh, *planned(config))
    state = trainer.init_state(config.seed)
    data = [LanguageModeling.from_windows(b) for b in batches(args.warmup + args.steps, args.batch, SHAPE["ctx"])]
    losses = []
    with trainer.context():
        data = [sharding.host_local_to_global(b, mesh) for b in data]
        t = time.perf_counter()
        state, out = trainer.train_step(state, data[0])
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - t
        for b in data[1:args.warmup]:
            state, out = trainer.train_step(state, b)
        jax.block_until_ready((state, out))
        t0 = time.perf_counter()
        for b in data[args.warmup:]:
            state, out = trainer.train_step(state, b)
            losses.append(out["train_loss"])
        jax.block_until_ready((state, out))
        elapsed = time.perf_counter() - t0
    return dict(elapsed=elapsed, compile_s=compile_s, loss=float(losses[-1]),
                flops_per_token=metrics.flops_per_token(state.params, trainer.model.cfg, SHAPE["ctx"]),
                peak=metrics.peak_flops_per_device("bfloat16"), device=jax.devices()[0].device_kind,
                versions=f"jax {jax.__version__}")


def nanogpt_worker(args) -> dict:
    import torch

    sys.path.insert(0, args.nanogpt)
    from model import GPT, GPTConfig  # nanoGPT's model.py

    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True  # as nanoGPT's train.py and bench.py
    torch.backends.cudnn.allow_tf32 = True
    model = GPT(GPTConfig(block_size=SHAPE["ctx"], vocab_size=SHAPE["vocab"], n_layer=SHAPE["layers"],
                          n_head=SHAPE["heads"], n_embd=SHAPE["width"], dropout=0.0, bias=True)).cuda()
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95), device_type="cuda")
    step_model = torch.compile(model)
    # (inputs, targets) as contiguous tensors, as nanoGPT's get_batch makes them
    data = [(torch.from_numpy(b[:, :-1].astype(np.int64)).cuda(), torch.from_numpy(b[:, 1:].astype(np.int64)).cuda())
            for b in batches(args.warmup + args.steps, args.batch, SHAPE["ctx"])]

    def step(xy):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            _, loss = step_model(*xy)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t = time.perf_counter()
    step(data[0])
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    for b in data[1:args.warmup]:
        step(b)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in data[args.warmup:]:
        loss = step(b)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    # The same formula as gptjax: 6 x matmul parameters (the tied embedding counted once, as the head) + attention.
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n)
    from gptjax import metrics

    return dict(elapsed=elapsed, compile_s=compile_s, loss=float(loss),
                flops_per_token=6.0 * n_matmul + 12.0 * SHAPE["layers"] * SHAPE["ctx"] * SHAPE["width"],
                peak=metrics.PEAK_FLOPS["NVIDIA H100"]["bfloat16"]
                if "H100" in torch.cuda.get_device_name() else None,
                device=torch.cuda.get_device_name(), versions=f"torch {torch.__version__}")


def backend() -> str:
    """jax's default backend, asked in a child process: a GPU client in this one would hold memory the variants
    need."""
    probe = subprocess.run([sys.executable, "-c", "import gptjax, jax; print(jax.default_backend())"], text=True,
                           capture_output=True, env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
    lines = probe.stdout.split()
    return lines[-1] if probe.returncode == 0 and lines else f"unknown ({probe.stderr.strip()[-300:]})"


def run_child(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, f"--child={variant}", f"--steps={args.steps}", f"--warmup={args.warmup}",
           f"--batch={args.batch}", f"--nanogpt={args.nanogpt}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--nanogpt", default="", help="a nanoGPT checkout (for the nanogpt:compile variant)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (the first compiles)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", default="")
    args = p.parse_args()
    if smoke.enabled():  # parent and children alike: the children build the shape from it
        shape = common.smoke_shape(dict(SHAPE, batch=args.batch))
        args.batch = shape.pop("batch")
        SHAPE.update(shape)
    if args.child:
        kind, _, impl = args.child.partition(":")
        out = nanogpt_worker(args) if kind == "nanogpt" else gptjax_worker(impl, args)
        print(json.dumps(out))
        return
    where = backend()
    if where not in ("gpu", "cuda"):
        sys.exit(f"gptjax: error: benchmarks/gpu_train.py needs an NVIDIA GPU, and jax runs on {where} here "
                 "(benchmarks/train_throughput.py is the CPU comparison)")
    if common.smoke_run("gptjax's smoke model, 1 round of 2 timed steps"):
        args.rounds, args.steps, args.warmup = 1, 2, 1
    variants = args.variants.split(",")
    results = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            results[v].append(run_child(v, args))
            print(f"round {r} {v}: {json.dumps(results[v][-1])}", file=sys.stderr, flush=True)
    tokens = args.batch * SHAPE["ctx"] * args.steps
    first = next((v for v in variants if all("elapsed" in x for x in results[v])), None)
    device = results[first][0]["device"] if first else "(every variant failed)"
    print(f"## GPT-2 124M training on {device} ({time.strftime('%Y-%m-%d')}): {SHAPE['layers']} x {SHAPE['width']}, "
          f"context {SHAPE['ctx']}, vocab {SHAPE['vocab']:,}, batch {args.batch}, bf16 compute, {args.rounds} rounds x "
          f"{args.steps} timed steps (after {args.warmup})")
    print(f"command: python benchmarks/gpu_train.py {' '.join(sys.argv[1:])}".rstrip())
    print("\n| variant | software | tokens/s (median) | min..max | vs nanoGPT | MFU | step ms | first step s | "
          "loss at the last step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {v: statistics.median(tokens / x["elapsed"] for x in results[v]) for v in variants
           if all("elapsed" in x for x in results[v])}
    peer = med.get("nanogpt:compile")
    for v in variants:
        rs = results[v]
        if v not in med:
            print(f"| {v} | failed: {'; '.join(x.get('error', '') for x in rs if 'error' in x)} |")
            continue
        tps = [tokens / x["elapsed"] for x in rs]
        mfu = f"{100 * med[v] * rs[0]['flops_per_token'] / rs[0]['peak']:.1f}%" if rs[0]["peak"] else "-"
        ratio = f"{med[v] / peer:.2f}x" if peer else "-"
        print(f"| {v} | {rs[0]['versions']} | {med[v]:,.0f} | {min(tps):,.0f}..{max(tps):,.0f} | {ratio} | {mfu} | "
              f"{1e3 * args.batch * SHAPE['ctx'] / med[v]:.1f} | {statistics.median(x['compile_s'] for x in rs):.1f} "
              f"| {rs[-1]['loss']:.4f} |")


if __name__ == "__main__":
    main()
