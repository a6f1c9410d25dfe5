"""Helpers the test files share: the `gptjax` command in this process or as a subprocess, and metrics.jsonl."""

import json
import os
import shlex
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gptjax_in_process(capsys, *args):
    """(exit status, stdout, stderr) of `gptjax ARGS` run in this process (main.main uses its own FlagValues)."""
    from gptjax import main

    status = main.main(["gptjax", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def one_line_error(capsys, message, *args):
    """`gptjax ARGS` fails with exactly one `gptjax: error:` line that contains `message`."""
    status, _, err = gptjax_in_process(capsys, *args)
    assert status == 2 and err.startswith("gptjax: error: ") and err.count("\n") == 1, err
    assert message in err, err
    return err


def gptjax_subprocess(*args, **kwargs):
    """`gptjax ARGS` as a child process (for SIGKILL/SIGTERM tests), stdout and stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "gptjax.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)


def communicate(p: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """`p.communicate(timeout=timeout)`; a child still running at the timeout fails the test with where it is: its
    Python and native thread stacks (py-spy, from the test extra) and the tails of its output, then it is killed.
    A hang in CI then says where it hung."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import pytest

        spy = shutil.which("py-spy")
        stacks = "py-spy is not installed"
        if spy:
            try:
                r = subprocess.run([spy, "dump", "--native", "--pid", str(p.pid)], capture_output=True, text=True,
                                   timeout=120)
                stacks = r.stdout + r.stderr
            except subprocess.TimeoutExpired:
                stacks = "py-spy dump did not finish in 120 s"
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"{shlex.join(map(str, p.args))}\ndid not finish in {timeout:.0f} s"
                    f"\n--- stdout (tail)\n{out[-3000:]}\n--- stderr (tail)\n{err[-3000:]}"
                    f"\n--- its threads (py-spy dump --native)\n{stacks[-30000:]}",
                    pytrace=False)


def metrics_by_step(workdir, key="train_loss"):
    """The last value of `key` logged for each step (a resumed run logs its steps again)."""
    out = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        row = json.loads(line)
        if key in row:
            out[row["step"]] = row[key]
    return out


def gptjax_captured(*args):
    """(exit status, stdout, stderr) of `gptjax ARGS` run in this process, its output captured here rather than by
    capsys: for module-scoped fixtures, which cannot take capsys (tests/test_experiments.py)."""
    import contextlib
    import io

    from gptjax import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main.main(["gptjax", *args])
    return status, out.getvalue(), err.getvalue()


def lm_trainer(config, mesh):
    """The pretraining Trainer of `config` on `mesh`: what `gptjax train` builds for a config without sections."""
    from gptjax.runs import pretrain
    from gptjax.trainer import Trainer

    return Trainer(config, mesh, *pretrain.planned(config))
