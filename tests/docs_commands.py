"""The shell commands of README.md and docs/*.md, as a user would type them, for the docs tier (tests/test_docs.py).

A command is a line (with its `\\` continuations, and lines inside an open quote) of a ```bash block. Lines of
other blocks are output, never run. A trailing comment may carry one tag that says how the tests treat a command
that cannot run on a CPU machine without network:

    [error here]            it must stop with one `gptjax: error:` line (a bucket, a pod, data not prepared)
    [dry run here]          a launcher: run with `--dry_run`, which prints every command it would run
    [not run here: REASON]  another program that needs the cloud or network (gcloud, gsutil, tfds, tensorboard),
                            or the test suite itself; checked by `not_run_ok`, never for a gptjax command

Every other command runs, in the order of the documents, shrunk by GPTJAX_SMOKE=1 (gptjax/configs/smoke.py).
"""

import dataclasses
import pathlib
import re
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The documents in the order their commands run: the README first (later pages use its workdirs).
DOCUMENTS = ["README.md", "docs/testing.md", "docs/training.md", "docs/sampling.md", "docs/kernels.md",
             "docs/cloud.md", "docs/evals.md", "docs/finetune.md", "docs/rlhf.md", "docs/inspect.md",
             "docs/ablations.md", "docs/plan.md", "docs/pods.md", "docs/architecture.md"]
TAG = re.compile(r"\[(error here|dry run here|not run here: [^\]]+)\]")
# Programs that need a cloud account, the network or a service, and are never gptjax.
EXTERNAL = {"gcloud", "gsutil", "tfds", "tensorboard", "xpk", "sbatch", "kubectl"}
SUITE = "python -m pytest tests"  # the test suite itself: not run by its own docs tier


@dataclasses.dataclass(frozen=True)
class Command:
    doc: str
    line: int  # 1-based line of the command's first line
    text: str  # the command, continuations joined, comment removed
    mode: str  # run | error | dry_run | not_run | suite (the test suite itself, which .ci/run runs)
    reason: str = ""
    prelude: tuple = ()  # variable assignments earlier in the same block (ARGS="..."), run before it

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of a shell line: the comment starts at a `#` outside quotes that follows a blank."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def _complete(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def blocks(doc: str) -> list[tuple[str, int, list[str]]]:
    """(info string, first line number, lines) of each fenced block of `doc`."""
    out, info, start, body = [], None, 0, []
    for n, line in enumerate((ROOT / doc).read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if info is None:
                info, start, body = line[3:].strip(), n + 1, []
            else:
                out.append((info, start, body))
                info = None
        elif info is not None:
            body.append(line)
    return out


def commands(doc: str) -> list[Command]:
    out = []
    for info, start, body in blocks(doc):
        if info != "bash":
            continue
        prelude, pending, first, comments = [], "", 0, []
        for n, line in enumerate(body, start):
            code, comment = _split_comment(line) if not pending or _complete(pending) else (line, "")
            if not pending:
                first = n
            if comment:
                comments.append(comment)
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            pending += code
            if not _complete(pending):
                pending += "\n"
                continue
            text, pending = " ".join(pending.split(" ")).strip(), ""
            tags = [t for c in comments for t in TAG.findall(c)]
            comments = []
            if not text:
                continue
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=(\"[^\"]*\"|'[^']*'|\S*)", text):
                prelude.append(text)  # ARGS="..." for the commands after it
                continue
            mode, reason = ("suite", "") if SUITE in text else ("run", "")
            if tags:
                tag = tags[-1]
                mode = {"error here": "error", "dry run here": "dry_run"}.get(tag, "not_run")
                reason = tag.removeprefix("not run here: ") if mode == "not_run" else ""
            out.append(Command(doc, first, text, mode, reason, tuple(prelude)))
    return out


def all_commands() -> list[Command]:
    return [c for doc in DOCUMENTS for c in commands(doc)]


def programs(text: str) -> list[str]:
    """The programs a command line runs (each part of a && chain), past leading VAR=value assignments."""
    out = []
    for part in re.split(r"&&|\|\||;", text):
        words = [w for w in shlex.split(part) if w]
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            out.append(words[0] if words[0] not in ("python", "python3", "bash") or len(words) < 2
                       else f"{words[0]} {words[1] if words[1] != '-m' else '-m ' + words[2]}")
    return out


def not_run_ok(command: Command) -> str | None:
    """Why a command tagged [not run here] may stay unrun, or None when it may not: it must run a program of
    EXTERNAL (or install one for it), or be the test suite that .ci/run runs."""
    progs = programs(command.text)
    if "lm_eval" in progs and "--include_path" not in command.text:
        return "lm-eval's own tasks download their data from the Hugging Face hub"
    if any(p in EXTERNAL for p in progs):
        return f"needs {', '.join(p for p in progs if p in EXTERNAL)}"
    return None


def with_dry_run(text: str) -> str:
    """The launcher command with --dry_run after the script (before any `--` that starts the worker command)."""
    words = shlex.split(text)
    if "--dry_run" in words:
        return text
    for i, w in enumerate(words):
        if w.endswith(".py") or w.endswith(".sh"):
            words.insert(i + 1, "--dry_run")
            return shlex.join(words)
    raise ValueError(f"no launcher script in {text!r}")
