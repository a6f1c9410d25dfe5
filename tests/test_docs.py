"""The docs tier (`python -m pytest tests -m docs`): every shell command of README.md and docs/*.md, run as a user
types it, in the order the documents give it, so that later commands find the workdirs earlier ones made.

How a command is run (tests/docs_commands.py reads the documents):
- In one scratch directory for the whole tier, which holds links to the repository's experiments/, launch/,
  benchmarks/, data/ and gptjax/, and stand-ins for the files the documents assume a user has: `my.txt` (text),
  `scene.txt` (a scene) and `path/to/gpt2` (a small random transformers GPT-2 with its byte-level BPE).
- With GPTJAX_SMOKE=1 (gptjax/configs/smoke.py: two steps of a small model, a few eval examples and sampled tokens;
  the benchmarks shrink themselves the same way), a shared jax compilation cache, XLA's cheap-compile flags, and no
  JAX_PLATFORMS, as on a user's machine (so libtpu, which the test extra installs, behaves as it does for them).
- `pip install ...` of this project is checked, not run: every extra it names must be one the installed gptjax
  declares (CI has installed the project from this setup.py).
- A command tagged `[error here]` must stop with exactly one `gptjax: error:` line as its last line of stderr; it
  runs unshrunk (the error comes before any long work, and a smaller model could fit where the real one does not);
  `[dry run here]` runs the launcher with `--dry_run`; `[not run here: ...]` is allowed only for other programs that
  need the cloud (gcloud, gsutil, tfds, tensorboard); the README's test command is not run here (it is this
  suite) but must be the one .ci/run runs.
- No command may print a traceback or any of NOISE on stderr.
Measured numbers in the documents are not asserted (they belong to benchmarks/); their commands run.
"""

import importlib.metadata
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

import docs_commands
from docs_commands import ROOT, Command

COMMANDS = docs_commands.all_commands()
# What a user reads as trouble. Each pattern was printed by a documented command once.
NOISE = [
    "Traceback (most recent call last)",
    "E0000",  # libtpu's INVALID_ARGUMENT on a machine without TPUs
    "TPU_WORKER_HOSTNAMES",
    "Involuntary full rematerialization",  # XLA's SPMD partitioner replicating a table
    "missing from font",  # matplotlib drawing control characters
    "higher_is_better",  # lm-eval on tasks without their metric settings
]
LINKS = ("experiments", "launch", "benchmarks", "data", "gptjax")
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
TIMEOUT = 600


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The scratch directory the commands run in, with its stand-in files, and their environment."""
    root = tmp_path_factory.mktemp("docs")
    for name in LINKS:
        (root / name).symlink_to(ROOT / name)
    plays = (ROOT / "data" / "shakespeare_char" / "input.txt").read_text(encoding="utf-8")
    (root / "my.txt").write_text(plays[:300_000], encoding="utf-8")
    (root / "scene.txt").write_text(plays[:600], encoding="utf-8")
    _tiny_gpt2(root / "path" / "to" / "gpt2", plays[:200_000])
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS", "PYTEST_CURRENT_TEST",
                                                             "TF_CPP_MIN_LOG_LEVEL")}  # XLA's warnings are part of what a user sees
    env.update(GPTJAX_SMOKE="1", XLA_FLAGS=FAST_COMPILE, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TFDS_DATA_DIR=str(tmp_path_factory.mktemp("tensorflow_datasets")),
               PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}")
    return root, env


def _tiny_gpt2(path: pathlib.Path, text: str):
    """A random transformers GPT-2 (2 x 64) and a byte-level BPE of 400 pieces, saved as a hub directory is."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    path.mkdir(parents=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([text], vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(0)
    eos = tok.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                     vocab_size=tok.get_vocab_size(), bos_token_id=eos, eos_token_id=eos)
    transformers.GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)


