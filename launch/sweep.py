#!/usr/bin/env python
"""Runs every entry of an experiment's get_sweep() one after another, each in WORKDIR/<overrides>.

python launch/sweep.py --config=experiments/sweeps/gpt1_vs_gpt2_ablation.py --workdir=runs/ablation [--dry_run]
Extra flags after `--` go to every run (e.g. `-- --config.train.steps=200`). A finished entry resumes as a
no-op, so a sweep that was interrupted continues where it stopped. Prints a table of final val loss / bpb.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment file defining get_config and get_sweep")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--dry_run", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    path = args.config.split(":")[0]
    if not os.path.exists(path):
        sys.exit(f"sweep: error: --config: no such file: {path}")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        sys.exit(f"sweep: error: {path} defines no get_sweep()")
    rows = []
    for overrides in module.get_sweep():
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
        workdir = os.path.join(args.workdir, name)
        cmd = ["gptjax", "train", f"--config={args.config}", f"--workdir={workdir}"]
        cmd += [f"--config.{k}={v}" for k, v in overrides.items()] + extra
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        subprocess.run(cmd, check=True)
        evals = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if "val_loss" in line]
        rows.append((name, evals[-1]["val_loss"], evals[-1]["val_bpb"]))
    if rows:
        print("\n| run | val loss | val bpb |\n|---|---|---|")
        for name, loss, bpb in rows:
            print(f"| {name} | {loss:.4f} | {bpb:.4f} |")


if __name__ == "__main__":
    main()
