#!/usr/bin/env python
"""Runs every entry of an experiment's get_sweep(), each in WORKDIR/<name>, then writes the results.

  python launch/sweep.py --config=experiments/sweeps/gpt1_vs_gpt2_ablation.py --workdir=runs/ablation
  python launch/sweep.py --config=FILE --workdir=/shared/sweep --launcher=slurm --nodes=1 --partition=gpu
  python launch/sweep.py --config=FILE --workdir=gs://BUCKET/sweep --launcher=tpu --tpu=abl --zone=us-west4-a \\
      --accelerator=v5e-16 --spot --queued --repo=https://github.com/YOU/gptjax.git

Each entry of get_sweep() is a dict of config overrides; its run is `gptjax train --config=FILE
--workdir=WORKDIR/<name> --config.KEY=VALUE ...`, plus any flags after `--` (given to every run). Launchers:
  local  runs the entries on this machine, --parallel at a time (default 1: one run already uses every core);
  slurm  submits one job per entry, all at once (launch/slurm.py), and waits until none is queued or running;
  tpu    runs one TPU slice per entry, all at once, named <--tpu>-<i> (launch/tpu_pod.py: create, set up, run,
         fetch logs, delete).
  xpk    submits one workload per entry to a GKE cluster, named <--workload>-<i> (launch/xpk.py), and waits for
         them all: `--launcher=xpk --cluster=C --workload=abl --tpu_type=v5e-16 --zone=Z`.
--dry_run prints every command and runs none. When the runs have finished, WORKDIR gets results.md and
results.csv (each run's overrides, final train and validation loss and bits per byte, tokens/s, wall time, read
from its metrics.jsonl) and val_curves.png (validation loss against step for all runs). A finished entry
resumes as a no-op, so rerunning an interrupted sweep finishes it; `--collect_only` just rewrites the results.
"""

import argparse
import concurrent.futures
import csv
import importlib.util
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slurm  # noqa: E402
import tpu_pod  # noqa: E402
import xpk  # noqa: E402

from gptjax import files  # noqa: E402
from gptjax.configs import smoke  # noqa: E402

LAUNCHERS = ("local", "slurm", "tpu", "xpk")
SMOKE_ENTRIES = 2  # under GPTJAX_SMOKE=1 a sweep runs its first entries (each shrunk): the runner end to end
COLUMNS = ("run", "overrides", "status", "steps", "train_loss", "train_bpb", "val_loss", "val_bpb", "tokens_per_sec",
           "wall_seconds")


class SweepError(ValueError):
    """A sweep file or flag that cannot work; printed as one line."""


def _path(p: str):
    """A local path or a URL such as gs://bucket/dir (etils.epath; gs:// needs gcsfs)."""
    from etils import epath

    return epath.Path(p)


def load_sweep(config: str) -> list[dict]:
    path = config.split(":")[0]
    if not os.path.isfile(path):
        raise SweepError(f"--config: no such file: {path}")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"--config: {path} defines no get_sweep()")
    entries = list(module.get_sweep())
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise SweepError(f"--config: {path}: get_sweep() must return a non-empty list of dicts of overrides")
    names = [run_name(e) for e in entries]
    if len(set(names)) != len(names):
        raise SweepError(f"--config: {path}: get_sweep() repeats an entry")
    return entries


def run_name(overrides: dict) -> str:
    """`norm=post,final_norm=False`: the last part of each key, in the entry's order ('base' for no overrides)."""
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"


