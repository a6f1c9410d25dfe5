"""Every experiment file runs: each file under experiments/ trains (or evaluates) for two steps of a small model under
GPTJAX_SMOKE=1 (gptjax/configs/smoke.py), in this process through `gptjax.main.main`, with every argument value its
docstring or the documents list, every size preset it accepts, every entry of a sweep's get_sweep(), and
experiments/icl/mapping.py over 1, 2 and 8 data shards.

Only data that cannot be had offline is stood in for (tests/standins.py): the TFDS datasets (c4/en:3.0.1, glue,
super_glue/copa, imdb_reviews) written in their real layout into a temporary data_dir, a small transformers GPT-2
with its byte-level BPE (for `gptjax import-hf` and data.tokenizer=hf), and the benchmarks' release files (the
small ones of tests/data/evals under the names experiments/eval/benchmarks.py expects). Runs that start from other
runs (fine-tuning's init_from, the RL stages' policy, judge and reward model, the evaluations' workdir) get them
from runs of the real experiments made here, on first use, and passed as the experiment's own workdir arguments.

RUNS is the table of runs; `test_every_documented_argument_is_run` (the guard) checks that every
`experiments/...py:ARGS` of README.md, docs/*.md and the experiments' docstrings, and every `key=value` an
experiment's docstring lists, is among them, and `test_every_experiment_file_is_run` that every file under
experiments/ and every size preset is. Evaluations run with `--config.limit=4` (`gptjax eval` does not shrink under
GPTJAX_SMOKE; the configs score hundreds of examples). Two cheap runs (an ICL pretraining, an SST-2 fine-tune)
are in the fast tier; the rest, about 70 runs, are `slow` (about 15 minutes on 2 shared cores).
"""

import dataclasses
import importlib.util
import itertools
import json
import os
import pathlib
import re
import sys
import time

import pytest

import standins
from helpers import gptjax_captured

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
EVAL_LIMIT = 4


def load(relpath: str):
    """The experiment module at experiments/`relpath`."""
    path = EXPERIMENTS / relpath
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of an experiment file: `gptjax COMMAND --config=experiments/FILE[:ARG] --workdir=... FLAGS`.

    `{name}` in arg, flags and workdir is the workdir of the run called `name` (made first, once) or a stand-in
    (RESOURCES). `name` names this run's workdir for others; `workdir` puts it in another run's (a resume); `label`
    tells apart runs of the same file and argument; `fast` keeps it in the fast tier."""
    file: str
    arg: str = ""
    flags: tuple = ()
    name: str = ""
    workdir: str = ""
    command: str = "train"
    label: str = ""
    fast: bool = False

    @property
    def id(self) -> str:
        return f"{self.file}{':' + self.arg if self.arg else ''}{' [' + self.label + ']' if self.label else ''}"

    def pairs(self) -> dict:
        """The argument's key=value pairs."""
        return dict(item.split("=", 1) for item in filter(None, self.arg.split(",")))


INIT = "--config.train.init_from={shakespeare}"
C4 = ("--config.data.data_dir={tfds}", "--config.data.tokenizer_path={hf}")
RL_GENRE = "policy={shakespeare},judge={genre}"
RL_IMDB = "policy={gpt2},judge={imdb},data_dir={tfds}"
EVAL = ("--workdir={shakespeare}", f"--config.limit={EVAL_LIMIT}")


def _sizes(relpath: str) -> list[str]:
    """The size presets a pretraining recipe accepts: gpt3.py's table; gpt2_124m.py's GPT-2 presets."""
    from gptjax.configs import presets

    if relpath == "pretrain/gpt3.py":
        return list(load(relpath)._TABLE)
    return [p for p in presets.PRESETS if p.startswith("gpt2-")]


def _size_runs(relpath: str, default: str) -> list[Run]:
    return [Run(relpath, "" if size == default else f"size={size}", C4) for size in _sizes(relpath)]


