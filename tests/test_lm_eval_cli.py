"""lm-evaluation-harness's own command line finds gptjax (`lm_eval --model gptjax`, through the installed
gptjax-lm-eval.pth, and `python -m gptjax.evals.harness`, with or without the .pth) and, on gptjax's tasks shipped
as lm-eval YAML (gptjax/evals/lm_eval_tasks), gives the numbers of gptjax's own evaluator without lm-eval's
warnings about their metrics."""

import glob
import json
import logging
import os
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(ROOT, "gptjax", "evals", "lm_eval_tasks")
SHIPPED_TASKS = ("gptjax_shakespeare_next_line", "gptjax_shakespeare_last_word")
LIMIT = 24
# lm-eval's warnings for a metric_list entry without these keys ("metric acc is defined, but aggregation is not").
METRIC_WARNINGS = ("but aggregation is not", "but higher_is_better is not", "higher_is_better not specified",
                   "is not assigned a default aggregation")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def workdir(corpus_file, tmp_path_factory):
    """A 2-layer char model, 10 steps: the numbers only have to agree, not be good."""
    from gptjax import configs, runs

    c = configs.get_config()
    c.data.source = "text"
    c.data.path = corpus_file
    c.data.tokenizer = "char"
    c.data.seq_len = 128
    c.model.update(num_layers=2, d_model=64, num_heads=2, max_len=128)
    c.train.update(steps=10, batch_size=8, log_every_steps=10)
    c.eval.update(every_steps=10, steps=1)
    c.sample.max_new_tokens = 5
    path = str(tmp_path_factory.mktemp("lm_eval_cli") / "run")
    runs.train(c, path)
    return path


def lm_eval_command() -> list[str]:
    """lm-eval's console script beside this interpreter (what `lm_eval` on the PATH is), else its module."""
    script = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "lm_eval"]


def native(workdir, name):
    from gptjax import workdirs
    from gptjax.evals import evaluator, scoring, tasks

    _, cfg, params, tok = workdirs.load(workdir)
    return evaluator.evaluate(scoring.Scorer(cfg, params, tok), tasks.get(name), 0, limit=LIMIT)


@pytest.mark.slow
def test_lm_eval_command_line_runs_gptjax_and_agrees(workdir, tmp_path):
    pytest.importorskip("lm_eval")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        lm_eval_command() + ["--model", "gptjax", "--model_args", f"workdir={workdir}", "--include_path", TASKS_DIR,
                             "--tasks", "gptjax_shakespeare_next_line,gptjax_shakespeare_last_word",
                             "--limit", str(LIMIT), "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, (
        "lm_eval --model gptjax failed; is gptjax installed with pip (its gptjax-lm-eval.pth registers the model)?\n"
        + proc.stderr[-3000:])
    assert not [w for w in METRIC_WARNINGS if w in proc.stderr], proc.stderr[-3000:]
    [results_file] = glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)
    results = json.load(open(results_file))["results"]
    next_line = native(workdir, "shakespeare_next_line")
    assert results["gptjax_shakespeare_next_line"]["acc,none"] == pytest.approx(next_line["acc"], abs=1e-9)
    assert results["gptjax_shakespeare_next_line"]["acc_norm,none"] == pytest.approx(next_line["acc_norm"], abs=1e-9)
    last_word = native(workdir, "shakespeare_last_word")
    assert results["gptjax_shakespeare_last_word"]["acc,none"] == pytest.approx(last_word["acc"], abs=1e-9)
    assert results["gptjax_shakespeare_last_word"]["perplexity,none"] == pytest.approx(last_word["perplexity"],
                                                                                       rel=1e-5)


def test_the_hook_registers_gptjax_beside_lm_evals_own_models():
    """What the .pth does, in a fresh interpreter: after `import lm_eval.models`, `gptjax` is in the registry as a
    lazy placeholder (nothing of gptjax's model code imported yet) and lm-eval's own `hf` is still there."""
    pytest.importorskip("lm_eval")
    code = ("import gptjax.evals.lm_eval_registration, sys; import lm_eval.models; "
            "from lm_eval.api.registry import model_registry as r; "
            "print('gptjax' in r, 'hf' in r, 'gptjax.evals.harness' in sys.modules, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False", "False"], out


