#!/usr/bin/env python
"""Runs every entry of an experiment's get_sweep(), each in WORKDIR/<name>, then writes the results.

  python launch/sweep.py --config=experiments/sweeps/gpt1_vs_gpt2_ablation.py --workdir=runs/ablation
  python launch/sweep.py --config=FILE --workdir=/shared/sweep --launcher=slurm --nodes=1 --partition=gpu
  python launch/sweep.py --config=FILE --workdir=gs://BUCKET/sweep --launcher=tpu --tpu=abl --zone=us-west4-a \\
      --accelerator=v5e-16 --spot --queued --repo=https://github.com/YOU/gptjax.git

Each entry of get_sweep() is a dict of config overrides (an arm; the first is the base arm); its run is `gptjax
train --config=FILE --workdir=WORKDIR/<name> --config.KEY=VALUE ...`, plus any flags after `--` (given to every run).
A sweep file may also define get_seeds() (a list of ints, each run as --config.seed=S) and get_grid() (a dict of
config keys to lists of values, tuned per arm): then every arm runs at every grid point with every seed, in
WORKDIR/<arm>/<point>/seed=<S> (`lr=0.001,warmup_steps=30` names a point), seed by seed (all arms and points of the
first seed before the second's), and the results choose each arm's grid point on validation loss (mean over seeds)
and compare each arm with the base arm (gptjax/sweep_stats.py). Launchers:
  local  runs the entries on this machine, --parallel at a time (default 1: one run already uses every core);
  slurm  submits one job per entry, all at once (launch/slurm.py), and waits until none is queued or running;
  tpu    runs one TPU slice per entry, all at once, named <--tpu>-<i> (launch/tpu_pod.py: create, set up, run,
         fetch logs, delete).
  xpk    submits one workload per entry to a GKE cluster, named <--workload>-<i> (launch/xpk.py), and waits for
         them all: `--launcher=xpk --cluster=C --workload=abl --tpu_type=v5e-16 --zone=Z`.
--dry_run prints every command and runs none. When the runs have finished, WORKDIR gets results.md and
results.csv (each run's overrides, final train and validation loss and bits per byte, tokens/s, wall time, read
from its metrics.jsonl) and val_curves.png (validation loss against step for all runs; with seeds, each arm's
chosen point as the mean over seeds with a min-max band). Rerunning an interrupted sweep finishes it: a run whose
workdir holds its evaluation and checkpoint at its configured last step is not started again, and the others
resume where they stopped; `--collect_only` just rewrites the results.
"""

import argparse
import concurrent.futures
import csv
import dataclasses
import importlib.util
import itertools
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

from gptjax import files, sweep_stats  # noqa: E402
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


def _module(config: str):
    """The sweep file of --config=FILE[:ARG], executed."""
    path = config.split(":")[0]
    if not os.path.isfile(path):
        raise SweepError(f"--config: no such file: {path}")
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arms(module, path: str) -> list[dict]:
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"--config: {path} defines no get_sweep()")
    entries = list(module.get_sweep())
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise SweepError(f"--config: {path}: get_sweep() must return a non-empty list of dicts of overrides")
    names = [run_name(e) for e in entries]
    if len(set(names)) != len(names):
        raise SweepError(f"--config: {path}: get_sweep() repeats an entry")
    return entries


def load_sweep(config: str) -> list[dict]:
    """The arms of the sweep file (its get_sweep()), one per entry: what tests/test_experiments.py runs once each."""
    return _arms(_module(config), config.split(":")[0])


@dataclasses.dataclass(frozen=True)
class Spec:
    """A sweep file: its arms (get_sweep(); the first is the base), seeds (get_seeds(); () for none: each run keeps
    the config's seed) and grid (get_grid(); {} for none: a dict of config keys to the values tuned per arm)."""
    arms: list
    seeds: tuple = ()
    grid: dict = dataclasses.field(default_factory=dict)
    scaling: dict | None = None  # get_scaling(): {"hold_out": ARM or None}; the results then fit L(N) (gptjax/scaling.py)

    @property
    def plain(self) -> bool:
        """One run per arm, named by the arm alone: the results are one table of runs, as before seeds and grids
        (a sweep that asks for a scaling fit gets the arms' table and the fit even without them)."""
        return not self.seeds and not self.grid and self.scaling is None