RUNS = [
    # pretraining
    Run("pretrain/shakespeare.py", name="shakespeare"),
    Run("pretrain/shakespeare.py", "steps=500"),
    Run("pretrain/shakespeare_char.py", flags=("--config.data.path={repo}/data/shakespeare_char/input.txt",)),
    Run("pretrain/gpt1.py", flags=("--config.data.path={corpus}",)),
    *_size_runs("pretrain/gpt2_124m.py", "gpt2-small"),
    *_size_runs("pretrain/gpt3.py", "gpt3-small"),
    # in-context learning: both arms as documented (3,000 steps, then resumed to 5,000 in the same workdir), and over
    # 1, 2 and 8 train shards (a single-document source split over any number of shards)
    Run("icl/mapping.py", "arm=icl", name="icl/icl", fast=True),
    Run("icl/mapping.py", "arm=icl,steps=5000", workdir="{icl/icl}"),
    Run("icl/mapping.py", "arm=control", name="icl/control"),
    Run("icl/mapping.py", "arm=control,steps=5000", workdir="{icl/control}"),
    *[Run("icl/mapping.py", arm, (f"--config.data.shards={s}",), label=f"shards={s}")
      for arm in ("", "arm=control") for s in (1, 2, 8)],
    # fine-tuning, from the smoke-trained Shakespeare run (or the imported GPT-2 for the IMDB judge)
    Run("finetune/genre.py", label="scratch"),
    Run("finetune/genre.py", "steps=300", (INIT,), name="genre"),
    Run("finetune/genre.py", "lora=8", (INIT,)),
    Run("finetune/genre.py", "steps=150,batch=16,seq_len=64,lr=3e-4", ("--config.finetune.passage_chars=150",),
        label="scratch"),
    Run("finetune/genre_lora.py", flags=(INIT,)),
    Run("finetune/glue.py", "task=sst2", ("--config.finetune.data_dir={tfds}",), label="scratch", fast=True),
    *[Run("finetune/glue.py", f"task={task}", (INIT, "--config.finetune.data_dir={tfds}"))
      for task in ("mnli", "qqp", "copa", "imdb")],
    Run("finetune/imdb.py", "data_dir={tfds}", ("--config.train.init_from={gpt2}",), name="imdb"),
    Run("finetune/instruct.py", flags=(INIT,)),
    Run("finetune/instruct.py", "lora=8", (INIT,)),
    # preference learning on the genre task: the judge is the genre classifier above
    Run("rlhf/genre_rm.py", RL_GENRE, name="genre_rm"),
    Run("rlhf/genre_ppo.py", f"{RL_GENRE},rm={{genre_rm}}"),
    Run("rlhf/genre_ppo.py", f"{RL_GENRE},rm={{genre_rm}},ptx=0.5,kl_target=0"),
    Run("rlhf/genre_dpo.py", f"{RL_GENRE},rm={{genre_rm}}"),
    Run("rlhf/genre_dpo.py", f"{RL_GENRE},rm={{genre_rm}},smoothing=0.1"),
    Run("rlhf/genre_grpo.py", f"{RL_GENRE},rm={{genre_rm}}"),
    Run("rlhf/genre_rloo.py", f"{RL_GENRE},rm={{genre_rm}}"),
    # ... and on IMDB, from the imported GPT-2 with the IMDB classifier as the judge
    Run("rlhf/imdb_sentiment.py", f"stage=reward,{RL_IMDB},label=1,prompts=16,steps=2,lr=1e-5", name="imdb_rm"),
    Run("rlhf/imdb_sentiment.py", f"stage=ppo,{RL_IMDB},rm={{imdb_rm}},kl=0.2,kl_target=6"),
    Run("rlhf/imdb_sentiment.py", f"stage=dpo,{RL_IMDB},rm={{imdb_rm}},beta=0.1"),
    Run("rlhf/imdb_sentiment.py", f"stage=grpo,{RL_IMDB},rm={{imdb_rm}},group=2"),
    # evaluation of the smoke-trained runs
    Run("eval/benchmarks.py", "data={bench}", EVAL, command="eval"),
    Run("eval/genre.py", flags=EVAL, command="eval"),
    Run("eval/genre.py", "limit=300", EVAL, command="eval"),
    Run("eval/icl.py", "runs={icl_runs}", (f"--config.limit={EVAL_LIMIT}",), command="eval"),
    Run("eval/shakespeare.py", flags=EVAL, command="eval"),
    Run("eval/shakespeare.py", "limit=200", EVAL, command="eval"),
    Run("eval/synthetic.py", flags=EVAL, command="eval"),
    Run("eval/synthetic.py", "limit=100", EVAL, command="eval"),
]
BY_NAME = {r.name: r for r in RUNS if r.name}


def _launcher():
    """launch/sweep.py, the sweep launcher (a script beside its helpers, not a package)."""
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import sweep
    finally:
        sys.path.remove(str(ROOT / "launch"))
    return sweep


