"""launch/sweep.py with seeds and a grid (issue 22): arm x grid point x seed expanded into runs and their commands,
launched seed by seed; bad seeds or grids refused in one line before any run; an interrupted sweep resumed without
starting its finished runs again (against a stand-in `gptjax` that writes what a run leaves in its workdir); the
results table's chosen points, spreads and differences from metrics given here. sweep.main runs in this process.

Real runs: the docs tier (tests/test_docs.py) runs the README's ablation sweep under GPTJAX_SMOKE=1, two arms x two
seeds at one grid point of real `gptjax train` (about 50 s), and then the same command from docs/ablations.md and
docs/pods.md, which find every run finished and start none; a second real sweep here would repeat it."""

import csv
import json
import math
import os
import pathlib
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import sweep  # noqa: E402
from test_sweep import TINY_CONFIG  # noqa: E402  (the tiny config every test sweep trains)

T_975_DF1 = 12.706204736174707  # the t table's 0.975 quantile at 1 degree of freedom (two seeds)

CONFIG = TINY_CONFIG + '''

def get_sweep():
    return [{}, {"model.norm": "post"}]
'''
SEEDS_AND_GRID = CONFIG + '''

def get_seeds():
    return [0, 1]


def get_grid():
    return {"optim.lr": [0.001, 0.003]}
'''
NAMES = ["base/lr=0.001/seed=0", "base/lr=0.001/seed=1", "base/lr=0.003/seed=0", "base/lr=0.003/seed=1",
         "norm=post/lr=0.001/seed=0", "norm=post/lr=0.001/seed=1", "norm=post/lr=0.003/seed=0",
         "norm=post/lr=0.003/seed=1"]


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "grid.py"
    path.write_text(SEEDS_AND_GRID)
    return str(path)


@pytest.fixture
def run_sweep(capsys, monkeypatch):
    """`launch/sweep.py ARGS` in this process: returncode, stdout and stderr."""

    def run(*args, env=None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        status = sweep.main(list(args))
        out = capsys.readouterr()
        return types.SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)

    return run


def test_runs_are_arm_by_point_by_seed_launched_seed_by_seed(sweep_file):
    spec = sweep.load_spec(sweep_file)
    assert spec.seeds == (0, 1) and spec.grid == {"optim.lr": [0.001, 0.003]} and not spec.plain
    runs = sweep.expand(spec)
    assert [r.name for r in runs] == NAMES
    post = runs[-1]
    assert (post.arm, post.point, post.seed) == ("norm=post", "lr=0.003", 1)
    assert post.overrides == {"model.norm": "post", "optim.lr": 0.003, "seed": 1}  # arm, point, seed
    order = [r.name for r in sweep.launch_order(runs, spec)]
    assert order == [n for n in NAMES if n.endswith("seed=0")] + [n for n in NAMES if n.endswith("seed=1")]
    two_keys = sweep.grid_points({"optim.lr": [1, 2], "optim.warmup_steps": [10, 30]})
    assert two_keys == [{"optim.lr": 1, "optim.warmup_steps": 10}, {"optim.lr": 1, "optim.warmup_steps": 30},
                        {"optim.lr": 2, "optim.warmup_steps": 10}, {"optim.lr": 2, "optim.warmup_steps": 30}]


def test_only_seeds_or_only_a_grid_leave_out_the_missing_part_of_the_name():
    arms = [{}, {"model.norm": "post"}]
    assert [r.name for r in sweep.expand(sweep.Spec(arms, seeds=(3,)))] == ["base/seed=3", "norm=post/seed=3"]
    grid = [r.name for r in sweep.expand(sweep.Spec(arms, grid={"optim.lr": [0.1]}))]
    assert grid == ["base/lr=0.1", "norm=post/lr=0.1"]
    plain = sweep.expand(sweep.Spec(arms))  # as before seeds and grids: one run per arm, named by it
    assert [(r.name, r.overrides, r.seed) for r in plain] == [("base", {}, None), ("norm=post", arms[1], None)]


