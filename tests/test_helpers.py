"""The test helpers' own behaviour: a child process that hangs fails its test with where it hung."""

import subprocess
import sys

import pytest

from helpers import communicate


def test_a_hung_child_fails_with_its_stacks_and_output():
    code = "import sys, time\nprint('started', flush=True)\nprint('warming', file=sys.stderr, flush=True)\ntime.sleep(300)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with pytest.raises(pytest.fail.Exception) as failure:
        communicate(p, 3)
    message = str(failure.value)
    assert "did not finish in 3 s" in message
    assert "started" in message and "warming" in message
    assert "<module>" in message  # py-spy's Python frame of the sleeping child
    assert p.returncode is not None  # killed, not left running


def test_a_child_that_finishes_gives_its_output():
    p = subprocess.Popen([sys.executable, "-c", "print('done')"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert communicate(p, 60) == ("done\n", "")
