"""Tasks: K-shot prompts (fixed by the seed, never holding the scored example), acc/acc_norm as lm-eval computes
them, SQuAD normalisation, every shipped task and benchmark format parses, and bad task input is one DataError."""

import os

import numpy as np
import pytest

from gptjax.errors import DataError, GptjaxError
from gptjax.evals import evaluator, tasks
from gptjax.evals.tasks import benchmarks
from gptjax.evals.tasks.base import Example, Task

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "evals")
FIXTURES = {
    "lambada": "path={d}/lambada.jsonl",
    "hellaswag": "path={d}/hellaswag.jsonl",
    "piqa": "path={d}/piqa.jsonl,labels={d}/piqa-labels.lst",
    "arc_easy": "path={d}/arc_easy.jsonl",
    "arc_challenge": "path={d}/arc_easy.jsonl",
    "winogrande": "path={d}/winogrande.jsonl",
    "storycloze": "path={d}/storycloze.csv",
    "boolq": "path={d}/boolq.jsonl",
    "copa": "path={d}/copa.jsonl",
    "triviaqa": "path={d}/triviaqa.json",
}


def spec(name):
    return f"{name}:{FIXTURES[name].format(d=DATA)}"


@pytest.mark.parametrize("name", ["arithmetic_2da", "icl_mapping",
                                  pytest.param("reversed_words", marks=pytest.mark.slow),
                                  pytest.param("shakespeare_next_line", marks=pytest.mark.slow)])
def test_kshot_prompts_fixed_by_seed_and_never_hold_the_example(name):
    task = tasks.get(name)
    for i in range(5):
        a, b = task.prefix(i, 4, seed=0), task.prefix(i, 4, seed=0)
        assert a == b and a != task.prefix(i, 4, seed=1)
        assert a.count(task.separator) >= 4 and task.prompt(i, 4, 0).endswith(task.examples[i].query)
        ex = task.examples[i]
        if not ex.demos:  # a shared pool: the example itself is never one of its demonstrations
            assert task.render(ex) not in a.split(task.separator)
    assert task.prefix(0, 0, seed=0) == ""


def test_example_never_drawn_when_demos_are_the_examples():
    exs = [Example(f"q{i}", target=f"a{i}") for i in range(4)]
    task = Task("t", "cloze", exs, exs, separator="|", delimiter="=")
    for i in range(4):
        for seed in range(20):
            assert f"q{i}=a{i}" not in task.prefix(i, 3, seed).split("|")
    with pytest.raises(DataError, match="4-shot needs 4 demonstrations, but the demonstration split has 3"):
        task.prefix(0, 4, 0)


def test_description_comes_first():
    exs = [Example(f"q{i}", target=f"a{i}") for i in range(3)]
    task = Task("t", "cloze", exs, exs, description="Answer the questions.", separator="\n", delimiter=" ")
    assert task.prompt(0, 1, 0).startswith("Answer the questions.\nq") and task.prompt(0, 0, 0) == \
        "Answer the questions.\nq0"


def test_acc_and_acc_norm_by_hand():
    # choice 0 has the highest log-likelihood, choice 1 the highest per character
    m = evaluator.multiple_choice_metrics([-4.0, -6.0, -9.0], ["ab", "abcdefgh", "abc"], target=1,
                                          lls_uncond=[-1.0, -5.5, -1.0])
    assert m == {"acc": 0.0, "acc_norm": 1.0, "acc_uncond": 1.0}


@pytest.mark.slow
def test_acc_and_acc_norm_equal_lm_eval(tmp_path):
    task_mod = pytest.importorskip("lm_eval.api.task")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text('{"q": "Pick", "choices": ["ab", "abcdefgh", "abc"], "label": 1}\n')
    lm_task = task_mod.ConfigurableTask(config={
        "task": "handmade", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]})
    doc = next(iter(lm_task.test_docs()))
    for lls in ([-4.0, -6.0, -9.0], [-1.0, -2.0, -0.5], [-3.0, -3.2, -30.0]):
        want = lm_task.process_results(doc, [(ll, False) for ll in lls])
        got = evaluator.multiple_choice_metrics(lls, doc["choices"], doc["label"])
        assert got == {"acc": want["acc"], "acc_norm": want["acc_norm"]}