def test_dry_run_prints_each_run_with_its_point_and_seed(run_sweep, sweep_file, tmp_path):
    work = tmp_path / "sweep"
    out = run_sweep(f"--config={sweep_file}", f"--workdir={work}", "--dry_run").stdout
    lines = [line for line in out.splitlines() if not line.startswith("#")]
    assert len(lines) == 8
    assert lines[0] == (f"gptjax train --config={sweep_file} --workdir={work}/base/lr=0.001/seed=0 "
                        f"--config.optim.lr=0.001 --config.seed=0 > {work}/logs/base/lr=0.001/seed=0.log 2>&1")
    assert f"--workdir={work}/norm=post/lr=0.003/seed=1 --config.model.norm=post --config.optim.lr=0.003 " \
           "--config.seed=1 >" in lines[-1]
    assert not work.exists()


def test_smoke_sweep_keeps_two_arms_and_two_runs_of_each():
    grid = {"optim.lr": [1e-3, 3e-3, 1e-2], "optim.warmup_steps": [10, 30]}
    spec = sweep.Spec([{}, {"a.b": 1}, {"a.b": 2}], seeds=(0, 1, 2), grid=grid)
    small, what = sweep.smoke_spec(spec)  # with seeds: two seeds at the grid's first point (a paired comparison)
    assert small.arms == spec.arms[:2] and small.seeds == (0, 1)
    assert small.grid == {"optim.lr": [1e-3], "optim.warmup_steps": [10]}
    assert what == "the first 2 entries of the sweep, 2 of its seeds and 1 grid point"
    small, what = sweep.smoke_spec(sweep.Spec(spec.arms, grid=grid))  # without: two points (still a choice)
    assert small.grid == {"optim.lr": [1e-3, 3e-3], "optim.warmup_steps": [10]} and len(sweep.expand(small)) == 4
    assert what == "the first 2 entries of the sweep and 2 grid points"
    assert sweep.smoke_spec(sweep.Spec([{}, {"a.b": 1}]))[0] == sweep.Spec([{}, {"a.b": 1}])


BAD = {
    "seeds not a list": ("def get_seeds():\n    return 3\n", "get_seeds() must return a non-empty list of ints, got 3"),
    "seeds of bools": ("def get_seeds():\n    return [True, False]\n", "get_seeds() must return a non-empty list"),
    "a repeated seed": ("def get_seeds():\n    return [1, 2, 1]\n", "get_seeds() repeats a seed: [1, 2, 1]"),
    "grid a list": ("def get_grid():\n    return [{'optim.lr': 0.1}]\n",
                    "get_grid() must return a dict of config keys to non-empty lists of values, got"),
    "grid an empty list": ("def get_grid():\n    return {'optim.lr': []}\n", "get_grid() must return a dict"),
    "grid a bare value": ("def get_grid():\n    return {'optim.lr': 0.1}\n", "get_grid() must return a dict"),
    "unknown key": ("def get_grid():\n    return {'optim.lrr': [0.1, 0.2]}\n",
                    "get_grid(): optim.lrr is not a key of the config (did you mean optim.lr?)"),
    "unknown section": ("def get_grid():\n    return {'optimizer.lr': [0.1]}\n",
                        "get_grid(): optimizer.lr is not a key of the config"),
    "wrong type": ("def get_grid():\n    return {'optim.warmup_steps': [10, 'long']}\n",
                   "get_grid(): optim.warmup_steps='long': "),
    "the seed in the grid": ("def get_grid():\n    return {'seed': [0, 1]}\n",
                             "get_grid() tunes seed: give the seeds with get_seeds()"),
    "a grid key an arm sets": ("def get_grid():\n    return {'model.norm': ['pre']}\n",
                               "get_grid() tunes model.norm, which the entry `norm=post` of get_sweep() sets too"),
    "a seed an arm sets": ("def get_seeds():\n    return [0]\n\n\ndef get_sweep():\n    return [{}, {'seed': 4}]\n",
                           "get_seeds() sets seed, which the entry `seed=4` of get_sweep() sets too"),
    "scaling holds out no arm": ("def get_scaling():\n    return {'hold_out': 'norm=pre'}\n",
                                 "get_scaling() holds out 'norm=pre', which is not an entry of get_sweep(): base, "
                                 "norm=post"),
    "scaling with an unknown key": ("def get_scaling():\n    return {'x': 'N'}\n",
                                    "get_scaling() must return a dict with at most the key hold_out, got {'x': 'N'}"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_seeds_or_grid_are_one_line_before_any_run(name, run_sweep, tmp_path, monkeypatch):
    extra, message = BAD[name]
    path = tmp_path / "bad.py"
    path.write_text(CONFIG + "\n\n" + extra)
    monkeypatch.setattr(sweep, "run_local", lambda *a, **k: pytest.fail("a run started"))
    r = run_sweep(f"--config={path}", f"--workdir={tmp_path}/sweep")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"sweep: error: --config: {path}: {message}") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "sweep").exists()


