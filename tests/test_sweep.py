"""launch/sweep.py: what --dry_run prints for each launcher, the results tables and plot it writes from the runs'
metrics.jsonl, SLURM entries submitted all at once before waiting, the GPT-1 vs GPT-2 ablation's arms, and (slow)
a tiny real sweep of two runs whose tables are checked against the runs' own metrics. sweep.main runs in this
process, except in the real sweep (slow), which runs launch/sweep.py as a child process."""

import csv
import importlib.util
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
import sweep  # noqa: E402

# The config a test sweep trains: 1 layer of 32, 6 steps (tests/test_sweep_grid.py adds its own arms to it)
TINY_CONFIG = '''
from gptjax.configs import default


def get_config(arg=None):
    c = default.get_config()
    c.data.update(tokenizer="char", seq_len=32)
    c.model.update(num_layers=1, d_model=32, num_heads=2, max_len=32)
    c.train.update(steps=6, batch_size=4, log_every_steps=2)
    c.optim.update(warmup_steps=1)
    c.eval.update(every_steps=3, steps=2)
    c.checkpoint.update(every_steps=6)
    c.sample.update(num_samples=1, max_new_tokens=4)
    return c

'''
TWO_RUNS = TINY_CONFIG + '''

def get_sweep():
    return [{"model.norm": "pre"}, {"model.norm": "post", "model.pos_embedding": "sinusoidal"}]
'''


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "two_runs.py"
    path.write_text(TWO_RUNS)
    return str(path)


def run_sweep_process(*args, env=None):
    """`launch/sweep.py ARGS` as a child process (the real sweep end to end)."""
    r = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), *args], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture
def run_sweep(capsys, monkeypatch):
    """`launch/sweep.py ARGS` in this process (sweep.main): returncode, stdout and stderr, as a child process's."""

    def run(*args, env=None, check=True):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        status = sweep.main(list(args))
        out = capsys.readouterr()
        if check:
            assert status == 0, out.out + out.err
        return types.SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)

    return run


def test_dry_run_local_prints_one_command_per_entry(run_sweep, sweep_file, tmp_path):
    work = tmp_path / "sweep"
    out = run_sweep(f"--config={sweep_file}", f"--workdir={work}", "--dry_run", "--", "--config.train.steps=3").stdout
    cmds = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert [c[:8] for c in cmds] == [
        ["gptjax", "train", f"--config={sweep_file}", f"--workdir={work}/norm=pre", "--config.model.norm=pre",
         "--config.train.steps=3", ">", f"{work}/logs/norm=pre.log"],
        ["gptjax", "train", f"--config={sweep_file}", f"--workdir={work}/norm=post,pos_embedding=sinusoidal",
         "--config.model.norm=post", "--config.model.pos_embedding=sinusoidal", "--config.train.steps=3", ">"]]
    assert f"# then write {work}/results.md, results.csv and val_curves.png" in out
    assert not work.exists()  # nothing ran


def test_dry_run_slurm_one_job_per_entry(run_sweep, sweep_file, tmp_path):
    out = run_sweep(f"--config={sweep_file}", f"--workdir={tmp_path}/s", "--launcher=slurm", "--nodes=2",
                    "--partition=gpu", "--job_name=abl", "--dry_run").stdout
    scripts = out.split("sbatch --parsable <<'EOF'\n")[1:]
    assert len(scripts) == 2
    for i, (script, name) in enumerate(zip(scripts, ["norm=pre", "norm=post,pos_embedding=sinusoidal"])):
        assert f"#SBATCH --job-name=abl-{i}\n" in script and "#SBATCH --nodes=2\n" in script
        assert f"#SBATCH --output={tmp_path}/s/logs/%x-%j.out" in script
        srun = shlex.split([line for line in script.splitlines() if line.startswith("srun")][0])
        assert f"--workdir={tmp_path}/s/{name}" in srun and srun[-1] == "--distributed"
    assert "squeue -h -o %i -j <job ids>" in out


def test_dry_run_tpu_one_slice_per_entry(run_sweep, sweep_file):
    out = run_sweep(f"--config={sweep_file}", "--workdir=gs://bucket/abl", "--launcher=tpu", "--tpu=abl",
                    "--zone=us-west4-a", "--accelerator=v5e-16", "--spot", "--queued", "--repo=https://x/g.git",
                    "--dry_run").stdout
    cmds = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    for i, name in enumerate(["norm=pre", "norm=post,pos_embedding=sinusoidal"]):
        mine = [c for c in cmds if f"abl-{i}" in c or f"abl-{i}:gptjax.log" in c]
        assert mine[0][3:6] == ["queued-resources", "create", f"abl-{i}"] and "--spot" in mine[0]
        assert any(a.startswith("--command=") and f"--workdir=gs://bucket/abl/{name} " in a for a in mine[3])
        assert [c[6] for c in mine if c[4] == "scp"] == [f"logs/abl-{i}/worker_{k}.log" for k in range(4)]
        assert mine[-1][3:6] == ["queued-resources", "delete", f"abl-{i}"]