def test_squad_normalisation():
    assert evaluator.normalize_answer("The  Cat, sat!") == "cat sat"
    assert evaluator.token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert evaluator.token_f1("dog", "cat") == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", tasks.OFFLINE)
def test_offline_tasks_parse(name):
    task = tasks.get(name)
    assert task.kind in ("cloze", "multiple_choice") and len(task.examples) >= 100
    assert task.prompt(0, 1, 0)


@pytest.mark.slow
def test_word_scrambles():
    words = set(tasks.synthetic.word_list())
    assert {"which", "heaven", "father"} <= words and all(w.isalpha() and 4 <= len(w) <= 15 for w in words)
    t = tasks.get("reversed_words")
    ex = t.examples[0]
    assert ex.query.endswith(f"\n{ex.target[::-1]} =")
    a1 = tasks.get("anagrams1").examples[0]
    scrambled = a1.query.split("\n")[-1][:-2]
    assert sorted(scrambled) == sorted(a1.target) and scrambled[0] == a1.target[0]
    assert not {e.target for e in t.examples} & {d.target for d in t.demos}  # disjoint word sets


@pytest.mark.slow
def test_shakespeare_tasks_use_held_out_plays():
    from gptjax import data
    from gptjax.datasets.shakespeare import plays

    held_out = [t for i, t in enumerate(data.shakespeare_plays()) if plays.is_validation(i)]
    texts = [data.shakespeare_plays()[t] for t in held_out]
    last = tasks.get("shakespeare_last_word")
    assert all(any(ex.query in t for t in texts) for ex in last.examples[:20])
    nxt = tasks.get("shakespeare_next_line")
    ex = nxt.examples[0]
    assert len(ex.choices) == 4 and any(ex.query + "\n" + ex.choices[ex.target] in t for t in texts)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_benchmark_formats_parse(name):
    task = tasks.get(spec(name))
    assert len(task.examples) == 3
    assert task.prompt(0, 1, 0)


def test_benchmark_prompts_follow_lm_eval():
    hs = tasks.get(spec("hellaswag")).examples[0]
    assert hs.query == "Baking cookies: A woman pours flour into a bowl. She" and hs.target == 0
    assert tasks.get(spec("hellaswag")).examples[0].choices[2] == "jumps into a swimming pool. Dive."
    copa = tasks.get(spec("copa")).examples[0]
    assert copa.query == "The man broke his toe because" and copa.choices[0] == "he dropped a hammer on his foot."
    wino = tasks.get(spec("winogrande")).examples[0]
    assert wino.contexts == ("The trophy would not fit in the suitcase because the trophy",
                             "The trophy would not fit in the suitcase because the suitcase")
    assert wino.continuation == "was too big."
    arc = tasks.get(spec("arc_easy")).examples[2]
    assert arc.target == 2 and arc.query == "Question: Which state of matter has a fixed shape?\nAnswer:"
    assert tasks.get(spec("piqa")).examples[1].target == 1
    assert tasks.get(spec("storycloze")).examples[1].target == 1
    assert tasks.get(spec("boolq")).examples[1].choices == ("no", "yes")
    lam = tasks.get(spec("lambada")).examples[2]
    assert lam.target == "garden" and lam.query.endswith("play in the")
    tqa = tasks.get(spec("triviaqa"))
    assert tqa.kind == "generate" and tqa.examples[2].answers == ("William Shakespeare", "Shakespeare")