FAKE_GPTJAX = '''#!{python}
"""A stand-in for `gptjax train` that leaves in --workdir what a finished run does (config.json, metrics.jsonl with
a validation loss at its last step, that step's checkpoint), or with FAKE_STOP=seed=S in the run's workdir name,
what a run killed halfway leaves (metrics to step 3, no final checkpoint). Logs its argv to FAKE_LOG."""
import json, os, pathlib, sys

args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
work = pathlib.Path(args["workdir"])
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
steps = int(args.get("config.train.steps", 6))
lr, seed = float(args.get("config.optim.lr", 0.001)), int(args.get("config.seed", 0))
loss = 3.0 + (0.3 if args.get("config.model.norm") == "post" else 0) + abs(lr - 0.003) * 100 + 0.05 * seed
stop = os.environ.get("FAKE_STOP") and os.environ["FAKE_STOP"] in str(work)
work.mkdir(parents=True, exist_ok=True)
(work / "config.json").write_text(json.dumps({{"train": {{"steps": steps}}}}))
rows = [{{"step": 3, "train_loss": loss + 1, "tokens_per_sec": 100.0}},
        {{"step": 3, "val_loss": loss + 1, "val_bpb": 2.0}}]
if not stop:
    rows += [{{"step": steps, "train_loss": loss, "tokens_per_sec": 100.0}},
             {{"step": steps, "val_loss": loss, "val_bpb": loss / 1.5}}, {{"step": steps, "icl/t/0shot_acc": 0.25}}]
    (work / "checkpoints" / str(steps)).mkdir(parents=True, exist_ok=True)
with open(work / "metrics.jsonl", "a") as f:
    f.writelines(json.dumps(r) + "\\n" for r in rows)
sys.exit(1 if stop else 0)
'''


@pytest.fixture
def fake_gptjax(tmp_path, monkeypatch):
    """PATH with the stand-in `gptjax`; returns a function giving the workdirs it was started in, in order."""
    bindir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bindir.mkdir()
    (bindir / "gptjax").write_text(FAKE_GPTJAX.format(python=sys.executable))
    (bindir / "gptjax").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))

    def started():
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return [next(a.split("/", 1)[1] for a in c if a.startswith("--workdir=")).split("/sweep/")[1] for c in calls]

    return started