def _check_pip(command: Command) -> str:
    """`pip install` of this project: the extras it names must be declared by the installed gptjax. Returns the
    rest of the command line (after `&&`), which runs."""
    extras = set(importlib.metadata.metadata("gptjax").get_all("Provides-Extra") or ())
    parts = [p.strip() for p in command.text.split("&&")]
    rest = []
    for part in parts:
        words = shlex.split(part)
        if words[:2] != ["pip", "install"]:
            rest.append(part)
            continue
        for spec in words[2:]:
            if spec.startswith("-") and spec != "-e":
                raise AssertionError(f"{command.id}: unexpected pip option {spec}")
            m = re.fullmatch(r"\.(?:\[([a-z,]+)\])?", spec)
            if spec == "-e":
                continue
            assert m, f"{command.id}: pip installs {spec!r}, not this project"
            missing = set(filter(None, (m.group(1) or "").split(","))) - extras
            assert not missing, f"{command.id}: gptjax declares no extra {missing} (it has {sorted(extras)})"
    return " && ".join(rest)


def _run(text: str, command: Command, workspace) -> subprocess.CompletedProcess:
    root, env = workspace
    if command.mode == "error":
        env = {k: v for k, v in env.items() if k != "GPTJAX_SMOKE"}
    script = "\n".join(command.prelude + (text,))
    start = time.time()
    out = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    print(f"{command.id}: {time.time() - start:.1f} s, exit {out.returncode}: {text[:120]}")
    return out


def _assert_quiet(command: Command, out):
    for pattern in NOISE:
        assert pattern not in out.stderr, f"{command.id} printed {pattern!r}:\n{out.stderr[-4000:]}"


def test_the_documents_have_commands():
    """The extractor finds the documents' commands (a broken reader would pass every test below vacuously)."""
    assert len(COMMANDS) > 40
    assert any(c.text.startswith("pip install -e . && gptjax train") for c in COMMANDS)
    assert {c.mode for c in COMMANDS} == {"run", "error", "dry_run", "not_run", "suite"}


def test_every_document_is_read():
    assert sorted(docs_commands.DOCUMENTS) == sorted(["README.md"] + [f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")])


def test_output_blocks_hold_no_commands():
    """A command must sit in a ```bash block to run: no other block may hold a line that looks like one."""
    looks_like = re.compile(r"^\$?\s*(gptjax (train|sample|eval|inspect|plan|import-hf)\b(?!:)|python3? |pip install |"
                            r"lm_eval |launch/|bash )")
    for doc in docs_commands.DOCUMENTS:
        for info, start, body in docs_commands.blocks(doc):
            if info == "bash":
                continue
            for n, line in enumerate(body, start):
                assert not looks_like.match(line), f"{doc}:{n}: a command in a ```{info or 'plain'} block: {line}"


def test_every_unrun_command_says_why_and_may():
    for c in COMMANDS:
        if c.mode == "not_run":
            assert docs_commands.not_run_ok(c), f"{c.id}: [not run here] on a command the tests can run: {c.text}"
        if c.mode == "dry_run":
            assert any(p.startswith(("python launch/", "launch/")) for p in docs_commands.programs(c.text)), c.id


def test_the_readme_test_command_is_what_ci_runs():
    setup = [c for c in COMMANDS if c.mode == "suite" and c.doc == "README.md" and "pip install" in c.text]
    assert [c.text for c in setup] == ['pip install -e ".[test]" && python -m pytest tests -q -n auto']
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"python3? -m pip install -q -e \"\.\[test\]\"", ci)
    assert re.search(r"python3? -m pytest tests -q -n auto", ci)


@pytest.mark.docs
@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command(command: Command, workspace):
    if command.mode in ("not_run", "suite"):
        return  # checked by test_every_unrun_command_says_why_and_may and test_the_readme_test_command_is_what_ci_runs
    text = _check_pip(command) if "pip install" in command.text else command.text
    if not text:
        return
    if command.mode == "dry_run":
        text = docs_commands.with_dry_run(text)
    out = _run(text, command, workspace)
    _assert_quiet(command, out)
    if command.mode == "error":
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("gptjax: error: ")]
        assert out.returncode != 0 and len(errors) == 1 and lines[-1] == errors[0], (
            f"{command.id} should stop with one `gptjax: error:` line; exit {out.returncode}:\n{out.stderr[-4000:]}")
    else:
        assert out.returncode == 0, f"{command.id} failed (exit {out.returncode}):\n{out.stderr[-6000:]}"