@pytest.mark.parametrize("task_spec, message", [
    ("nosuchtask", "unknown task 'nosuchtask'"),
    ("piqa:path={d}/bad_missing_field.jsonl", "bad_missing_field.jsonl:1: missing field 'sol2'"),
    ("hellaswag:path={d}/bad_empty_choices.jsonl", "example 0: empty choices"),
    ("copa:path={d}/bad_target.jsonl", "example 0: target 5 is not an index into its 2 choices"),
    ("copa:path={d}/no_such_file.jsonl", "no such file"),
    ("copa:pth=x", "unknown option 'pth'"),
])
def test_bad_task_input_is_one_data_error(task_spec, message):
    with pytest.raises(GptjaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tasks.get(task_spec.format(d=DATA))


def test_k_larger_than_demonstrations():
    task = tasks.get(spec("copa"))
    with pytest.raises(DataError, match="task copa.*3-shot needs 3 demonstrations, but the demonstration split has 2"):
        task.prefix(0, 3, 0)


EVAL_CONFIGS = sorted(p for p in __import__("glob").glob(os.path.join(os.path.dirname(DATA), "..", "..",
                                                                       "experiments", "eval", "*.py")))


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=os.path.basename)
def test_eval_configs_name_known_tasks(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.tasks and config.shots and config.seeds
    assert all(tasks.parse(t)[0] in tasks.NAMES for t in config.tasks)
    assert set(config) == {"tasks", "shots", "seeds", "limit", "tokens_per_batch", "workdirs"}


def test_benchmark_reads_tfds_records(monkeypatch, tmp_path):
    """Without path=, a benchmark reads TFDS records (bytes, numpy arrays) through tfds.data_source from a prepared
    dataset, never asking TFDS to download; the feature names are TFDS's (hellaswag's `context`, boolq's 0/1
    `label`)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    for name in ("hellaswag/1.1.0", "super_glue/boolq/1.0.2"):  # what a prepared dataset leaves in its directory
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "dataset_info.json").write_text("{}")
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))
    seen = []
    records = {
        "hellaswag": [{"activity_label": b"Baking", "context": b"A woman pours flour. she",
                       "endings": np.array([b"stirs it.", b"flies away.", b"sings.", b"sleeps."], dtype=object),
                       "label": np.int64(0)}],
        "super_glue/boolq": [{"question": b"is the sky blue", "passage": b"The sky is blue.", "label": np.int64(1)},
                             {"question": b"is snow hot", "passage": b"Snow is cold.", "label": np.int64(0)}],
    }

    def data_source(name, split, data_dir=None, download=True):
        assert not download and data_dir == str(tmp_path)
        seen.append((name, split))
        return records[name]

    monkeypatch.setattr(tfds, "data_source", data_source)
    hs = benchmarks.benchmark("hellaswag")
    assert hs.examples[0].query == "Baking: A woman pours flour. she" and hs.examples[0].choices[0] == "stirs it."
    assert ("hellaswag", "validation") in seen and ("hellaswag", "train") in seen
    bq = benchmarks.benchmark("boolq", split="validation[:2]")
    assert [e.target for e in bq.examples] == [1, 0] and bq.examples[0].query.startswith("The sky is blue.\nQuestion")


@pytest.mark.parametrize("name", ["boolq", "piqa"])
def test_a_benchmark_never_asks_tfds_for_a_dataset_that_is_not_prepared(name, monkeypatch, tmp_path):
    """Without path= and without a prepared dataset, the error names the dataset, where the benchmark's release
    file comes from and how to prepare it, before TFDS is asked (asked, it would try to download for minutes)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds, "data_source", lambda *a, **k: pytest.fail("TFDS was asked for an unprepared dataset"))
    (tmp_path / benchmarks.BENCHMARKS[name][1] / "1.0.0").mkdir(parents=True)  # a version folder, no dataset_info
    with pytest.raises(DataError) as e:
        tasks.get(f"{name}:data_dir={tmp_path}")
    message = str(e.value)
    assert f"task {name}: TFDS dataset {benchmarks.BENCHMARKS[name][1]!r} is not prepared in {tmp_path}" in message
    assert benchmarks.RELEASES[name] in message and f"tfds build {benchmarks.BENCHMARKS[name][1]}" in message