def test_an_interrupted_sweep_resumes_without_rerunning_finished_runs(run_sweep, sweep_file, tmp_path, fake_gptjax):
    work = tmp_path / "sweep"
    first = run_sweep(f"--config={sweep_file}", f"--workdir={work}", env={"FAKE_STOP": "seed=1"})
    assert first.returncode == 1  # half the runs stopped
    assert fake_gptjax() == [n for n in NAMES if n.endswith("seed=0")] + [n for n in NAMES if n.endswith("seed=1")]
    table = {t["run"]: t for t in csv.DictReader(open(work / "results.csv"))}
    assert [table[n]["status"] for n in NAMES] == ["done", "failed (exit 1)"] * 4

    again = run_sweep(f"--config={sweep_file}", f"--workdir={work}", env={"FAKE_STOP": ""})
    assert again.returncode == 0
    assert sorted(fake_gptjax()) == [n for n in NAMES if n.endswith("seed=1")]  # the stopped half only
    assert "sweep: 4 of 8 runs finished before (their evaluation and checkpoint at the last step are in their " \
           "workdirs): not started again" in again.stdout
    table = {t["run"]: t for t in csv.DictReader(open(work / "results.csv"))}
    assert all(t["status"] == "done" and t["val_loss"] for t in table.values()) and len(table) == 8

    assert run_sweep(f"--config={sweep_file}", f"--workdir={work}").returncode == 0
    assert fake_gptjax() == []  # all finished: nothing starts
    table = list(csv.DictReader(open(work / "results.csv")))
    assert all(float(t["wall_seconds"]) > 0 for t in table)  # as the launches before measured them
    longer = run_sweep(f"--config={sweep_file}", f"--workdir={work}", "--", "--config.train.steps=8")
    assert longer.returncode == 0 and len(fake_gptjax()) == 8  # a longer run than each finished one: all go on


def test_a_run_is_finished_only_with_its_last_evaluation_and_checkpoint(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints" / "6").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"steps": 6}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 6, "train_loss": 2.0}) + "\n")
    assert not sweep.finished(str(run), 6)  # trained to 6, never evaluated there
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "val_loss": 2.1, "val_bpb": 1.0}) + "\n")
    assert sweep.finished(str(run), 6)
    assert not sweep.finished(str(run), 8) and not sweep.finished(str(run), None)
    (run / "checkpoints" / "6").rmdir()
    assert not sweep.finished(str(run), 6)  # killed before its last checkpoint