def test_the_pth_line_is_silent_where_gptjax_cannot_be_imported(tmp_path):
    """The .pth runs in every interpreter of the environment: where gptjax is not importable (a moved or deleted
    checkout of an editable install) it must do nothing rather than print a traceback at each start."""
    with open(os.path.join(ROOT, "gptjax-lm-eval.pth")) as f:
        line = f.read().strip()
    check = f"{line}\nimport sys; print('gptjax.evals.lm_eval_registration' in sys.modules)"
    # -S: no site-packages, so no editable-install finder; the cwd decides whether gptjax is importable.
    away = subprocess.run([sys.executable, "-S", "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert (away.returncode, away.stdout.split(), away.stderr) == (0, ["False"], "")
    here = subprocess.run([sys.executable, "-S", "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    assert here.stdout.split() == ["True"]


def test_the_harness_module_runs_as_main_where_the_pth_registered_gptjax(monkeypatch, capsys):
    """`python -m gptjax.evals.harness` where the .pth is installed: the .pth registered `gptjax` when lm_eval.models
    loaded, and the module, run as `__main__`, registered its own class a second time, which lm-eval 0.4.13 refuses
    (a traceback: "'model' alias 'gptjax' already registered"). Here in this process: the .pth's registration, then
    the module as __main__ with --help. The registered model is then the module's class, what
    `lm_eval.simple_evaluate(model="gptjax")` builds."""
    pytest.importorskip("lm_eval")
    import runpy

    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    from gptjax.evals import lm_eval_registration

    lm_eval_registration.register(model_registry)  # what the .pth does (a no-op where it already did)
    monkeypatch.setattr(sys, "argv", ["python -m gptjax.evals.harness", "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        # runpy warns when an earlier test imported the module; running it as __main__ is the point here
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("gptjax.evals.harness", run_name="__main__")
    assert exit_.value.code in (0, None)
    assert "--model" in capsys.readouterr().out
    import gptjax.evals.harness

    assert model_registry.get("gptjax") is gptjax.evals.harness.GptjaxLM


@pytest.mark.slow
def test_python_m_harness_runs_with_and_without_the_pth(workdir, tmp_path):
    """The documented `python -m gptjax.evals.harness --model gptjax ...` as its own process, once as installed
    (the .pth active) and once with Python's site processing off (-S: no .pth; lm-eval and gptjax found through
    PYTHONPATH), on the shipped YAML tasks: both run and give the same numbers."""
    pytest.importorskip("lm_eval")
    site_packages = os.path.dirname(os.path.dirname(__import__("lm_eval").__file__))
    no_site = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([ROOT, site_packages])}
    probe = "import sys, lm_eval.models; print('gptjax.evals.lm_eval_registration' in sys.modules)"
    with_pth = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path),
                              env={**os.environ, **OFFLINE}, check=True).stdout.split()
    assert with_pth == ["True"], "the .pth is not active: is gptjax installed with pip (pip install -e '.[eval]')?"
    without_pth = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, env=no_site,
                                 cwd=str(tmp_path), check=True).stdout.split()
    assert without_pth == ["False"]
    results = {}
    for name, flags, env in (("pth", [], {**os.environ, **OFFLINE}), ("no_pth", ["-S"], no_site)):
        proc = subprocess.run(
            [sys.executable, *flags, "-m", "gptjax.evals.harness", "--model", "gptjax", "--model_args",
             f"workdir={workdir}", "--include_path", TASKS_DIR, "--tasks", ",".join(SHIPPED_TASKS), "--limit", "4",
             "--output_path", str(tmp_path / name)],
            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr and not [w for w in METRIC_WARNINGS if w in proc.stderr], proc.stderr
        [path] = glob.glob(str(tmp_path / name / "**" / "results_*.json"), recursive=True)
        results[name] = json.load(open(path))["results"]
    assert results["pth"] == results["no_pth"] and set(results["pth"]) == set(SHIPPED_TASKS)


def test_the_shipped_yaml_tasks_load_without_metric_warnings():
    """Each metric of the shipped YAML tasks names its aggregation and higher_is_better, so lm-eval builds them
    without "metric acc is defined, but aggregation is not" warnings. The one warning left is lm-eval's note for any
    task whose data comes from a Python function (`custom_dataset`), which it prints unconditionally."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("lm_eval")
    logger.addHandler(handler)
    try:
        loaded = TaskManager(include_path=TASKS_DIR, include_defaults=False).load(list(SHIPPED_TASKS))
    finally:
        logger.removeHandler(handler)
    assert set(loaded["tasks"]) == set(SHIPPED_TASKS)
    messages = [r.getMessage() for r in records]
    assert not [m for m in messages if any(w in m for w in METRIC_WARNINGS)], messages
    assert [m for m in messages if "Custom kwargs can be passed" not in m] == []