def test_a_missing_labels_file_is_a_data_error(tmp_path):
    """PIQA's labels= file missing is one DataError naming it (it was an uncaught FileNotFoundError)."""
    with pytest.raises(DataError, match=f"task piqa: no such file: {tmp_path}/nope.lst .*yonatanbisk.com/piqa"):
        tasks.get(f"piqa:path={DATA}/piqa.jsonl,labels={tmp_path}/nope.lst")


def _guard_network(monkeypatch):
    """Every way out to the network fails the test's check: the attempts are recorded and refused at once."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    for obj, attr in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                      (socket, "getaddrinfo")):
        monkeypatch.setattr(obj, attr, refuse)
    return attempts


@pytest.mark.parametrize("data", ["empty_dir", "tfds"])
def test_benchmarks_config_without_its_data_is_one_line_without_network(data, monkeypatch, tmp_path, capsys):
    """`gptjax eval --config=experiments/eval/benchmarks.py[:data=DIR]` where nothing is there: one line naming the
    first missing file or dataset, where it comes from and the other tasks; no network attempt (TFDS used to retry
    downloads for minutes), nothing written (TFDS left temporary directories), before any workdir is read."""
    import tempfile
    import time

    from helpers import one_line_error

    tfds = pytest.importorskip("tensorflow_datasets")
    attempts = _guard_network(monkeypatch)
    for d in ("bench", "tfds", "tmp"):
        (tmp_path / d).mkdir()
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    tasks.get.cache_clear()
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "eval",
                          "benchmarks.py")
    config += f":data={tmp_path / 'bench'}" if data == "empty_dir" else ""
    t0 = time.time()
    err = one_line_error(capsys, "and 9 more tasks cannot be read: hellaswag, piqa, arc_easy, arc_challenge, "
                         "winogrande, storycloze, boolq, copa, triviaqa", "eval", f"--workdir={tmp_path}/run",
                         f"--config={config}")
    assert time.time() - t0 < 60, "the eval command took minutes: is something retrying a download?"
    if data == "empty_dir":
        assert f"task lambada: no such file: {tmp_path / 'bench'}/lambada_test.jsonl" in err
    else:
        assert f"task lambada: TFDS dataset 'lambada' is not prepared in {tmp_path / 'tfds'}" in err
    assert benchmarks.RELEASES["lambada"] in err
    assert attempts == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bench", "tfds", "tmp"]  # nothing written anywhere


def test_the_default_eval_config_is_inside_the_package(tmp_path, capsys):
    """`gptjax eval` without --config reads gptjax/evals/config.py (an installed gptjax has no experiments/), the
    same config as experiments/eval/synthetic.py; it loads, its tasks are checked, and the run stops at the workdir."""
    import importlib.util

    import gptjax
    from gptjax.evals import cli, config
    from helpers import one_line_error

    package = os.path.dirname(os.path.abspath(gptjax.__file__))
    assert os.path.commonpath([cli.DEFAULT_CONFIG, package]) == package and os.path.isfile(cli.DEFAULT_CONFIG)
    one_line_error(capsys, f"--workdir: {tmp_path} holds no training run", "eval", f"--workdir={tmp_path}")
    path = os.path.join(os.path.dirname(package), "experiments", "eval", "synthetic.py")
    spec = importlib.util.spec_from_file_location("synthetic_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config("limit=7").to_dict() == config.get_config("limit=7").to_dict()
    assert config.get_config().tasks == tuple(synthetic_names()) and config.get_config().limit == 200


def synthetic_names():
    from gptjax.evals.tasks import synthetic

    return [*synthetic.ARITHMETIC, *synthetic.SCRAMBLES]