def _sweep_entries() -> list[tuple[str, int, dict]]:
    """(file, index, overrides) of every entry of every sweep file's get_sweep(), read as launch/sweep.py reads it."""
    sweep = _launcher()
    out = []
    for path in sorted((EXPERIMENTS / "sweeps").glob("*.py")):
        out += [(str(path.relative_to(EXPERIMENTS)), i, e) for i, e in enumerate(sweep.load_sweep(str(path)))]
    return out


SWEEP_ENTRIES = _sweep_entries()
SWEEP_ARG = {0: "steps=300"}  # the first entry also runs with the documented `:steps=N` (the default length)
# Workdirs that sweep entries start from (train.init_from, a tokenizer in one), by the path the sweep file names:
# the documented language model of experiments/sweeps/genre_data_fraction.py is the smoke-trained Shakespeare run.
SWEEP_RUNS = {"runs/genre_lm": "{shakespeare}"}
# Sweeps whose entries differ only in values of the same keys run a sample of them (the rest of each file's entries
# go through the same code with other numbers): the smallest and largest model of the scaling sweep; each way of
# training of the fine-tuning curve, at three of its four fractions.
SWEEP_SAMPLE = {"sweeps/scaling.py": (0, 6), "sweeps/genre_data_fraction.py": (0, 5, 11)}
# What GPTJAX_SMOKE=1 caps (gptjax/configs/smoke.py): an entry's value there may be saved smaller.
SMOKE_CAPS = {"train.steps", "eval.every_steps", "checkpoint.every_steps", "model.num_layers", "model.d_model",
              "model.num_heads"}


# --- making runs --------------------------------------------------------------------------------------------------


class Lab(dict):
    """Workdirs and stand-ins by name, each made once, on first use (`lab[name]`); `lab.make(run)` runs a Run once.
    A run or stand-in that failed is not tried again: what needs it fails with its error."""

    def __init__(self, root: pathlib.Path):
        super().__init__()
        self.root = root
        self.done: dict[str, str] = {}  # run id -> workdir
        self.failed: dict[str, str] = {}  # run id or stand-in name -> why
        self.seconds: dict[str, float] = {}

    def __missing__(self, key):
        if key not in RESOURCES and key not in BY_NAME:
            raise KeyError(f"no run or stand-in named {key!r}")
        if key in self.failed:
            raise AssertionError(f"{key} failed earlier: {self.failed[key]}")
        try:
            value = RESOURCES[key](self) if key in RESOURCES else self.make(BY_NAME[key])
        except AssertionError as err:
            self.failed[key] = str(err)
            raise
        self[key] = value
        return value

    def fill(self, text: str) -> str:
        return text.format_map(self)

    def gptjax(self, what: str, *args) -> None:
        """`gptjax ARGS` in this process; AssertionError with the end of its stderr unless it exits 0."""
        import jax

        start = time.time()
        status, _, err = gptjax_captured(*args)
        self.seconds[what] = time.time() - start
        jax.clear_caches()  # a run's programs are not called again: keep the process small over 70 runs
        assert status == 0, f"`gptjax {' '.join(args)}` exited {status}:\n{err[-5000:]}"

    def make(self, run: Run) -> str:
        """Runs `run` (once) and returns its workdir ("" for an evaluation)."""
        if run.id in self.failed:
            raise AssertionError(f"{run.id} failed earlier: {self.failed[run.id]}")
        if run.id in self.done:
            return self.done[run.id]
        try:
            try:
                workdir = self.fill(run.workdir) if run.workdir else "" if run.command == "eval" else str(
                    self.root / "runs" / (run.name or re.sub(r"[^A-Za-z0-9_.=-]+", "_", run.id)))
                config = f"--config={EXPERIMENTS / run.file}" + (f":{self.fill(run.arg)}" if run.arg else "")
                flags = [self.fill(f) for f in run.flags]
            except AssertionError as err:
                raise AssertionError(f"it needs a run or stand-in that failed: {err}") from None
            self.gptjax(run.id, run.command, config, *([f"--workdir={workdir}"] if workdir else []), *flags)
        except AssertionError as err:
            self.failed[run.id] = str(err)
            raise AssertionError(f"{run.id}: {err}") from None
        self.done[run.id] = workdir
        return workdir


def _hf(lab) -> str:
    texts = [r["text"] for r in standins.DATASETS["c4/en:3.0.1"].splits["train"]]
    texts += [r["text"] for r in standins.DATASETS["imdb_reviews"].splits["train"]]
    plays = (ROOT / "data" / "shakespeare_char" / "input.txt").read_text(encoding="utf-8")
    return standins.tiny_gpt2(lab.root / "hf" / "gpt2", texts + [plays[:100_000]])


