"""End to end on a tiny trained workdir (slow tier): every shipped task runs; `gptjax eval` (its module entry) writes
eval/results.json, results.md and the plots and nothing else; bad input is one line from its own process; and
lm-eval through the bridge gives the numbers of gptjax's own evaluator on local YAML tasks.

In process on an untrained workdir (fast tier): bad input is one line; the in-training hook; the lm-eval bridge's
three request types are the scorer's; gptjax's tasks as lm-eval datasets."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gptjax.errors import GptjaxError
from helpers import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "evals")


@pytest.fixture(scope="module")
def workdir(corpus_file, tmp_path_factory):
    """A 2-layer char model trained for 30 steps on 200 kB of Shakespeare and a line of every printable ASCII
    character (the synthetic tasks need digits and the punctuation of random insertion)."""
    import string

    from gptjax import runs

    root = tmp_path_factory.mktemp("evals")
    corpus = root / "corpus.txt"
    corpus.write_text(string.printable + "\n" + open(corpus_file, encoding="utf-8").read(), encoding="utf-8")

    spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "experiments/pretrain/shakespeare_char.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.path = str(corpus)
    c.model.update(num_layers=2, d_model=64, num_heads=2, max_len=128)
    c.data.seq_len = 128
    c.train.update(steps=30, batch_size=8, log_every_steps=10)
    c.eval.update(every_steps=30, steps=1)
    c.mesh.shape = (-1, 1, 1)
    c.sample.max_new_tokens = 5
    path = str(root / "run")
    runs.train(c, path)
    return path


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """The trained workdir's model shapes (2 layers, context 128, a char tokenizer over printable ASCII) with initial
    params: what the in-process tests need, in a second instead of a training run."""
    import string

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gptjax import checkpoint, configs, tokenizer
    from gptjax.model import GPT, ModelConfig

    path = str(tmp_path_factory.mktemp("evals_untrained") / "run")
    c = configs.get_config()
    c.data.update(tokenizer="char", seq_len=128)
    c.model.update(num_layers=2, d_model=64, num_heads=2, max_len=128)
    c.mesh.shape = (-1, 1, 1)
    c.model.vocab_size = tokenizer.build_tokenizer(c.data, path, lambda: [string.printable]).vocab_size
    c = configs.finalize(c)
    checkpoint.write_config(path, c)
    model = GPT(ModelConfig.from_config(c.model))
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    checkpoint.save_params(path, nn.unbox(params))
    return path


def eval_cli(*args):
    return subprocess.run([sys.executable, "-m", "gptjax.evals.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)


def snapshot(workdir):
    out = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, workdir)] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
    return out


@pytest.mark.slow
def test_every_shipped_task_runs(workdir):
    from gptjax import workdirs
    from gptjax.evals import evaluator, scoring, tasks

    _, cfg, params, tok = workdirs.load(workdir)
    scorer = scoring.Scorer(cfg, params, tok)
    fixtures = {"lambada": "path={d}/lambada.jsonl", "hellaswag": "path={d}/hellaswag.jsonl",
                "piqa": "path={d}/piqa.jsonl,labels={d}/piqa-labels.lst", "arc_easy": "path={d}/arc_easy.jsonl",
                "arc_challenge": "path={d}/arc_easy.jsonl", "winogrande": "path={d}/winogrande.jsonl",
                "storycloze": "path={d}/storycloze.csv", "boolq": "path={d}/boolq.jsonl", "copa": "path={d}/copa.jsonl",
                "triviaqa": "path={d}/triviaqa.json"}
    specs = [n for n in tasks.OFFLINE if n != "icl_mapping"] + [f"{n}:{f.format(d=DATA)}" for n, f in fixtures.items()]
    for spec in specs:
        task = tasks.get(spec)
        m = evaluator.evaluate(scorer, task, 1, seed=0, limit=2)
        main = m[evaluator.MAIN_METRIC[task.kind]]
        assert m["n"] == 2 and np.isfinite(main), (spec, m)
    m = evaluator.evaluate(scorer, tasks.get("icl_mapping"), 2, limit=4)
    assert 0 <= m["acc"] <= 1


@pytest.mark.slow
def test_eval_cli_writes_only_eval_dir(workdir, tmp_path):
    before = snapshot(workdir)
    out = eval_cli(f"--workdir={workdir}", f"--config={ROOT}/experiments/eval/synthetic.py:limit=4",
                   "--config.tasks=('arithmetic_2da','reversed_words')", "--config.shots=(0,1,2)",
                   "--config.seeds=(0,1)")
    assert out.returncode == 0, out.stderr[-3000:]
    after = snapshot(workdir)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"eval/results.json", "eval/results.md", "eval/shots.png"}
    res = json.load(open(os.path.join(workdir, "eval", "results.json")))
    assert set(res["tasks"]) == {"arithmetic_2da", "reversed_words"}
    r = res["tasks"]["arithmetic_2da"]["shots"]["2"]
    assert set(r["seeds"]) == {"0", "1"} and r["mean"]["n"] == 4
    assert r["mean"]["acc"] == pytest.approx(np.mean([r["seeds"][s]["acc"] for s in ("0", "1")]))
    md = open(os.path.join(workdir, "eval", "results.md")).read()
    assert "| arithmetic_2da | acc |" in md and "2-shot" in md


@pytest.mark.slow
def test_eval_cli_several_workdirs_compare(workdir, tmp_path):
    import shutil

    other = str(tmp_path / "copy")
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("eval"))
    out = eval_cli(f"--workdir={workdir},{other}", f"--config={ROOT}/experiments/eval/synthetic.py:limit=2",
                   "--config.tasks=('arithmetic_2dm',)", "--config.shots=(0,1)", f"--output_dir={tmp_path}/cmp")
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(tmp_path / "cmp" / "models.png")
    md = (tmp_path / "cmp" / "models.md").read_text()
    assert "### run" in md and "### copy" in md
    a = json.load(open(os.path.join(workdir, "eval", "results.json")))["tasks"]["arithmetic_2dm"]
    b = json.load(open(os.path.join(other, "eval", "results.json")))["tasks"]["arithmetic_2dm"]
    assert a["shots"] == b["shots"]  # the same params give the same numbers


BAD_INPUT = [
    (["--config.tasks=('nosuchtask',)"], "config.tasks: unknown task 'nosuchtask'"),
    (["--config.shots=(500,)", "--config.tasks=('copa:path=" + DATA + "/copa.jsonl',)"],
     "500-shot needs 500 demonstrations, but the demonstration split has 2"),
    (["--config.tasks=('copa:path=" + DATA + "/bad_target.jsonl',)"], "target 5 is not an index"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_eval_bad_input_is_one_line(untrained, capsys, args, message):
    one_line_error(capsys, message, "eval", f"--workdir={untrained}", f"--config={ROOT}/experiments/eval/synthetic.py",
                   *args)
    assert not os.path.exists(os.path.join(untrained, "eval"))


@pytest.mark.slow
def test_eval_cli_bad_input_is_one_line_from_its_own_process(workdir):
    """The module entry (`python -m gptjax.evals.cli`) turns bad input into one line too (one case: the others run
    in process above)."""
    args, message = BAD_INPUT[0]
    out = eval_cli(f"--workdir={workdir}", f"--config={ROOT}/experiments/eval/synthetic.py", *args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert out.stderr.startswith("gptjax: error: ") and message in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["empty_dir", "tfds"])
def test_benchmarks_without_their_data_stop_at_once_from_their_own_process(data, tmp_path):
    """The documented `gptjax eval --workdir=DIR --config=experiments/eval/benchmarks.py:data=...` with an empty
    data directory, and without data= on an empty TFDS directory, as a fresh process: one line within seconds (TFDS
    used to be asked to download, and retried for minutes), and no file or temporary directory left behind (the
    in-process test in test_evals_tasks.py refuses the network outright)."""
    import time

    for d in ("bench", "tfds", "tmp"):
        (tmp_path / d).mkdir()
    config = f"{ROOT}/experiments/eval/benchmarks.py" + (f":data={tmp_path / 'bench'}" if data == "empty_dir" else "")
    env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds"), "TMPDIR": str(tmp_path / "tmp")}
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "gptjax.main", "eval", f"--workdir={tmp_path / 'run'}",
                          f"--config={config}"], capture_output=True, text=True, cwd=str(tmp_path), env=env,
                         timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-3000:]
    assert out.stderr.startswith("gptjax: error: task lambada: ") and "9 more tasks cannot be read" in out.stderr
    assert ("lambada_test.jsonl" if data == "empty_dir" else f"not prepared in {tmp_path / 'tfds'}") in out.stderr
    assert time.time() - t0 < 120
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bench", "tfds", "tmp"]


def test_workdir_without_checkpoint(tmp_path, untrained):
    workdir = untrained
    from gptjax.evals import cli
    from gptjax.evals.config import eval_config

    with pytest.raises(GptjaxError, match="holds no training run"):
        cli.run([str(tmp_path)], eval_config(("arithmetic_2da",)))
    import shutil

    shutil.copytree(workdir, tmp_path / "nockpt", ignore=shutil.ignore_patterns("checkpoints", "eval"))
    with pytest.raises(GptjaxError):
        cli.run([str(tmp_path / "nockpt")], eval_config(("arithmetic_2da",), limit=1))


def test_hook_in_training_on_an_untrained_model(untrained):
    """evaluate_in_training's metrics are the evaluator's, on the mesh it is given (one task, one K: the slow test
    below has two of each)."""
    from gptjax import sharding, workdirs
    from gptjax.evals import evaluator, in_training, scoring, tasks

    config, cfg, params, tok = workdirs.load(untrained)
    mesh, rules = sharding.make_mesh((-1, 1, 1)), config.mesh.logical_axis_rules
    got = in_training.evaluate_in_training(["arithmetic_2da"], (0,), 4, cfg, params, tok, mesh, rules, seed=0)
    assert set(got) == {"icl/arithmetic_2da/0shot_acc", "icl/arithmetic_2da/0shot_perplexity"}
    want = evaluator.evaluate(scoring.Scorer(cfg, params, tok, mesh=mesh, rules=rules), tasks.get("arithmetic_2da"),
                              0, limit=4)
    assert got == {f"icl/arithmetic_2da/0shot_{m}": pytest.approx(want[m], rel=1e-6) for m in ("acc", "perplexity")}


@pytest.mark.slow
def test_hook_in_training(workdir):
    from gptjax import sharding, workdirs
    from gptjax.evals import evaluator, in_training, scoring, tasks

    config, cfg, params, tok = workdirs.load(workdir)
    mesh = sharding.make_mesh((-1, 1, 1))
    got = in_training.evaluate_in_training(["arithmetic_2da", "shakespeare_next_line"], (0, 1), 4, cfg, params, tok, mesh,
                                    config.mesh.logical_axis_rules, seed=0)
    assert set(got) == {f"icl/{t}/{k}shot_{m}" for t, ms in (("arithmetic_2da", ("acc", "perplexity")),
                                                              ("shakespeare_next_line", ("acc", "acc_norm")))
                        for k in (0, 1) for m in ms}
    want = evaluator.evaluate(scoring.Scorer(cfg, params, tok), tasks.get("arithmetic_2da"), 1, limit=4)
    assert got["icl/arithmetic_2da/1shot_perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)


LM_EVAL_TASKS = {
    "gj_piqa": """task: gj_piqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d}/piqa_labeled.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "gj_lambada": """task: gj_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d}/lambada.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
""",
    "gj_wikitext": """task: gj_wikitext
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d}/lambada.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


def test_lm_eval_bridge_answers_each_request_type_with_the_scorer(untrained):
    """GptjaxLM passes lm-eval's requests (only their .args are read) to a Scorer on every device: the answers are
    that scorer's (generate_until: the slow test below)."""
    pytest.importorskip("lm_eval")
    import types

    from gptjax import sharding, workdirs
    from gptjax.evals import harness, scoring

    lm = harness.GptjaxLM(workdir=untrained)
    config, cfg, params, tok = workdirs.load(untrained)
    scorer = scoring.Scorer(cfg, params, tok, mesh=sharding.make_mesh((-1, 1, 1)),
                            rules=config.mesh.logical_axis_rules)
    assert lm.max_length == scorer.max_len == 128

    def requests(*args_list):
        return [types.SimpleNamespace(args=args) for args in args_list]

    pairs = [("ROMEO: I", " love"), ("2 + 2 =", " 4"), ("ROMEO: I", " hate")]
    assert lm.loglikelihood(requests(*pairs)) == scorer.loglikelihood(pairs)
    docs = ["the cat sat on the mat. " * 8]  # longer than the context: rolling windows
    assert lm.loglikelihood_rolling(requests(*[(d,) for d in docs])) == scorer.loglikelihood_rolling(docs)