def write_run(root, name, val_loss, icl=0.25, steps=6):
    run = root / name
    run.mkdir(parents=True)
    rows = [{"step": 3, "val_loss": val_loss + 0.5, "val_bpb": 2.0},
            {"step": steps, "train_loss": val_loss, "tokens_per_sec": 100.0},
            {"step": steps, "val_loss": val_loss, "val_bpb": val_loss / 2}, {"step": steps, "icl/t/0shot_acc": icl}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_results_choose_each_arms_point_and_compare_it_with_the_base(sweep_file, tmp_path):
    spec = sweep.load_spec(sweep_file)
    losses = {"base/lr=0.001": (3.00, 3.20), "base/lr=0.003": (2.90, 3.00),  # base: 0.003 (mean 2.95)
              "norm=post/lr=0.001": (3.50, 3.80), "norm=post/lr=0.003": (3.10, 3.10)}  # post: 0.003 (mean 3.10)
    for point, values in losses.items():
        for seed, v in enumerate(values):
            write_run(tmp_path, f"{point}/seed={seed}", v, icl=0.6 if point.endswith("0.001") else 0.2 + 0.1 * seed)
    sweep.collect(str(tmp_path), spec, {})
    md = (tmp_path / "results.md").read_text()
    lines = md.splitlines()
    assert lines[2] == ("| arm | chosen point | seeds | val loss | val bpb | Δ val loss vs base [95% CI] | compared | "
                        "t/0shot_acc |")
    sd = math.sqrt(2 * 0.05 ** 2)  # base at 0.003: 2.90, 3.00
    assert lines[4] == (f"| base | lr=0.003 | 2/2 | 2.9500 ± {sd:.4f} | 1.4750 ± {sd / 2:.4f} | (base) |  | "
                        "0.250 ± 0.071 |")
    # post minus base per seed: 3.10 - 2.90 = 0.20, 3.10 - 3.00 = 0.10; mean 0.15, sd 0.0707, t(1) 12.706
    half = T_975_DF1 * math.sqrt(2 * 0.05 ** 2) / math.sqrt(2)
    assert lines[5] == (f"| norm=post | lr=0.003 | 2/2 | 3.1000 ± 0.0000 | 1.5500 ± 0.0000 | "
                        f"+0.1500 [{0.15 - half:+.4f}, {0.15 + half:+.4f}] | paired, 2 seeds | 0.250 ± 0.071 |")
    # held-out accuracy is read at the chosen point (0.2, 0.3), never chosen on (0.6 at lr=0.001)
    assert "| base | 3.1000 (n=2) | **2.9500 (n=2)** |" in lines
    assert "| norm=post | 3.6500 (n=2) | **3.1000 (n=2)** |" in lines
    assert "| norm=post/lr=0.003/seed=1 | done | 6 | 3.1000 |" in md
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [t["run"] for t in table] == NAMES
    assert [(t["arm"], t["point"], t["seed"]) for t in table[-2:]] == [("norm=post", "lr=0.003", "0"),
                                                                         ("norm=post", "lr=0.003", "1")]
    assert table[-1]["overrides"] == "model.norm=post optim.lr=0.003 seed=1"
    assert (tmp_path / "val_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_seed_is_left_out_reported_and_compared_by_welch(sweep_file, tmp_path):
    spec = sweep.load_spec(sweep_file)
    for name, v in [("base/lr=0.001/seed=0", 3.0), ("base/lr=0.001/seed=1", 3.1), ("base/lr=0.003/seed=0", 2.9),
                    ("base/lr=0.003/seed=1", 3.0), ("norm=post/lr=0.001/seed=0", 3.3),
                    ("norm=post/lr=0.001/seed=1", 3.5), ("norm=post/lr=0.003/seed=0", 2.0)]:
        write_run(tmp_path, name, v)  # norm=post/lr=0.003/seed=1 diverged: no metrics
    results = sweep.collect(str(tmp_path), spec, {"norm=post/lr=0.003/seed=1": {"status": "failed (exit 1)"}})
    assert [r["status"] for r in results].count("done") == 7
    md = (tmp_path / "results.md").read_text()
    # lr=0.003's one finished seed (2.0) does not win: the point is incomplete
    assert "| norm=post | lr=0.001 | 2/2 | 3.4000 ± 0.1414 |" in md and "| norm=post | **3.4000 (n=2)** | " \
           "2.0000 (n=1 of 2) |" in md
    assert "Runs that did not finish, left out of every statistic: `norm=post/lr=0.003/seed=1` (failed (exit 1))." in md
    assert "`norm=post`: points left out of the choice (a seed did not finish there): `lr=0.003`." in md
    assert "paired, 2 seeds" in md  # both chosen points have both seeds
    # an arm missing a seed at its chosen point is compared by Welch
    (tmp_path / "norm=post" / "lr=0.001" / "seed=1" / "metrics.jsonl").unlink()
    (tmp_path / "norm=post" / "lr=0.003" / "seed=0" / "metrics.jsonl").unlink()
    sweep.collect(str(tmp_path), spec, {})
    md = (tmp_path / "results.md").read_text()
    assert "| norm=post | lr=0.001 | 1/2 | 3.3000 |" in md and "(no interval: n=1) | Welch, 1 vs 2 seeds |" in md


def test_an_arm_with_no_finished_run_is_reported_not_compared(sweep_file, tmp_path):
    spec = sweep.load_spec(sweep_file)
    for name in NAMES[:4]:
        write_run(tmp_path, name, 3.0)
    sweep.collect(str(tmp_path), spec, {})
    md = (tmp_path / "results.md").read_text()
    assert "| norm=post | - | 0/2 | - | - | - | - | - |" in md
    assert "`norm=post`: no run finished, so no point is chosen and no difference computed." in md


SCALING = TINY_CONFIG + """

SHAPES = [(1, 32), (2, 32), (2, 48), (2, 64), (3, 96), (4, 128)]


def get_sweep():
    return [{"model.num_layers": n, "model.d_model": d, "model.num_heads": d // 16} for n, d in SHAPES]


def get_seeds():
    return [0, 1]


def get_grid():
    return {"optim.lr": [0.001, 0.003]}


def get_scaling():
    return {"hold_out": "num_layers=4,d_model=128,num_heads=8"}
"""


def test_a_scaling_sweep_fits_loss_against_non_embedding_params_and_predicts_the_held_out_size(tmp_path):
    from gptjax import sweep_stats

    path = tmp_path / "scaling.py"
    path.write_text(SCALING)
    spec = sweep.load_spec(str(path))
    assert spec.scaling == {"hold_out": "num_layers=4,d_model=128,num_heads=8"}
    assert not sweep.Spec([{}], scaling={"hold_out": None}).plain  # a fit needs the arms' table, grid or not
    shapes = [(1, 32), (2, 32), (2, 48), (2, 64), (3, 96), (4, 128)]
    # N by hand: per block two LayerNorms (4d), qkv (3d^2 + 3d), out (d^2 + d), MLP (8d^2 + 5d); a final LayerNorm (2d)
    sizes = [n * (12 * d * d + 13 * d) + 2 * d for n, d in shapes]
    assert sizes[0] == 12_768 and sizes[-1] == 793_344

    def law(n):
        return 1.5 + 40.0 / n ** 0.4

    for (n, d), size, arm in zip(shapes, sizes, (sweep.run_name(a) for a in spec.arms)):
        for lr, offset in (("0.001", 0.1), ("0.003", 0.0)):  # lr=0.003 wins every size
            for seed, noise in ((0, -0.01), (1, 0.01)):
                name = f"{arm}/lr={lr}/seed={seed}"
                write_run(tmp_path, name, law(size) + offset + noise)
                (tmp_path / name / "config.json").write_text(json.dumps(
                    {"train": {"steps": 6}, "model": {"num_layers": n, "d_model": d, "num_heads": d // 16,
                                                      "vocab_size": 64, "max_len": 64}}))
    sweep.collect(str(tmp_path), spec, {})
    md = (tmp_path / "results.md").read_text()
    assert "| num_layers=1,d_model=32,num_heads=2 | 12,768 | " + f"{law(12_768):.4f} ± 0.0141 |" in md
    fit = sweep_stats.fit_power_law(sizes, [law(n) for n in sizes])
    assert abs(fit.E - 1.5) < 1e-3 and abs(fit.alpha - 0.4) < 1e-3  # the seeds' noise cancels in the mean
    assert f"E = {fit.E:.3f} ± " in md and f"alpha = {fit.alpha:.3f} ± " in md
    held = sweep_stats.predict_held_out(sizes[:5] + sizes[5:], [law(n) for n in sizes], 5)
    assert (f"Held out: `num_layers=4,d_model=128,num_heads=8` (N = 793,344). The fit over the other 5 sizes" in md
            and f"predicts {held.predicted:.4f}; measured {law(793_344):.4f}" in md)
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_runs_that_log_no_bits_per_byte_are_collected(sweep_file, tmp_path):
    """A sweep of fine-tuning runs: validation loss and accuracy, no bpb (it crashed the collection before)."""
    spec = sweep.load_spec(sweep_file)
    for i, name in enumerate(NAMES):
        run = tmp_path / name
        run.mkdir(parents=True)
        rows = [{"step": 6, "train_loss": 1.0, "tokens_per_sec": 10.0},
                {"step": 6, "val_loss": 1.0 + i / 10, "val_accuracy": 0.5}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = sweep.collect(str(tmp_path), spec, {})
    assert [r["val_loss"] for r in results][:2] == [1.0, 1.1] and results[0]["val_bpb"] is None
    assert "| base | lr=0.001 | 2/2 | 1.0500 ± 0.0707 | - | (base) |" in (tmp_path / "results.md").read_text()