def _gpt2(lab) -> str:
    """`gptjax import-hf` of the small transformers GPT-2: the imdb experiments' runs/gpt2."""
    workdir = str(lab.root / "runs" / "gpt2")
    lab.gptjax("import-hf", "import-hf", f"--hf_dir={lab['hf']}", f"--workdir={workdir}")
    return workdir


def _corpus(lab) -> str:
    path = lab.root / "corpus.txt"
    path.write_text((ROOT / "data" / "shakespeare_char" / "input.txt").read_text(encoding="utf-8")[:200_000],
                    encoding="utf-8")
    return str(path)


# The stand-in of each file experiments/eval/benchmarks.py names, from tests/data/evals (by benchmark and key).
BENCH_SOURCES = {"path": "{name}.{ext}", "demos": "{name}.{ext}", "labels": "{name}-labels.lst"}
BENCH_ALIASES = {"arc_challenge": "arc_easy"}  # ARC-Challenge's files have ARC-Easy's format
BENCH_COPIES = 3  # each file's records three times over: a 5-shot prompt needs 5 demonstrations besides the example


def _copies(source: pathlib.Path, dest: pathlib.Path, n: int) -> None:
    """`source`'s records n times over, in its own format (jsonl or .lst lines, csv rows under one header, the json
    {"Data": [...]} list)."""
    text = source.read_text(encoding="utf-8")
    if source.suffix == ".json":
        data = json.loads(text)
        data["Data"] = data["Data"] * n
        dest.write_text(json.dumps(data), encoding="utf-8")
        return
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[:1] if source.suffix == ".csv" else []
    dest.write_text("\n".join(header + lines[len(header):] * n) + "\n", encoding="utf-8")


def _bench(lab) -> str:
    """A directory holding, under the names benchmarks.py expects, the small release-format files of
    tests/data/evals (their records repeated: BENCH_COPIES)."""
    d = lab.root / "benchmarks"
    d.mkdir()
    for name, spec in load("eval/benchmarks.py").FILES.items():
        for item in spec.split(","):
            key, template = item.split("=", 1)
            filename = template.format(d="").lstrip("/")
            ext = filename.rsplit(".", 1)[-1]
            source = ROOT / "tests" / "data" / "evals" / BENCH_SOURCES[key].format(
                name=BENCH_ALIASES.get(name, name), ext=ext)
            assert source.is_file(), f"benchmarks.py's {name} {key}={filename}: no stand-in {source}"
            _copies(source, d / filename, BENCH_COPIES)
    return str(d)


def _tfds(lab) -> str:
    """The stand-in TFDS datasets, in a process that has imported TFDS's text builders (glue, super_glue, c4, ...),
    as gptjax itself does after looking up a name it does not know and as any earlier `tfds.builder` call of them
    does: the runs read the prepared copies the same way whichever test ran before."""
    import tensorflow_datasets.text  # noqa: F401

    return standins.prepare(lab.root / "tfds")


def _icl_runs(lab) -> str:
    """The directory holding both arms' workdirs (icl/, control/), as experiments/eval/icl.py's `runs` reads."""
    assert lab["icl/icl"] and lab["icl/control"]
    return str(lab.root / "runs" / "icl")


RESOURCES = {
    "repo": lambda lab: str(ROOT),
    "tfds": _tfds,
    "hf": _hf,
    "gpt2": _gpt2,
    "corpus": _corpus,
    "bench": _bench,
    "icl_runs": _icl_runs,
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The Lab, with GPTJAX_SMOKE=1 (the session's persistent compilation cache, tests/conftest.py, serves runs of
    different files that compile the same programs: the size presets of one recipe, the data shards of another)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTJAX_SMOKE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield Lab(tmp_path_factory.mktemp("experiments"))


# --- the runs -----------------------------------------------------------------------------------------------------


def _check_training_run(workdir: str):
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["train"]["steps"] == 2, saved["train"]
    steps = {json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()}
    assert 2 in steps, f"{workdir}: no metrics at step 2 ({sorted(steps)})"
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))