@pytest.mark.slow  # about 3 s: the sampling programs
def test_lm_eval_bridge_generates_until_a_stop(untrained):
    pytest.importorskip("lm_eval")
    import types

    from gptjax import sharding, workdirs
    from gptjax.evals import harness, scoring

    lm = harness.GptjaxLM(workdir=untrained)
    config, cfg, params, tok = workdirs.load(untrained)
    scorer = scoring.Scorer(cfg, params, tok, mesh=sharding.make_mesh((-1, 1, 1)),
                            rules=config.mesh.logical_axis_rules)
    got = lm.generate_until([types.SimpleNamespace(args=("ROMEO:", {"until": "\n", "max_gen_toks": 5})),
                             types.SimpleNamespace(args=("O", {"max_gen_toks": 3}))])
    assert got == scorer.generate_until([("ROMEO:", ("\n",), 5), ("O", (), 3)])
    assert all(len(g) <= n and "\n" not in g for g, n in zip(got, (5, 3)))


def test_shakespeare_tasks_as_lm_eval_datasets():
    """gptjax/evals/lm_eval_tasks: the examples are the test split and the demonstrations the train split, as the
    YAML files beside it read them."""
    pytest.importorskip("datasets")
    from gptjax.evals import tasks
    from gptjax.evals.lm_eval_tasks import utils

    mc, t = utils.load("shakespeare_next_line"), tasks.get("shakespeare_next_line")
    assert (mc["test"].num_rows, mc["train"].num_rows) == (len(t.examples), len(t.demos))
    e = t.examples[3]
    assert mc["test"][3] == {"query": e.query, "choices": list(e.choices), "label": int(e.target)}
    cloze, t = utils.load("shakespeare_last_word"), tasks.get("shakespeare_last_word")
    assert (cloze["test"].num_rows, cloze["train"].num_rows) == (len(t.examples), len(t.demos))
    assert cloze["train"][0] == {"query": t.demos[0].query, "target": t.demos[0].target}