def load_spec(config: str) -> Spec:
    """The arms, seeds and grid of --config=FILE[:ARG], checked before any run: a list of ints for the seeds, a dict
    of config keys to non-empty lists for the grid, every grid key a key of the file's config that takes each of its
    values, and no grid key (nor the seed, when seeds are given) also set by an arm."""
    path = config.split(":")[0]
    module = _module(config)
    arms = _arms(module, path)
    seeds = _seeds(module, path) if hasattr(module, "get_seeds") else ()
    grid = _grid(module, config) if hasattr(module, "get_grid") else {}
    scaling = _scaling(module, path, arms) if hasattr(module, "get_scaling") else None
    for key in list(grid) + (["seed"] if seeds else []):
        for arm in arms:
            if key in arm:
                by = "get_grid() tunes" if key in grid else "get_seeds() sets"
                raise SweepError(f"--config: {path}: {by} {key}, which the entry `{run_name(arm)}` of get_sweep() "
                                 f"sets too: give it in one place")
    return Spec(arms, seeds, grid, scaling)


def _scaling(module, path: str, arms: list[dict]) -> dict:
    scaling = module.get_scaling()
    if not isinstance(scaling, dict) or set(scaling) - {"hold_out"}:
        raise SweepError(f"--config: {path}: get_scaling() must return a dict with at most the key hold_out, got "
                         f"{scaling!r}")
    hold_out = scaling.get("hold_out")
    names = [run_name(a) for a in arms]
    if hold_out is not None and hold_out not in names:
        raise SweepError(f"--config: {path}: get_scaling() holds out {hold_out!r}, which is not an entry of "
                         f"get_sweep(): {', '.join(names)}")
    return {"hold_out": hold_out}


def _seeds(module, path: str) -> tuple:
    seeds = module.get_seeds()
    if not isinstance(seeds, (list, tuple)) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"--config: {path}: get_seeds() must return a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--config: {path}: get_seeds() repeats a seed: {list(seeds)}")
    return tuple(seeds)


def _grid(module, config: str) -> dict:
    path = config.split(":")[0]
    grid = module.get_grid()
    if not isinstance(grid, dict) or not grid or not all(
            isinstance(k, str) and isinstance(v, (list, tuple)) and v for k, v in grid.items()):
        raise SweepError(f"--config: {path}: get_grid() must return a dict of config keys to non-empty lists of "
                         f"values, got {grid!r}")
    if "seed" in grid:
        raise SweepError(f"--config: {path}: get_grid() tunes seed: give the seeds with get_seeds()")
    for key, values in grid.items():
        if len({repr(v) for v in values}) != len(values):
            raise SweepError(f"--config: {path}: get_grid(): {key} repeats a value: {list(values)}")
    base = _base_config(module, config)
    for key, values in grid.items():
        _check_key(base, key, values, f"--config: {path}: get_grid()")
    return {k: list(v) for k, v in grid.items()}


def _base_config(module, config: str):
    """The file's get_config(ARG), whose keys and types a grid is checked against."""
    from gptjax.errors import GptjaxError

    path, _, arg = config.partition(":")
    if not hasattr(module, "get_config"):
        raise SweepError(f"--config: {path} defines no get_config()")
    try:
        return module.get_config(arg) if arg else module.get_config()
    except GptjaxError as e:
        raise SweepError(f"--config: {config}: {e}") from None


def _check_key(config, key: str, values, where: str) -> None:
    """`key` names a field of `config` that takes every one of `values` (ml_collections' type check)."""
    import difflib

    import ml_collections

    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = _keys(config)
        hint = difflib.get_close_matches(key, known, n=1)
        raise SweepError(f"{where}: {key} is not a key of the config" + (f" (did you mean {hint[0]}?)" if hint else ""))
    for value in values:
        try:
            with node.unlocked():
                node[leaf] = value
        except (TypeError, ValueError) as e:
            raise SweepError(f"{where}: {key}={value!r}: {str(e).splitlines()[0]}") from None


def _keys(config, prefix: str = "") -> list[str]:
    import ml_collections

    out = []
    for k, v in config.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [f"{prefix}{k}"]
    return out


