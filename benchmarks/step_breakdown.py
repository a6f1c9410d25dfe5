"""Where a CPU train step's time goes, gptjax beside PyTorch, at one shape (default: the README run's, 4 x 256,
context 128, batch 16, vocabulary 2048): the whole step, forward + backward, forward alone, the optimizer update
alone, and what the step's matmuls would take at each side's own measured matmul speed.

  python benchmarks/step_breakdown.py                  # the default shape, 5 rounds
  python benchmarks/step_breakdown.py --shape=baby --rounds=3
  python benchmarks/step_breakdown.py --profile         # gptjax's step op by op (needs `pip install xprof`)

Each part is its own compiled program (jax) or call sequence (torch), timed on the same batches and parameters,
in rounds that alternate the parts; medians. Backward is forward + backward less forward; "other" is the whole step
less forward + backward and the optimizer (clipping, the step's own bookkeeping, and what jit fuses differently
when the parts are one program). The matmul line is the model's matmul FLOPs (6 per parameter per token, the
attention's score and value products included) at the side's 1024 x 1024 matmul speed measured in this process:
what the step would take if it were all matmuls at that speed.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import common  # benchmarks/common.py
import train_throughput as tt  # noqa: E402  (the shapes, corpus, batches and configs of the throughput benchmark)

PARTS = ("step", "forward+backward", "forward", "optimizer")


def jax_parts(shape: dict):
    """{part: callable that runs it once and waits} for gptjax's real Trainer at `shape`."""
    import jax
    import optax

    from gptjax import sharding
    from gptjax.objectives import LanguageModeling
    from gptjax.runs.pretrain import planned
    from gptjax.trainer import Trainer

    config = tt.jax_config(shape, "float32", 10_000)
    mesh = sharding.make_mesh(config.mesh.shape)
    trainer = Trainer(config, mesh, *planned(config))
    state = trainer.init_state(config.seed)
    train_tokens, _ = tt.load_corpus()
    batch = sharding.host_local_to_global(
        LanguageModeling.from_windows(tt.train_batch(train_tokens, 0, shape["batch"], shape["ctx"])), mesh)
    loss = lambda p, b: trainer.objective.loss(trainer.model, p, b, jax.random.PRNGKey(0))[0]  # noqa: E731
    with trainer.context():
        fwd = jax.jit(loss)
        fwd_bwd = jax.jit(jax.value_and_grad(loss))
        grads = jax.block_until_ready(fwd_bwd(state.params, batch)[1])
        opt = jax.jit(lambda g, o, p: (lambda u, o2: (optax.apply_updates(p, u), o2))(*trainer.tx.update(g, o, p)))
        holder = {"state": jax.tree.map(lambda x: x.copy(), state)}  # the step donates its state: its own copy

        def step():
            holder["state"], out = trainer.train_step(holder["state"], batch)
            jax.block_until_ready(out)

        parts = {"step": step,
                 "forward+backward": lambda: jax.block_until_ready(fwd_bwd(state.params, batch)),
                 "forward": lambda: jax.block_until_ready(fwd(state.params, batch)),
                 "optimizer": lambda: jax.block_until_ready(opt(grads, state.opt_state, state.params))}
        for f in parts.values():  # compile
            f()
    a = np.ones((1024, 1024), np.float32)
    mm = jax.jit(lambda x: x @ x)
    matmul = _median_time(lambda: jax.block_until_ready(mm(a)), 10)
    from gptjax import metrics

    flops = metrics.flops_per_token(state.params, trainer.model.cfg, shape["ctx"]) * shape["batch"] * shape["ctx"]
    return parts, 2 * 1024**3 / matmul, flops, trainer.context


def torch_parts(shape: dict):
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=shape["layers"], n_head=shape["heads"], n_embd=shape["width"], n_positions=shape["ctx"],
                     vocab_size=shape["vocab"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    model.train()
    o = tt.optim_settings(10_000)
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                            weight_decay=o["weight_decay"])
    train_tokens, _ = tt.load_corpus()
    b = torch.from_numpy(tt.train_batch(train_tokens, 0, shape["batch"], shape["ctx"]).astype(np.int64))

    def forward():
        logits = model(input_ids=b[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), b[:, 1:].reshape(-1))

    def fwd_only():
        with torch.enable_grad():  # the same graph-building forward the step runs
            forward()

    def fwd_bwd():
        forward().backward()
        model.zero_grad(set_to_none=True)

    forward().backward()  # gradients for the optimizer-only part, set again before each of its calls
    saved = [(q, q.grad.clone()) for q in model.parameters()]

    def opt_only():
        for q, g in saved:
            q.grad = g
        opt.step()

    def step():
        forward().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
        opt.step()
        opt.zero_grad(set_to_none=False)

    a = torch.ones(1024, 1024)
    matmul = _median_time(lambda: a @ a, 10)
    parts = {"step": step, "forward+backward": fwd_bwd, "forward": fwd_only, "optimizer": opt_only}
    for f in parts.values():
        f()
    return parts, 2 * 1024**3 / matmul


