"""In-process A/B of gptjax/model.py against an earlier version of it (read from git), on the real Trainer step.

Each variant gets its own Trainer (same config, same data); the timed loop alternates one step of each variant,
so every variant sees the same machine load, and the table gives median step times and the speed-up over the
first variant. The model module is swapped only for building the Trainer (train.py imports GPT and cross_entropy
from gptjax.model by name).

  python benchmarks/model_ablation.py                        # a7ef26b (before the speed work) vs the work tree
  python benchmarks/model_ablation.py --shapes=baby,6x384,default --revs=a7ef26b,HEAD,WORKTREE --steps=20

XLA flags apply to the whole process: set XLA_FLAGS in the environment to ablate them (see train_throughput.py).
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402


def load_model_module(rev: str, tmp: str):
    """gptjax/model.py at git revision `rev` (WORKTREE: the file on disk) as a module."""
    if rev == "WORKTREE":
        import gptjax.model

        return gptjax.model
    src = subprocess.run(["git", "show", f"{rev}:gptjax/model.py"], cwd=tt.REPO, check=True, capture_output=True,
                         text=True).stdout
    path = os.path.join(tmp, f"model_{rev.replace('/', '_')}.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f"gptjax_model_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(module, shape, dtype, batches):
    import jax

    from gptjax import sharding, train
    from gptjax.model import ModelConfig

    saved = train.GPT, train.cross_entropy
    train.GPT, train.cross_entropy = module.GPT, module.cross_entropy
    try:
        config = tt.jax_config(shape, dtype, 1000)
        mesh = sharding.make_mesh(config.mesh.shape)
        trainer = train.Trainer(config, mesh, ModelConfig.from_config(config.model))
        state = trainer.init_state(config.seed)
        with trainer.context():
            batches = [sharding.host_local_to_global(b, mesh) for b in batches]
            for b in batches[:2]:  # compile and warm up
                state, out = trainer.train_step(state, b)
            jax.block_until_ready(out)
    finally:
        train.GPT, train.cross_entropy = saved
    return dict(trainer=trainer, state=state, batches=batches, times=[], losses=[])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="baby,6x384,default")
    p.add_argument("--revs", default="a7ef26b,WORKTREE", help="git revisions of gptjax/model.py; WORKTREE = on disk")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=0, help="timed steps per variant (0: 40 baby, 8 6x384, 16 default)")
    args = p.parse_args()
    import jax

    revs = args.revs.split(",")
    print(f"## model.py A/B, in one process, steps alternating ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, dtype {args.dtype})")
    print(f"command: python benchmarks/model_ablation.py {' '.join(sys.argv[1:])}".rstrip())
    train_tokens, _ = tt.load_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        modules = {rev: load_model_module(rev, tmp) for rev in revs}
        for shape_name in args.shapes.split(","):
            shape = tt.SHAPES[shape_name]
            steps = args.steps or {"baby": 40, "6x384": 8}.get(shape_name, 16)
            batches = [tt.train_batch(train_tokens, s, shape["batch"], shape["ctx"]) for s in range(steps + 2)]
            runs = {rev: build(modules[rev], shape, args.dtype, batches) for rev in revs}
            busy0 = tt.machine_busy_seconds()
            own0 = time.process_time()
            t0 = time.time()
            for s in range(2, steps + 2):
                for rev in revs:
                    r = runs[rev]
                    with r["trainer"].context():
                        t = time.perf_counter()
                        r["state"], out = r["trainer"].train_step(r["state"], r["batches"][s])
                        jax.block_until_ready((r["state"], out))
                        r["times"].append(time.perf_counter() - t)
                        r["losses"].append(float(out["train_loss"]))
            others = max(0.0, tt.machine_busy_seconds() - busy0 - (time.process_time() - own0)) / (time.time() - t0)
            base = statistics.median(runs[revs[0]]["times"])
            tokens = shape["batch"] * shape["ctx"]
            print(f"\n### {shape_name} ({shape['layers']}x{shape['width']}, ctx {shape['ctx']}, batch {shape['batch']}, "
                  f"vocab {shape['vocab']}), {steps} steps each; other programs used {others:.2f} cores\n")
            print("| model.py | median step ms | min step ms | tokens/s | speed-up | loss after the last step |")
            print("|---|---:|---:|---:|---:|---:|")
            for rev in revs:
                r = runs[rev]
                med = statistics.median(r["times"])
                print(f"| {rev} | {1e3 * med:.1f} | {1e3 * min(r['times']):.1f} | {tokens / med:,.0f} | "
                      f"{base / med:.2f}x | {r['losses'][-1]:.4f} |")
            del runs


if __name__ == "__main__":
    main()