def run_name(overrides: dict) -> str:
    """`norm=post,final_norm=False`: the last part of each key, in the entry's order ('base' for no overrides); a
    path value by its last part (`init_from=runs/lm` names `init_from=lm`), since the name is a directory."""
    def short(v):
        return v.rstrip("/").rsplit("/", 1)[-1] if isinstance(v, str) and "/" in v else v

    return ",".join(f"{k.split('.')[-1]}={short(v)}" for k, v in overrides.items()) or "base"


def train_command(config: str, workdir: str, overrides: dict, extra: list[str]) -> list[str]:
    return ["gptjax", "train", f"--config={config}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: `name` is its workdir under the sweep's (`arm` alone for a plain sweep, else
    `arm/point/seed=S`, without the parts the sweep does not have); `point` is '' without a grid and `seed` None
    without seeds; `overrides` are the arm's, the point's and the seed's, in that order."""
    name: str
    arm: str
    point: str
    seed: int | None
    overrides: dict


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest ([{}] for no grid)."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def expand(spec: Spec) -> list[Run]:
    """arm x grid point x seed, in that order (the order of the results table)."""
    runs = []
    for arm in spec.arms:
        for point in grid_points(spec.grid):
            for seed in spec.seeds or (None,):
                parts = [run_name(arm)] + ([run_name(point)] if spec.grid else []) + \
                        ([f"seed={seed}"] if seed is not None else [])
                overrides = {**arm, **point, **({"seed": seed} if seed is not None else {})}
                runs.append(Run("/".join(parts), run_name(arm), run_name(point) if spec.grid else "", seed, overrides))
    return runs


def launch_order(runs: list[Run], spec: Spec) -> list[Run]:
    """Seed by seed: every arm and point of the first seed runs before any of the second's, so a sweep stopped
    halfway has compared all arms on the first seeds rather than a few arms on all of them."""
    return sorted(runs, key=lambda r: spec.seeds.index(r.seed) if r.seed is not None else 0)


def smoke_spec(spec: Spec) -> tuple[Spec, str]:
    """Under GPTJAX_SMOKE=1: the first SMOKE_ENTRIES arms and two runs of each: its first two seeds at the grid's
    first point (so that a smoke sweep still compares seeds, paired), or, without seeds, two grid points (the first
    key's first two values, every other key at its first: it still chooses a point). Four runs at most, which is
    what the docs tier can afford for each documented sweep. Returns the shrunk spec and what was kept, for the
    announcement."""
    arms = spec.arms[:SMOKE_ENTRIES]
    seeds = spec.seeds[:2]
    grid, shrunk = {}, bool(seeds)
    for key, values in spec.grid.items():
        keep = 2 if not shrunk and len(values) > 1 else 1
        shrunk = shrunk or keep == 2
        grid[key] = values[:keep]
    kept = [f"the first {len(arms)} entries of the sweep"]
    points = len(grid_points(grid))
    kept += [f"{len(seeds)} of its seeds"] * bool(seeds) + [f"{points} grid point" + "s" * (points > 1)] * bool(grid)
    return Spec(arms, seeds, grid, spec.scaling), ", ".join(kept[:-1]) + " and " * (len(kept) > 1) + kept[-1]


# --- resuming -----------------------------------------------------------------------------------------------------


def configured_steps(config: str, overrides: dict, extra: list[str]) -> int | None:
    """The step the run `gptjax train --config=CONFIG --config.KEY=VALUE ...` trains to: the file's train.steps
    after the overrides (the run's and the `--config.*` flags after `--`), shrunk under GPTJAX_SMOKE=1 as the run
    shrinks it. None when the config cannot be read here: the run is then started and says why itself."""
    from absl import flags
    from ml_collections import config_flags

    from gptjax.errors import GptjaxError

    given = [a for a in extra if a.startswith("--config.") and "=" in a]
    argv = ["sweep", f"--config={config}", *(f"--config.{k}={v}" for k, v in overrides.items()), *given]
    fv = flags.FlagValues()
    try:
        config_flags.DEFINE_config_file("config", None, "the run's config", flag_values=fv, sys_argv=argv)
        fv(argv)
        c = fv.config
        if smoke.enabled():
            smoke.shrink(c)
        return int(c.train.steps)
    except (GptjaxError, flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError):
        return None