# XLA:CPU's thunk names, by kind: XNNPACK's matmul fusions are `ynn_fusion.N`.
KINDS = (("matmul", ("ynn_fusion", "dot", "convolution")), ("copy / transpose (layout)", ("copy", "transpose")),
         ("softmax (exp)", ("exponential", "softmax")), ("GELU (tanh)", ("tanh",)), ("reductions", ("reduce",)))
TRACE_ONLY = ("$", "Thunk", "Threadpool", "ThreadPool", "Slinky", "PjitFunction")  # spans around the ops


def profile(step, context, steps: int, workdir: str) -> None:
    """Traces `steps` calls of gptjax's step with XLA:CPU's per-thunk trace events on, and prints the time of its
    ops by kind (xprof reads the trace). The flag must be set before jax starts: main() sets it."""
    import glob
    import json

    import jax
    from xprof.convert import raw_to_tool_data

    with context():
        for _ in range(2):
            step()
        jax.profiler.start_trace(workdir)
        for _ in range(steps):
            step()
        jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(workdir, "**", "*.xplane.pb"), recursive=True))[-1]
    trace = json.loads(raw_to_tool_data.xspace_to_tool_data([path], "trace_viewer", {})[0])
    by_kind, counts = {}, {}
    for e in trace["traceEvents"]:
        if e.get("ph") != "X" or e["name"].startswith(TRACE_ONLY):
            continue
        kind = next((k for k, keys in KINDS if any(key in e["name"] for key in keys)), "other elementwise fusions")
        by_kind[kind] = by_kind.get(kind, 0.0) + e.get("dur", 0) / 1e3 / steps
        counts[kind] = counts.get(kind, 0) + 1
    total = sum(by_kind.values())
    print(f"gptjax's step op by op ({steps} traced steps; trace in {path}); op times under tracing, which slows "
          "the step, so compare shares, not milliseconds\n")
    print("| kind of op | ms per step | share | ops per step |\n|---|---:|---:|---:|")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.0f}% | {counts[kind] // steps} |")


def _median_time(f, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="default", choices=sorted(tt.SHAPES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="calls of each part per round")
    p.add_argument("--profile", action="store_true", help="gptjax's step op by op instead (needs xprof)")
    p.add_argument("--trace_dir", default="", help="where --profile writes its trace (default: a temporary folder)")
    a = p.parse_args()
    shape = tt.SHAPES[a.shape]
    rounds, repeats = a.rounds, a.repeats
    if common.smoke_run("one round of two calls per part, a smaller model (GPTJAX_SMOKE)"):
        rounds, repeats, shape = 1, 2, common.smoke_shape(shape)
    if a.profile:
        try:
            import xprof  # noqa: F401
        except ImportError:
            print("gptjax: error: --profile reads the trace with xprof: pip install xprof", file=sys.stderr)
            return 2
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
        import tempfile

        parts, _, _, context = jax_parts(shape)
        profile(parts["step"], context, 1 if rounds == 1 else 5, a.trace_dir or tempfile.mkdtemp(prefix="gptjax-trace-"))
        return 0
    jax_side, jax_peak, flops, context = jax_parts(shape)  # the same model FLOPs for both sides
    sides = {"PyTorch (transformers GPT-2)": torch_parts(shape), "gptjax": (jax_side, jax_peak)}
    times = {side: {part: [] for part in PARTS} for side in sides}
    with context():  # gptjax's programs run under the mesh and rules they were traced with
        for r in range(rounds):
            for side, (parts, _) in (list(sides.items())[r % len(sides):] + list(sides.items())[:r % len(sides)]):
                for part in PARTS:
                    times[side][part].append(_median_time(parts[part], repeats))
    print(f"shape {a.shape}: {shape['layers']} x {shape['width']}, context {shape['ctx']}, batch {shape['batch']}, "
          f"vocabulary {shape['vocab']}; medians of {rounds} rounds x {repeats} calls, ms per step\n")
    names = list(sides)
    print("| part | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    med = {s: {k: 1e3 * statistics.median(v) for k, v in times[s].items()} for s in names}
    rows = [("whole step", "step"), ("forward", "forward"), ("forward + backward", "forward+backward"),
            ("optimizer update", "optimizer")]
    for label, key in rows:
        print(f"| {label} | " + " | ".join(f"{med[s][key]:.1f}" for s in names) + " |")
    print("| backward (f+b less f) | " + " | ".join(f"{med[s]['forward+backward'] - med[s]['forward']:.1f}"
                                                    for s in names) + " |")
    print("| other (step less f+b and optimizer) | " + " | ".join(
        f"{med[s]['step'] - med[s]['forward+backward'] - med[s]['optimizer']:.1f}" for s in names) + " |")
    print("| matmuls at the side's own matmul speed | " + " | ".join(
        f"{1e3 * flops / sides[s][1]:.1f} ({sides[s][1] / 1e9:.0f} GFLOP/s)" for s in names) + " |")
    print("| whole step / matmul time | " + " | ".join(f"{med[s]['step'] / (1e3 * flops / sides[s][1]):.2f}x"
                                                     for s in names) + " |")
    print(f"\nmodel FLOPs per step {flops:.3g}; gptjax / PyTorch whole-step time "
          f"{med[names[1]]['step'] / med[names[0]]['step']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