def write_metrics(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_results_tables_and_plot_from_metrics(tmp_path):
    a = [{"step": 2, "train_loss": 3.0, "tokens_per_sec": 10.0}, {"step": 2, "val_loss": 2.9, "val_bpb": 1.5},
         {"step": 4, "train_loss": 2.5, "tokens_per_sec": 400.0}, {"step": 6, "train_loss": 2.0, "tokens_per_sec": 500.0},
         {"step": 8, "train_loss": 1.8, "tokens_per_sec": 300.0}, {"step": 8, "val_loss": 2.2, "val_bpb": 1.1},
         {"step": 4, "icl/next_line/0shot_acc": 0.2}, {"step": 8, "icl/next_line/0shot_acc": 0.31}]
    b = [{"step": 4, "train_loss": 2.4, "tokens_per_sec": 50.0, "train_bpb": 1.23},
         {"step": 4, "val_loss": 2.6, "val_bpb": 1.3, "wall_seconds": 99.0}]
    entries = [{"model.norm": "pre"}, {"model.norm": "post", "model.tie_embeddings": False}, {"model.norm": "x"}]
    write_metrics(tmp_path / "norm=pre", a)
    write_metrics(tmp_path / "norm=post,tie_embeddings=False", b)
    outcomes = {"norm=pre": {"status": "done", "wall_seconds": 12.5}, "norm=x": {"status": "failed (exit 1)"}}
    results = sweep.collect(str(tmp_path), entries, outcomes)

    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["norm=pre", "norm=post,tie_embeddings=False", "norm=x"]
    first, second, failed = table
    assert first["overrides"] == "model.norm=pre" and first["status"] == "done" and first["steps"] == "8"
    assert float(first["train_loss"]) == 1.8 and float(first["val_loss"]) == 2.2 and float(first["val_bpb"]) == 1.1
    bytes_per_token = 2.2 / math.log(2) / 1.1  # the validation split's, from the last eval
    assert float(first["train_bpb"]) == pytest.approx(1.8 / math.log(2) / bytes_per_token)
    assert float(first["tokens_per_sec"]) == 400.0  # median after the first (compiling) interval
    assert float(first["wall_seconds"]) == 12.5  # the launcher's measurement
    assert second["overrides"] == "model.norm=post model.tie_embeddings=False" and second["status"] == "done"
    assert float(second["train_bpb"]) == 1.23 and float(second["wall_seconds"]) == 99.0  # logged by the run
    assert float(second["tokens_per_sec"]) == 50.0
    assert failed["status"] == "failed (exit 1)" and failed["val_loss"] == "" and failed["steps"] == "0"
    assert float(first["icl/next_line/0shot_acc"]) == 0.31 and second["icl/next_line/0shot_acc"] == ""  # the last
    assert [r["run"] for r in results] == [r["run"] for r in table]

    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == ("| run | status | steps | train loss | train bpb | val loss | val bpb | tokens/s | wall s | "
                     "next_line/0shot_acc |")
    assert md[2].startswith("| norm=pre | done | 8 | 1.8000 | ") and md[2].endswith("| 2.2000 | 1.1000 | 400 | 12 | 0.310 |")
    assert md[4] == "| norm=x | failed (exit 1) | 0 | - | - | - | - | - | - | - |"
    assert "- `norm=post,tie_embeddings=False`: `model.norm=post model.tie_embeddings=False`" in md
    png = (tmp_path / "val_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_slurm_sweep_submits_every_entry_before_waiting(run_sweep, sweep_file, tmp_path):
    work = tmp_path / "s"
    for name in ("norm=pre", "norm=post,pos_embedding=sinusoidal"):  # what the jobs would leave behind
        write_metrics(work / name, [{"step": 6, "train_loss": 2.0, "tokens_per_sec": 9.0},
                                    {"step": 6, "val_loss": 2.1, "val_bpb": 1.2}])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.jsonl"
    for name, body in [("sbatch", "n = sum(1 for _ in open(LOG)); print(f'{100 + n}')"),
                       ("squeue", "print('101' if sum('squeue' in l for l in open(LOG)) < 3 else '')"),
                       ("sacct", "print('COMPLETED|00:01:05' if '101' in sys.argv else 'FAILED|1-00:00:07')")]:
        exe = bindir / name
        exe.write_text(f"#!{sys.executable}\nimport json, sys\nLOG = {str(log)!r}\n"
                       f"open(LOG, 'a').write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n{body}\n")
        exe.chmod(0o755)
    r = run_sweep(f"--config={sweep_file}", f"--workdir={work}", "--launcher=slurm", "--poll_seconds=0.01",
                  env={"PATH": f"{bindir}:{os.environ['PATH']}"}, check=False)
    ran = [json.loads(line)[0] for line in log.read_text().splitlines()]
    assert ran == ["sbatch", "sbatch", "squeue", "squeue", "squeue", "sacct", "sacct"]
    assert "submitted jobs 101, 102" in r.stdout
    table = list(csv.DictReader(open(work / "results.csv")))
    assert [t["status"] for t in table] == ["done", "failed"]
    assert [float(t["wall_seconds"]) for t in table] == [65.0, 86407.0]  # sacct's Elapsed
    assert r.returncode == 1  # one entry failed


def load(relpath):
    spec = importlib.util.spec_from_file_location(pathlib.Path(relpath).stem, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_has_one_arm_per_gpt2_change():
    ablation = load("experiments/sweeps/gpt1_vs_gpt2_ablation.py")
    entries = ablation.get_sweep()
    knobs = {"model.norm", "model.final_norm", "model.scale_residual_init", "model.activation",
             "model.pos_embedding", "model.tie_embeddings"}
    assert entries[0] == {} and set(ablation.GPT2) == knobs == set(ablation.ALTERNATIVE)
    singles = entries[1:-1]
    assert [next(iter(e)) for e in singles] == list(ablation.ALTERNATIVE)  # one knob each, every knob once ...
    alternatives = ablation.ALTERNATIVE.items()
    assert all(e == {k: v, **ablation.COMPANIONS.get(k, {})} for e, (k, v) in zip(singles, alternatives))
    assert all(e[k] == ablation.ALTERNATIVE[k] != ablation.GPT2[k] for e in singles for k in list(e)[:1])
    # ... with what came with it: the Transformer's sinusoids with its sqrt(d_model) embedding scale
    assert {"model.pos_embedding": "sinusoidal", "model.embed_scale": True} in singles
    assert ablation.get_config().model.embed_scale is False  # the base (GPT-2) does not scale
    assert entries[-1] == {"model.norm": "post", "model.final_norm": False, "model.scale_residual_init": False}
    assert len({sweep.run_name(e) for e in entries}) == len(entries)


@pytest.mark.slow
def test_tiny_local_sweep_writes_its_results(sweep_file, tmp_path):
    work = tmp_path / "sweep"
    r = run_sweep_process(f"--config={sweep_file}", f"--workdir={work}", "--",
                          f"--config.data.data_dir={tmp_path}/tfds",
                          env={"XLA_FLAGS": ""})  # one CPU device per run, as on a user's machine
    table = list(csv.DictReader(open(work / "results.csv")))
    names = ["norm=pre", "norm=post,pos_embedding=sinusoidal"]
    assert [t["run"] for t in table] == names
    for t in table:
        rows = [json.loads(line) for line in open(work / t["run"] / "metrics.jsonl")]
        evals = [row for row in rows if "val_loss" in row]
        assert t["status"] == "done" and t["steps"] == "6" and [e["step"] for e in evals] == [3, 6]
        assert float(t["val_loss"]) == evals[-1]["val_loss"] and float(t["val_bpb"]) == evals[-1]["val_bpb"]
        assert float(t["train_loss"]) == [row for row in rows if "train_loss" in row][-1]["train_loss"]
        assert 0 < float(t["train_bpb"]) < 10 and float(t["tokens_per_sec"]) > 0 and float(t["wall_seconds"]) > 1
        assert (work / "logs" / f"{t['run']}.log").read_text().strip()
    assert table[0]["val_loss"] != table[1]["val_loss"]  # the overrides reached the runs
    assert json.loads((work / "norm=post,pos_embedding=sinusoidal" / "config.json").read_text())["model"][
        "pos_embedding"] == "sinusoidal"
    md = (work / "results.md").read_text()
    assert r.stdout.endswith(md) and all(f"| {n} | done | 6 |" in md for n in names)
    assert (work / "val_curves.png").read_bytes()[:4] == b"\x89PNG"