def finished(run_dir: str, steps: int | None) -> bool:
    """Whether the run in `run_dir` has finished the `steps` its command asks for: its config.json says it trains
    to `steps`, its metrics.jsonl holds a validation loss at that step, and its checkpoint of that step exists (a run
    saves it after its last evaluations, held-out tasks included). Such a run is not started again; a run stopped
    anywhere before resumes from its own checkpoint."""
    if steps is None:
        return False
    root = _path(run_dir)
    try:
        saved = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return False
    train = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train, dict) or train.get("steps") != steps:
        return False
    if not (root / "checkpoints" / str(steps)).is_dir():
        return False
    return any(r["step"] == steps and "val_loss" in r for r in read_metrics(run_dir))


def _not_finished(runs: list[Run], root: str, config: str, extra: list[str]) -> list[Run]:
    """The runs still to start; says in one line how many finished before (rerunning a sweep resumes it)."""

    def done(run: Run) -> bool:
        where = f"{root}/{run.name}"
        if not (_path(where) / "config.json").exists():  # never started: no need to read the sweep's config
            return False
        return finished(where, configured_steps(config, run.overrides, extra))

    todo = [r for r in runs if not done(r)]
    if len(todo) < len(runs):
        print(f"sweep: {len(runs) - len(todo)} of {len(runs)} runs finished before (their evaluation and checkpoint "
              f"at the last step are in their workdirs): not started again", flush=True)
    return todo


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
    if evals:  # a run that is not a language model's (fine-tuning, a reward model) logs no bits per byte
        out["val_loss"], out["val_bpb"] = evals[-1]["val_loss"], evals[-1].get("val_bpb")
    if train and "train_bpb" in train[-1]:
        out["train_bpb"] = train[-1]["train_bpb"]
    elif train and evals and (evals[-1].get("val_bpb") or 0) > 0:
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


def write_results(workdir: str, results: list[dict], curves: dict[str, list[dict]], spec: Spec | None = None) -> None:
    """results.csv (full precision), results.md (tables) and val_curves.png under the sweep's workdir: one table of
    runs for a plain sweep; with seeds or a grid, the arms' chosen points and differences first (`arm_results`)."""
    root = _path(workdir)
    with files.writing(root, "the sweep's results"):
        root.mkdir(parents=True, exist_ok=True)
        if spec is None or spec.plain:
            _write_results(root, results, curves)
        else:
            _write_arm_results(root, results, curves, spec)


def _icl_keys(results: list[dict]) -> list[str]:
    return sorted({k for r in results for k in r if k.startswith("icl/")})  # evaluation columns, where runs had any


def _write_csv(root, results: list[dict], columns: tuple) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    (root / "results.csv").write_text(buf.getvalue())


def _runs_table(results: list[dict], icl: list[str]) -> list[str]:
    heads = ("run", "status", "steps", "train loss", "train bpb", "val loss", "val bpb", "tokens/s", "wall s",
             *(k[4:] for k in icl))
    keys = ("run", "status", "steps", "train_loss", "train_bpb", "val_loss", "val_bpb", "tokens_per_sec",
            "wall_seconds", *icl)
    lines = ["| " + " | ".join(heads) + " |", "|---|---|" + "---:|" * (len(heads) - 2)]
    return lines + ["| " + " | ".join(_fmt(k, r.get(k)) for k in keys) + " |" for r in results]


_RUN_NOTES = ("Losses are nats per token, at the last logged step (train) and the last evaluation (val). Train bpb "
              "uses the validation split's bytes per token. tokens/s is the median logged rate after the first "
              "interval.")


def _write_results(root, results: list[dict], curves: dict[str, list[dict]]) -> None:
    icl = _icl_keys(results)
    _write_csv(root, results, COLUMNS + tuple(icl))
    lines = _runs_table(results, icl)
    notes = ["", "Overrides of each run:", ""] + [f"- `{r['run']}`: `{r['overrides'] or '(none)'}`" for r in results]
    notes += ["", _RUN_NOTES + " Validation curves: val_curves.png."]
    if icl:
        notes += ["", "Evaluation columns (TASK/Kshot_METRIC) are the runs' last in-training evaluation (eval.tasks)."]
    (root / "results.md").write_text("\n".join(lines + notes) + "\n")

    fig, ax = _figure()
    for name, rows in curves.items():
        evals = [r for r in rows if "val_loss" in r]
        if evals:
            ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], marker="o", markersize=3, label=name)
    _save_figure(root, fig, ax, f"validation loss: {os.path.basename(str(root).rstrip('/'))}")


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 5))