def train_command(config: str, workdir: str, overrides: dict, extra: list[str]) -> list[str]:
    return ["gptjax", "train", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


# --- results ----------------------------------------------------------------------------------------------------


_NUMBERS = ("train_loss", "train_bpb", "val_loss", "val_bpb", "tokens_per_sec", "wall_seconds")


def read_metrics(workdir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl. A line that is not a row of metrics (the partial last line of a run
    killed while writing, or a damaged, binary or foreign file) is left out, with one note naming the file and the
    lines: the results table is still written for every run."""
    path = _path(workdir) / "metrics.jsonl"
    if not path.exists() or path.is_dir():
        return []
    rows, skipped = [], []
    for i, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or \
                not all(isinstance(row[k], (int, float)) for k in _NUMBERS if k in row):
            skipped.append(i)
            continue
        rows.append(row)
    if skipped:
        some = ", ".join(map(str, skipped[:5])) + (" ..." if len(skipped) > 5 else "")
        print(f"sweep: note: {path}: left out {len(skipped)} line{'s' * (len(skipped) > 1)} that "
              f"{'are' if len(skipped) > 1 else 'is'} not a row of metrics (line {some})", file=sys.stderr)
    return rows


def summarize(name: str, overrides: dict, rows: list[dict], status: str = "",
              wall_seconds: float | None = None) -> dict:
    """One results row from a run's metrics.jsonl rows. Train bits per byte uses the validation split's bytes per
    token (val_loss / ln 2 / val_bpb) unless the run logged train_bpb itself. tokens/s is the median over the
    logged intervals after the first (which includes compilation). Wall time is the run's own wall_seconds when
    it logged one, else the launcher's measurement."""
    train = [r for r in rows if "train_loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    out = {"run": name, "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()), "status": status,
           "steps": max((int(r["step"]) for r in rows), default=0)}
    if train:
        out["train_loss"] = train[-1]["train_loss"]
    if evals:
        out["val_loss"], out["val_bpb"] = evals[-1]["val_loss"], evals[-1]["val_bpb"]
    if train and "train_bpb" in train[-1]:
        out["train_bpb"] = train[-1]["train_bpb"]
    elif train and evals and evals[-1]["val_bpb"] > 0:
        bytes_per_token = evals[-1]["val_loss"] / math.log(2) / evals[-1]["val_bpb"]
        out["train_bpb"] = train[-1]["train_loss"] / math.log(2) / bytes_per_token
    speeds = sorted(r["tokens_per_sec"] for r in train[1:] or train if "tokens_per_sec" in r)
    if speeds:
        mid = len(speeds) // 2
        out["tokens_per_sec"] = speeds[mid] if len(speeds) % 2 else (speeds[mid - 1] + speeds[mid]) / 2
    for r in rows:  # in-context evaluation during training (eval.tasks): the last value of each icl/ metric
        out.update({k: v for k, v in r.items() if k.startswith("icl/")})
    logged_wall = [r["wall_seconds"] for r in rows if "wall_seconds" in r]
    if logged_wall or wall_seconds is not None:
        out["wall_seconds"] = logged_wall[-1] if logged_wall else wall_seconds
    if not out["status"]:
        out["status"] = "done" if evals else "no metrics"
    return out


def _fmt(key: str, value) -> str:
    if value is None or value == "":
        return "-"
    if key in ("train_loss", "train_bpb", "val_loss", "val_bpb"):
        return f"{value:.4f}"
    if key == "tokens_per_sec":
        return f"{value:,.0f}"
    if key == "wall_seconds":
        return f"{value:.0f}"
    if key.startswith("icl/"):
        return f"{value:.3f}"
    return str(value)


def write_results(workdir: str, results: list[dict], curves: dict[str, list[dict]]) -> None:
    """results.csv (full precision), results.md (a table) and val_curves.png under the sweep's workdir."""
    root = _path(workdir)
    with files.writing(root, "the sweep's results"):
        root.mkdir(parents=True, exist_ok=True)
        _write_results(root, results, curves)


def _write_results(root, results: list[dict], curves: dict[str, list[dict]]) -> None:
    icl = sorted({k for r in results for k in r if k.startswith("icl/")})  # evaluation columns, where runs had any
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS + tuple(icl), lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: r.get(k, "") for k in COLUMNS + tuple(icl)})
    (root / "results.csv").write_text(buf.getvalue())

    heads = ("run", "status", "steps", "train loss", "train bpb", "val loss", "val bpb", "tokens/s", "wall s",
             *(k[4:] for k in icl))
    keys = ("run", "status", "steps", "train_loss", "train_bpb", "val_loss", "val_bpb", "tokens_per_sec",
            "wall_seconds", *icl)
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    lines += ["| " + " | ".join(_fmt(k, r.get(k)) for k in keys) + " |" for r in results]
    notes = ["", "Overrides of each run:", ""] + [f"- `{r['run']}`: `{r['overrides'] or '(none)'}`" for r in results]
    notes += ["", "Losses are nats per token, at the last logged step (train) and the last evaluation (val). "
              "Train bpb uses the validation split's bytes per token. tokens/s is the median logged rate after "
              "the first interval. Validation curves: val_curves.png."]
    if icl:
        notes += ["", "Evaluation columns (TASK/Kshot_METRIC) are the runs' last in-training evaluation (eval.tasks)."]
    (root / "results.md").write_text("\n".join(lines + notes) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, rows in curves.items():
        evals = [r for r in rows if "val_loss" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"validation loss: {os.path.basename(str(root).rstrip('/'))}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    (root / "val_curves.png").write_bytes(png.getvalue())


def collect(workdir: str, entries: list[dict], outcomes: dict[str, dict]) -> list[dict]:
    results, curves = [], {}
    for overrides in entries:
        name = run_name(overrides)
        rows = read_metrics(str(_path(workdir) / name))
        outcome = outcomes.get(name, {})
        results.append(summarize(name, overrides, rows, outcome.get("status", ""), outcome.get("wall_seconds")))
        curves[name] = rows
    write_results(workdir, results, curves)
    return results


# --- launchers ----------------------------------------------------------------------------------------------------


def run_local(commands: dict[str, list[str]], workdir: str, parallel: int, dry_run: bool) -> dict[str, dict]:
    logs = os.path.join(workdir, "logs")

    def one(name: str) -> dict:
        os.makedirs(logs, exist_ok=True)
        t0 = time.time()
        with open(os.path.join(logs, f"{name}.log"), "w") as log:
            rc = subprocess.run(commands[name], stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.time() - t0
        print(f"sweep: {name}: {'done' if rc == 0 else f'failed (exit {rc})'} in {wall:.0f} s; "
              f"log {logs}/{name}.log", flush=True)
        return {"status": "done" if rc == 0 else f"failed (exit {rc})", "wall_seconds": wall}

    for name, cmd in commands.items():
        print(f"{shlex.join(cmd)} > {shlex.quote(os.path.join(logs, name + '.log'))} 2>&1", flush=True)
    if dry_run:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        return dict(zip(commands, pool.map(one, commands)))


def _seconds(elapsed: str) -> float | None:
    """SLURM's [D-]HH:MM:SS (or MM:SS) in seconds."""
    try:
        days, _, hms = elapsed.rpartition("-")
        parts = [int(p) for p in hms.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return (int(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]
    except ValueError:
        return None


def run_slurm(commands: dict[str, list[str]], workdir: str, args, dry_run: bool, runner=subprocess.run,
              poll_seconds: float = 30) -> dict[str, dict]:
    """One job per entry, submitted at once; waits until squeue lists none of them; states and times from sacct."""
    ids = {}
    for i, (name, cmd) in enumerate(commands.items()):
        job = slurm.job_from_flags(args, job_name=f"{args.job_name}-{i}", logs=args.logs or f"{workdir}/logs")
        ids[name], _ = slurm.submit(job, cmd, dry_run=dry_run, runner=runner)
    if dry_run:
        print(f"# then poll until none is queued or running: squeue -h -o %i -j <job ids> (every {poll_seconds:g} s)")
        print("# and read each job's state and time: sacct -n -P -X -j <job id> --format=State,Elapsed")
        return {}
    print(f"sweep: submitted jobs {', '.join(ids.values())}", flush=True)
    while True:
        listed = runner(["squeue", "-h", "-o", "%i", "-j", ",".join(ids.values())], text=True, capture_output=True)
        if not listed.stdout.split():
            break
        time.sleep(poll_seconds)
    outcomes = {}
    for name, job_id in ids.items():
        acct = runner(["sacct", "-n", "-P", "-X", "-j", job_id, "--format=State,Elapsed"], text=True,
                      capture_output=True).stdout.strip().split("|")
        state = acct[0] if acct and acct[0] else "UNKNOWN"
        outcomes[name] = {"status": "done" if state == "COMPLETED" else state.lower(),
                          "wall_seconds": _seconds(acct[1]) if len(acct) > 1 else None}
    return outcomes


def run_tpu(commands: dict[str, list[str]], workdir: str, args, dry_run: bool, runner=subprocess.run,
            poll_seconds: float = 30) -> dict[str, dict]:
    """One slice per entry (<tpu>-<i>), all launched at once, each created, set up, run, logged and deleted."""
    if not args.tpu:
        raise SweepError("--tpu: give a name prefix for the entries' TPU slices")
    pods = {name: tpu_pod.pod_from_flags(args, f"{args.tpu}-{i}", logs=args.logs or "logs")
            for i, name in enumerate(commands)}

    def one(name: str) -> dict:
        lines, timings = [], {}
        out = print if dry_run else lines.append
        rc = tpu_pod.launch(pods[name], commands[name], dry_run=dry_run, keep=args.keep, poll_seconds=poll_seconds,
                            out=out, runner=runner, timings=timings)
        if not dry_run:
            print(f"sweep: {name} on {pods[name].tpu}: {'done' if rc == 0 else f'failed (exit {rc})'}", flush=True)
        return {"status": "done" if rc == 0 else f"failed (exit {rc})", "wall_seconds": timings.get("run_seconds")}

    if dry_run:  # printed one slice after another, so each slice's commands stay together
        for name in commands:
            one(name)
        return {}
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return dict(zip(commands, pool.map(one, commands)))


def run_xpk(commands: dict[str, list[str]], args, dry_run: bool, runner=subprocess.run) -> dict[str, dict]:
    """One xpk workload per entry (<workload>-<i>) on the cluster, submitted at once and waited for together."""
    if not args.workload:
        raise SweepError("--workload: give a name prefix for the entries' xpk workloads")
    loads = {name: xpk.workload_from_flags(args, f"{args.workload}-{i}") for i, name in enumerate(commands)}
    for name in commands:  # submitted one after another: the cluster's queue runs them as capacity allows
        rc = xpk.launch(loads[name], commands[name], dry_run=dry_run, runner=runner)
        if rc:
            raise SweepError(f"xpk workload {loads[name].workload} was not created (exit {rc})")
    if dry_run:
        return {}

    def wait(name: str) -> dict:
        rc = runner(loads[name].wait(), check=False, text=True).returncode
        print(f"sweep: {name} on {loads[name].workload}: {'done' if rc == 0 else f'failed (exit {rc})'}", flush=True)
        return {"status": "done" if rc == 0 else f"failed (exit {rc})", "wall_seconds": None}

    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        return dict(zip(commands, pool.map(wait, commands)))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = tpu_pod.split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment file defining get_config and get_sweep")
    parser.add_argument("--workdir", required=True, help="the sweep's folder: one run per entry, and the results")
    parser.add_argument("--launcher", default="local", choices=LAUNCHERS)
    parser.add_argument("--parallel", type=int, default=1, help="local: runs at a time")
    parser.add_argument("--dry_run", action="store_true", help="print every command, run none")
    parser.add_argument("--collect_only", action="store_true", help="only (re)write the results from the workdirs")
    parser.add_argument("--poll_seconds", type=float, default=30, help="slurm/tpu: how often to check on the runs")
    parser.add_argument("--logs", default="", help="slurm/tpu: folder for the runs' logs ('': WORKDIR/logs for "
                        "slurm, ./logs for tpu, whose workdir is a bucket)")
    tpu = parser.add_argument_group("tpu launcher (see launch/tpu_pod.py)")
    tpu.add_argument("--tpu", default="", help="name prefix of the slices: <tpu>-<entry index>")
    tpu_pod.add_flags(tpu)
    gke = parser.add_argument_group("xpk launcher (see launch/xpk.py; --zone and --project as for tpu)")
    gke.add_argument("--workload", default="", help="name prefix of the workloads: <workload>-<entry index>")
    xpk.add_flags(gke, location=False)
    job = parser.add_argument_group("slurm launcher (see launch/slurm.py)")
    job.add_argument("--job_name", default="gptjax", help="name prefix of the jobs: <job_name>-<entry index>")
    slurm.add_flags(job)
    args = parser.parse_args(ours)
    try:
        entries = load_sweep(args.config)
        if smoke.enabled() and len(entries) > SMOKE_ENTRIES:  # each run is shrunk too (gptjax inherits the variable)
            entries = entries[:SMOKE_ENTRIES]
            smoke.announce(f"the first {SMOKE_ENTRIES} entries of the sweep")
        if args.launcher in ("tpu", "xpk") and not args.workdir.startswith("gs://") and not args.dry_run:
            raise SweepError(f"--workdir: the {args.launcher} launcher needs a gs:// workdir that the slices write to")
        root = args.workdir.rstrip("/")
        if files.is_local(root) and not args.dry_run:  # a file in the way, read-only: one line before any run
            files.writable_dir(root, "the sweep's runs and results")
        commands = {run_name(e): train_command(args.config, f"{root}/{run_name(e)}", e, extra) for e in entries}
        outcomes = {}
        if not args.collect_only:
            if args.launcher == "local":
                outcomes = run_local(commands, args.workdir, args.parallel, args.dry_run)
            elif args.launcher == "slurm":
                outcomes = run_slurm(commands, args.workdir, args, args.dry_run, poll_seconds=args.poll_seconds)
            elif args.launcher == "xpk":
                outcomes = run_xpk(commands, args, args.dry_run)
            else:
                outcomes = run_tpu(commands, args.workdir, args, args.dry_run, poll_seconds=args.poll_seconds)
        if args.dry_run:
            print(f"# then write {args.workdir}/results.md, results.csv and val_curves.png")
            return 0
        results = collect(args.workdir, entries, outcomes)
    except (SweepError, slurm.LaunchError, tpu_pod.LaunchError, xpk.LaunchError, files.WriteError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    print(_path(args.workdir).joinpath("results.md").read_text(), end="")
    return 0 if all(r["status"] == "done" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