def _check_eval_run(run: Run, lab: Lab):
    from gptjax.evals import tasks

    config = load(run.file).get_config(*([lab.fill(run.arg)] if run.arg else []))
    workdirs = list(config.workdirs) or [lab["shakespeare"]]
    for workdir in workdirs:
        results = json.load(open(os.path.join(workdir, "eval", "results.json")))
        assert results["settings"]["limit"] == EVAL_LIMIT
        assert set(results["tasks"]) == {tasks.get(spec).name for spec in config.tasks}, results["tasks"].keys()


@pytest.mark.parametrize("run", [pytest.param(r, id=r.id, marks=() if r.fast else pytest.mark.slow) for r in RUNS])
def test_experiment_runs(run, lab):
    workdir = lab.make(run)
    print(f"{run.id}: {lab.seconds.get(run.id, 0):.1f} s")
    if run.command == "eval":
        _check_eval_run(run, lab)
    else:
        _check_training_run(workdir)


def _made_here(value, lab):
    """A sweep entry's value, with a path in or under a workdir of SWEEP_RUNS moved to the run made here."""
    for path, name in SWEEP_RUNS.items():
        if isinstance(value, str) and (value == path or value.startswith(path + "/")):
            return lab.fill(name) + value[len(path):]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("file,index,overrides", [pytest.param(*e, id=f"{e[0]}[{e[1]}]") for e in SWEEP_ENTRIES
                                                  if e[1] in SWEEP_SAMPLE.get(e[0], (e[1],))])
def test_sweep_entry_runs(file, index, overrides, lab):
    """Each entry as launch/sweep.py runs it (its train_command), in this process."""
    sweep = _launcher()
    config = str(EXPERIMENTS / file) + (f":{SWEEP_ARG[index]}" if index in SWEEP_ARG else "")
    workdir = str(lab.root / "sweeps" / pathlib.Path(file).stem / sweep.run_name(overrides))
    given = {k: _made_here(v, lab) for k, v in overrides.items()}
    command = sweep.train_command(config, workdir, given, [])
    assert command[:2] == ["gptjax", "train"]
    lab.gptjax(f"{file}[{index}]", *command[1:])
    print(f"{file}[{index}] {sweep.run_name(overrides)}: {lab.seconds[f'{file}[{index}]']:.1f} s")
    _check_training_run(workdir)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    for key, value in given.items():
        section, field = key.split(".")
        capped = key in SMOKE_CAPS and isinstance(value, int) and saved[section][field] <= value
        assert saved[section][field] == value or capped, (key, saved[section][field])


# --- the stand-ins are the real thing's layout --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(standins.DATASETS))
def test_standin_has_the_real_datasets_features(name):
    """Each stand-in declares what TFDS's own builder declares for the dataset (where TFDS can build its
    features without TensorFlow: not super_glue's, nor c4's 3.0.1, which only a prepared copy describes)."""
    import tempfile

    real = standins.real_features(name)
    spec = standins.DATASETS[name]
    with tempfile.TemporaryDirectory() as d:
        mine = standins.builder(spec, d).info.features
    if real is not None:
        assert repr(mine) == repr(real)
    assert set(mine.keys()) == set(next(iter(spec.splits.values()))[0])


# --- the guard: nothing documented is left out -------------------------------------------------------------------

FILE_ARGS = re.compile(r"((?:experiments/)?[A-Za-z0-9_/]*[A-Za-z0-9_]+\.py)(\[?:[^\s`'\"]*)?")
KEY_VALUE = re.compile(r"(?<![\w.\-/=])([a-z][a-z0-9_]*)=([^\s,`'\")\]]+)")


def _placeholder(value: str) -> bool:
    """DIR, N, X, path/to/... : a value the document leaves to the user."""
    return bool(re.fullmatch(r"[A-Z][A-Z_]*", value)) or "/" in value or value.startswith("<")


def _expand(args: str) -> list[dict]:
    """`a=1|2,b=x` -> [{a: 1, b: x}, {a: 2, b: x}] (markdown tables escape | as \\|)."""
    pairs = [item.split("=", 1) for item in filter(None, args.replace("\\|", "|").split(",")) if "=" in item]
    keys = [k for k, _ in pairs]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v.split("|") for _, v in pairs))]