def _save_figure(root, fig, ax, title: str) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    (root / "val_curves.png").write_bytes(png.getvalue())


# --- seeds and grids: each arm's chosen point, its spread over seeds, its difference from the base ---------------


def _ok(row: dict, key: str = "val_loss") -> bool:
    """A finished run's value: status done and a finite number (a run that failed or diverged counts as missing)."""
    v = row.get(key)
    return row.get("status") == "done" and isinstance(v, (int, float)) and math.isfinite(v)


def arm_results(results: list[dict], spec: Spec) -> list[dict]:
    """Per arm, in the sweep's order: `arm`, `choice` (sweep_stats.Choice on validation loss over the seeds that
    finished), `rows` (the chosen point's finished runs), `loss`, `bpb` (sweep_stats.Summary or None), `icl` (metric
    -> Summary at the chosen point) and `diff` (sweep_stats.Difference from the base arm; None for the base and for
    an arm or base without a finished run)."""
    by_run = {(r["arm"], r["point"], r["seed"]): r for r in results}
    points = [run_name(p) for p in grid_points(spec.grid)] if spec.grid else [""]
    seeds = list(spec.seeds) or [None]
    out = []
    for arm in (run_name(a) for a in spec.arms):
        runs = {p: {s: by_run[(arm, p, s)] for s in seeds if (arm, p, s) in by_run} for p in points}
        choice = sweep_stats.choose_point({p: {s: r["val_loss"] for s, r in rs.items() if _ok(r)}
                                           for p, rs in runs.items()}, seeds)
        rows = [runs[choice.point][s] for s in choice.values] if choice.point is not None else []
        summary = {key: sweep_stats.summarize([r[key] for r in rows if _ok(r, key)])
                   for key in ("val_loss", "val_bpb", *_icl_keys(rows)) if any(_ok(r, key) for r in rows)}
        out.append({"arm": arm, "choice": choice, "rows": rows, "loss": summary.pop("val_loss", None),
                    "bpb": summary.pop("val_bpb", None), "icl": summary, "diff": None})
    base = out[0]
    for a in out[1:]:
        if a["choice"].values and base["choice"].values:
            a["diff"] = sweep_stats.compare(a["choice"].values, base["choice"].values)
    return out


def _pm(s) -> str:
    """mean +- sd (sd left out for one value)."""
    if s is None:
        return "-"
    spec = ".3f" if abs(s.mean) <= 1 else ".4f" if abs(s.mean) < 1e4 else ".3g"  # accuracies, losses, perplexities
    return f"{s.mean:{spec}}" + (f" ± {s.sd:{spec}}" if s.sd is not None else "")


def _diff(d) -> str:
    if d is None:
        return "-"
    if d.low is None:
        return f"{d.mean:+.4f} (no interval: n=1)"
    return f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def _compared(d) -> str:
    if d is None:
        return "-"
    if d.method == "paired":
        return f"paired, {d.n} seed" + "s" * (d.n != 1)
    return f"Welch, {d.n} vs {d.n_base} seeds"


