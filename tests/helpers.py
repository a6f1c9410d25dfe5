"""Helpers the test files share: the `gptjax` command in this process or as a subprocess, and metrics.jsonl."""

import json
import os
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