@pytest.mark.slow
def test_lm_eval_bridge_equals_native_evaluator(workdir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [json.loads(line) for line in open(os.path.join(DATA, "piqa.jsonl"))]
    labels = open(os.path.join(DATA, "piqa-labels.lst")).read().split()
    with open(tmp_path / "piqa_labeled.jsonl", "w") as f:
        for r, lab in zip(rows, labels):
            f.write(json.dumps({**r, "label": int(lab)}) + "\n")
    import shutil

    shutil.copy(os.path.join(DATA, "lambada.jsonl"), tmp_path / "lambada.jsonl")
    for name, text in LM_EVAL_TASKS.items():
        (tmp_path / f"{name}.yaml").write_text(text.format(d=tmp_path))

    import lm_eval
    from lm_eval.tasks import TaskManager

    import gptjax.evals.harness  # noqa: F401  registers "gptjax"
    from gptjax import workdirs
    from gptjax.evals import evaluator, scoring, tasks
    from gptjax.evals.tasks.base import Example, Task

    out = lm_eval.simple_evaluate(model="gptjax", model_args=f"workdir={workdir}", tasks=list(LM_EVAL_TASKS),
                                  task_manager=TaskManager(include_path=str(tmp_path)), num_fewshot=0,
                                  log_samples=False)["results"]
    _, cfg, params, tok = workdirs.load(workdir)
    scorer = scoring.Scorer(cfg, params, tok)
    piqa = evaluator.evaluate(scorer, tasks.get(f"piqa:path={tmp_path}/piqa_labeled.jsonl"), 0)
    assert out["gj_piqa"]["acc,none"] == piqa["acc"] and out["gj_piqa"]["acc_norm,none"] == piqa["acc_norm"]
    lam = evaluator.evaluate(scorer, tasks.get(f"lambada:path={tmp_path}/lambada.jsonl"), 0)
    assert out["gj_lambada"]["acc,none"] == lam["acc"]
    assert out["gj_lambada"]["perplexity,none"] == pytest.approx(lam["perplexity"], rel=1e-6)
    docs = [json.loads(line)["text"] for line in open(tmp_path / "lambada.jsonl")]
    ppl = evaluator.evaluate(scorer, Task("docs", "perplexity", [Example(d) for d in docs]), 0)
    for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert out["gj_wikitext"][f"{m},none"] == pytest.approx(ppl[m], rel=1e-6), m
