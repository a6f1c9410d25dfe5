"""In-process A/B of the implementation switch (gptjax/kernels) on the real Trainer step: `reference` (plain
attention, LayerNorm and loss, differentiated by autodiff) against `cpu_fused` (the hand-written backward passes).

Each variant gets its own Trainer (same config, same weights, same data); the timed loop alternates one step of each
variant, so every variant sees the same machine load, and the table gives median step times and the speed-up over
the first variant. Nothing is loaded from git: both implementations live in the package.

  python benchmarks/model_ablation.py                                  # baby, 6x384 and default shapes
  python benchmarks/model_ablation.py --shapes=default --variants=reference,attention_only,cpu_fused --steps=20

XLA flags apply to the whole process: set XLA_FLAGS in the environment to ablate them (see train_throughput.py).
Under GPTJAX_SMOKE=1 (benchmarks/common.py): the first shape, shrunk to gptjax's smoke model, 2 steps of each variant.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (benchmarks/common.py)
import train_throughput as tt  # noqa: E402

# variant -> (attention_impl, norm_impl, loss_impl)
VARIANTS = {
    "reference": ("reference", "reference", "reference"),
    "cpu_fused": ("cpu_fused", "cpu_fused", "cpu_fused"),
    "attention_only": ("cpu_fused", "reference", "reference"),
    "norm_only": ("reference", "cpu_fused", "reference"),
    "loss_only": ("reference", "reference", "cpu_fused"),
}


def build(variant, shape, dtype, batches):
    import jax

    from gptjax import sharding
    from gptjax.objectives import LanguageModeling
    from gptjax.runs.pretrain import planned
    from gptjax.trainer import Trainer

    config = tt.jax_config(shape, dtype, 1000)
    attention, norm, loss = VARIANTS[variant]
    with config.unlocked():
        config.model.update(attention_impl=attention, norm_impl=norm, loss_impl=loss)
    mesh = sharding.make_mesh(config.mesh.shape)
    trainer = Trainer(config, mesh, *planned(config))
    state = trainer.init_state(config.seed)  # same seed: the same weights for every variant
    with trainer.context():
        batches = [sharding.host_local_to_global(LanguageModeling.from_windows(b), mesh) for b in batches]
        for b in batches[:2]:  # compile and warm up
            state, out = trainer.train_step(state, b)
        jax.block_until_ready(out)
    return dict(trainer=trainer, state=state, batches=batches, times=[], losses=[])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="baby,6x384,default")
    p.add_argument("--variants", default="reference,cpu_fused", help=f"from {', '.join(VARIANTS)}")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=0, help="timed steps per variant (0: 40 baby, 8 6x384, 16 default)")
    args = p.parse_args()
    smoke_run = common.smoke_run("the first shape, shrunk to gptjax's smoke model, 2 steps of each variant")
    if smoke_run:
        args.shapes, args.steps = args.shapes.split(",")[0], 2
    import jax

    variants = args.variants.split(",")
    print(f"## implementation A/B, in one process, steps alternating ({time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, dtype {args.dtype})")
    print(f"command: python benchmarks/model_ablation.py {' '.join(sys.argv[1:])}".rstrip())
    train_tokens, _ = tt.load_corpus()
    for shape_name in args.shapes.split(","):
        shape = common.smoke_shape(tt.SHAPES[shape_name]) if smoke_run else tt.SHAPES[shape_name]
        steps = args.steps or {"baby": 40, "6x384": 8}.get(shape_name, 16)
        batches = [tt.train_batch(train_tokens, s, shape["batch"], shape["ctx"]) for s in range(steps + 2)]
        runs = {v: build(v, shape, args.dtype, batches) for v in variants}
        busy0 = tt.machine_busy_seconds()
        own0 = time.process_time()
        t0 = time.time()
        for s in range(2, steps + 2):
            for v in variants:
                r = runs[v]
                with r["trainer"].context():
                    t = time.perf_counter()
                    r["state"], out = r["trainer"].train_step(r["state"], r["batches"][s])
                    jax.block_until_ready((r["state"], out))
                    r["times"].append(time.perf_counter() - t)
                    r["losses"].append(float(out["train_loss"]))
        others = max(0.0, tt.machine_busy_seconds() - busy0 - (time.process_time() - own0)) / (time.time() - t0)
        base = statistics.median(runs[variants[0]]["times"])
        tokens = shape["batch"] * shape["ctx"]
        print(f"\n### {shape_name} ({shape['layers']}x{shape['width']}, ctx {shape['ctx']}, batch {shape['batch']}, "
              f"vocab {shape['vocab']}), {steps} steps each; other programs used {others:.2f} cores\n")
        print("| variant (attention, norm, loss) | median step ms | min step ms | tokens/s | speed-up | "
              "loss after the last step |")
        print("|---|---:|---:|---:|---:|---:|")
        for v in variants:
            r = runs[v]
            med = statistics.median(r["times"])
            print(f"| {v} ({', '.join(VARIANTS[v])}) | {1e3 * med:.1f} | {1e3 * min(r['times']):.1f} | "
                  f"{tokens / med:,.0f} | {base / med:.2f}x | {r['losses'][-1]:.4f} |")
        del runs


if __name__ == "__main__":
    main()