def _docstring(path: pathlib.Path) -> str:
    import ast

    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def documented() -> list[tuple[str, str, dict]]:
    """(where, experiment file relative to experiments/, {key: value}) for every `experiments/...py[:ARGS]` in the
    documents and the experiments' docstrings (a bare `NAME.py:ARGS` in a docstring is a file beside it), and every
    `key=value` in an experiment's docstring (that file's argument)."""
    out = []

    def scan(text, where, here=None):
        text = text.replace(".py's ", ".py:")  # "glue.py's task=imdb" is glue.py's argument
        rest = text
        for m in FILE_ARGS.finditer(text):
            name, args = m.group(1), (m.group(2) or "").strip("[]").lstrip(":").rstrip(".;)")
            if name.startswith("experiments/"):
                rel = name.removeprefix("experiments/")
            elif here is not None and "/" not in name and (here.parent / name).is_file():
                rel = str((here.parent / name).relative_to(EXPERIMENTS))
            else:
                continue
            if not (EXPERIMENTS / rel).is_file():
                out.append((where, rel, {"<missing file>": ""}))
                continue
            for pairs in _expand(args) or [{}]:
                out.append((where, rel, pairs))
            rest = rest.replace(m.group(0), " ")
        if here is not None:  # the docstring's own key=value arguments
            for key, value in KEY_VALUE.findall(rest):
                for v in value.replace("\\|", "|").rstrip(".;").split("|"):
                    out.append((where, str(here.relative_to(EXPERIMENTS)), {key: v}))

    for doc in DOCUMENTS:
        scan((ROOT / doc).read_text(encoding="utf-8"), doc)
    for path in sorted(EXPERIMENTS.rglob("*.py")):
        scan(_docstring(path), f"{path.relative_to(ROOT)} docstring", here=path)
    return out


def _runs_of(rel: str) -> list[tuple[dict, dict]]:
    """(argument, all pairs) of every run this module makes of experiments/`rel`: the argument's concrete
    key=value pairs (a `{workdir}` value is not one), and all its pairs with, for a sweep entry, the overrides named
    as its run_name names them (norm=post, ...)."""
    out = [r.pairs() for r in RUNS if r.file == rel]
    out = [({k: v for k, v in p.items() if "{" not in v}, p) for p in out]
    for file, index, overrides in SWEEP_ENTRIES:
        if file == rel:
            arg = dict(item.split("=", 1) for item in filter(None, SWEEP_ARG.get(index, "").split(",")))
            out.append((arg, {**arg, **{k.split(".")[-1]: str(v) for k, v in overrides.items()}}))
    return out


def _config_of(rel: str, pairs: dict) -> dict:
    import inspect

    module = load(rel)
    if not inspect.signature(module.get_config).parameters:
        assert not pairs, f"{rel} takes no argument"
        return module.get_config().to_dict()
    return module.get_config(",".join(f"{k}={v}" for k, v in pairs.items())).to_dict()


def _covered(rel: str, want: dict) -> bool:
    """Some run of `rel` sets every concrete value of `want` (each placeholder's key is set by some run), or runs
    the config those values give (a documented default: `limit=0` is what no argument gives)."""
    runs = _runs_of(rel)
    if not runs or not set(want) <= {k for _, pairs in runs for k in pairs}:
        return False
    concrete = {k: v for k, v in want.items() if not _placeholder(v)}
    if concrete and any(concrete.items() <= pairs.items() for _, pairs in runs):
        return True
    try:
        wanted = _config_of(rel, concrete)
    except Exception:  # noqa: BLE001  not the file's argument (a sweep entry's override), and no run sets it
        return False
    return any(_config_of(rel, arg) == wanted for arg, _ in runs)


def test_every_documented_argument_is_run():
    docs = documented()
    assert any(rel == "icl/mapping.py" and want == {"arm": "control"} for _, rel, want in docs)  # the reader works
    missing = sorted({f"{where}: experiments/{rel}:{','.join(f'{k}={v}' for k, v in want.items())}"
                      for where, rel, want in docs if not _covered(rel, want)})
    assert not missing, "documented but never run by tests/test_experiments.py (add a Run):\n" + "\n".join(missing)


def test_every_experiment_file_is_run():
    files = {str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.py")
             if not p.name.startswith("_")}  # _name.py: settings that experiment files share (configs.sibling)
    run = {r.file for r in RUNS} | {f for f, _, _ in SWEEP_ENTRIES}
    assert files - run == set(), f"experiment files no test runs: {sorted(files - run)}"
    assert run - files == set(), f"runs of files that are gone: {sorted(run - files)}"
    for rel in ("pretrain/gpt3.py", "pretrain/gpt2_124m.py"):  # every size preset the recipe accepts
        sizes = {r.pairs().get("size", "") for r in RUNS if r.file == rel}
        default = load(rel).get_config().model.preset
        assert {s or default for s in sizes} == set(_sizes(rel)), rel