def _arms_table(arms: list[dict], spec: Spec, icl: list[str]) -> list[str]:
    want = len(spec.seeds) or 1
    heads = ["arm", *(["chosen point"] if spec.grid else []), "seeds", "val loss", "val bpb",
             "Δ val loss vs base [95% CI]", "compared", *(k[4:] for k in icl)]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---|" * bool(spec.grid) + "---:|" * 4 + "---|" +
             "---:|" * len(icl)]
    for i, a in enumerate(arms):
        c = a["choice"]
        cells = [a["arm"], *([c.point if c.point is not None else "-"] if spec.grid else []),
                 f"{len(c.values)}/{want}", _pm(a["loss"]), _pm(a["bpb"]),
                 "(base)" if i == 0 else _diff(a["diff"]), "" if i == 0 else _compared(a["diff"]),
                 *(_pm(a["icl"].get(k)) for k in icl)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _grid_table(arms: list[dict], results: list[dict], spec: Spec) -> list[str]:
    """Mean validation loss over finished seeds at every point of every arm, the chosen one in bold."""
    points = [run_name(p) for p in grid_points(spec.grid)]
    want = len(spec.seeds) or 1
    lines = ["| arm | " + " | ".join(points) + " |", "|---|" + "---:|" * len(points)]
    for a in arms:
        cells = []
        for p in points:
            vals = [r["val_loss"] for r in results if r["arm"] == a["arm"] and r["point"] == p and _ok(r)]
            if not vals:
                cells.append("-")
                continue
            n = f"n={len(vals)}" + (f" of {want}" if len(vals) < want else "")
            cell = f"{sweep_stats.summarize(vals).mean:.4f} ({n})"
            cells.append(f"**{cell}**" if p == a["choice"].point else cell)
        lines.append(f"| {a['arm']} | " + " | ".join(cells) + " |")
    return lines


def _arm_notes(arms: list[dict], results: list[dict], spec: Spec) -> list[str]:
    notes = []
    if spec.grid:
        notes += ["", "Each arm's grid point is the one with the lowest mean validation loss over seeds (the first in "
                  "the grid's order on a tie), among the points where every seed finished; the held-out columns "
                  "(TASK/Kshot_METRIC, eval.tasks) are read at that point and play no part in the choice."]
    notes += ["", f"± is one standard deviation over seeds (n - 1 in the denominator). Δ is an arm's mean validation "
              f"loss minus the base arm's (the first), each at its own point, with a {sweep_stats.LEVEL:.0%} t "
              "interval: paired by seed where both arms finished the same seeds (a seed fixes the data order), else "
              "Welch's. val_curves.png draws each arm's point: the mean over seeds, with a band from the lowest to "
              "the highest seed."]
    failed = [r for r in results if not _ok(r)]
    if failed:
        notes += ["", "Runs that did not finish, left out of every statistic: " +
                  ", ".join(f"`{r['run']}` ({r['status']})" for r in failed) + "."]
    for a in arms:
        if a["choice"].point is None:
            notes += ["", f"`{a['arm']}`: no run finished, so no point is chosen and no difference computed."]
        elif a["choice"].incomplete and spec.grid:
            notes += ["", f"`{a['arm']}`: points left out of the choice (a seed did not finish there): " +
                      ", ".join(f"`{p}`" for p in a["choice"].incomplete) + "."]
    notes += ["", "Arms (each run adds its grid point and `seed=S` to these overrides):", ""]
    notes += [f"- `{run_name(o)}`: `{' '.join(f'{k}={v}' for k, v in o.items()) or '(none)'}`" for o in spec.arms]
    if spec.grid:
        notes += ["", "Grid: " + ", ".join(f"`{k}` in {list(v)}" for k, v in spec.grid.items()) + "."]
    if spec.seeds:
        notes += ["", f"Seeds (`seed`): {list(spec.seeds)}."]
    return notes


def _write_arm_results(root, results: list[dict], curves: dict[str, list[dict]], spec: Spec) -> None:
    icl = _icl_keys(results)
    _write_csv(root, results, COLUMNS[:1] + ("arm", "point", "seed") + COLUMNS[1:] + tuple(icl))
    arms = arm_results(results, spec)
    lines = ["Arms, each at its chosen grid point" * bool(spec.grid) or "Arms", "", *_arms_table(arms, spec, icl)]
    if spec.grid:
        lines += ["", "Mean validation loss at each grid point (finished seeds; the chosen point in bold):", "",
                  *_grid_table(arms, results, spec)]
    if spec.scaling is not None:
        lines += _scaling_section(root, arms, spec.scaling["hold_out"])
    lines += ["", "Every run:", "", *_runs_table(results, icl), "", _RUN_NOTES]
    (root / "results.md").write_text("\n".join(lines + _arm_notes(arms, results, spec)) + "\n")

    fig, ax = _figure()
    for a in arms:
        b = sweep_stats.band([{r["step"]: r["val_loss"] for r in curves.get(row["run"], []) if "val_loss" in r}
                              for row in a["rows"]])
        if len(b.steps):
            point = f", {a['choice'].point}" if spec.grid else ""
            line, = ax.plot(b.steps, b.mean, marker="o", markersize=3,
                            label=f"{a['arm']}{point} (n={len(a['rows'])})")
            ax.fill_between(b.steps, b.low, b.high, color=line.get_color(), alpha=0.2)
    _save_figure(root, fig, ax, f"validation loss: {os.path.basename(str(root).rstrip('/'))} (mean over seeds; "
                                "band: lowest to highest seed)")


def _scaling_section(root, arms: list[dict], hold_out: str | None) -> list[str]:
    """The scaling-law lines of results.md, and scaling.png: each arm a model size, N from its run's config.json."""
    from gptjax import scaling  # jax, only for a sweep that asks for the fit

    points = [scaling.Point(a["arm"], scaling.model_size(str(root / a["rows"][0]["run"])),
                            tuple(r["val_loss"] for r in a["rows"])) for a in arms if a["rows"]]
    lines, fit, held = scaling.section(points, hold_out)
    if points:
        (root / "scaling.png").write_bytes(scaling.plot(points, fit, held))
        lines += ["", "Plot: scaling.png (log-log)."]
    return lines


def _previous_wall_seconds(workdir: str) -> dict[str, float]:
    """Each run's wall time as the last collection wrote it in results.csv: a run finished before this launch (or
    `--collect_only`) keeps the time its launcher measured."""
    path = _path(workdir) / "results.csv"
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    out = {}
    for r in rows:
        try:
            out[r["run"]] = float(r["wall_seconds"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def collect(workdir: str, sweep: "list[dict] | Spec", outcomes: dict[str, dict]) -> list[dict]:
    """Reads every run's metrics.jsonl and writes the results; `sweep` is the arms of a plain sweep or a Spec.
    `outcomes`: what the launcher saw of each run, by run name (status, wall_seconds); a run not launched this time
    (finished earlier) is read from its metrics alone."""
    spec = sweep if isinstance(sweep, Spec) else Spec(list(sweep))
    before = _previous_wall_seconds(workdir)
    results, curves = [], {}
    for run in expand(spec):
        rows = read_metrics(str(_path(workdir) / run.name))
        outcome = outcomes.get(run.name, {})
        row = summarize(run.name, run.overrides, rows, outcome.get("status", ""),
                        outcome.get("wall_seconds", before.get(run.name)))
        if not spec.plain:
            row.update(arm=run.arm, point=run.point, seed=run.seed)
        results.append(row)
        curves[run.name] = rows
    write_results(workdir, results, curves, spec)
    return results


# --- launchers ----------------------------------------------------------------------------------------------------


def run_local(commands: dict[str, list[str]], workdir: str, parallel: int, dry_run: bool) -> dict[str, dict]:
    logs = os.path.join(workdir, "logs")

    def one(name: str) -> dict:
        os.makedirs(os.path.dirname(os.path.join(logs, f"{name}.log")), exist_ok=True)  # arm/point/seed=S.log
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
        spec = load_spec(args.config)
        if smoke.enabled():  # each run is shrunk too (gptjax inherits the variable)
            small, what = smoke_spec(spec)
            if small != spec:
                spec = small
                smoke.announce(what)
        if args.launcher in ("tpu", "xpk") and not args.workdir.startswith("gs://") and not args.dry_run:
            raise SweepError(f"--workdir: the {args.launcher} launcher needs a gs:// workdir that the slices write to")
        root = args.workdir.rstrip("/")
        if files.is_local(root) and not args.dry_run:  # a file in the way, read-only: one line before any run
            files.writable_dir(root, "the sweep's runs and results")
        runs = launch_order(expand(spec), spec)
        if not args.collect_only and (files.is_local(root) or not args.dry_run):
            runs = _not_finished(runs, root, args.config, extra)
        commands = {r.name: train_command(args.config, f"{root}/{r.name}", r.overrides, extra) for r in runs}
        outcomes = {}
        if not args.collect_only and commands:
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
        results = collect(args.workdir, spec, outcomes)
    except (SweepError, slurm.LaunchError, tpu_pod.LaunchError, xpk.LaunchError, files.WriteError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    print(_path(args.workdir).joinpath("results.md").read_text(), end="")
    return 0 if all(r["status"] == "done" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
