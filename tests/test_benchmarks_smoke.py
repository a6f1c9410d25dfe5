"""The benchmark commands, run shrunk: under GPTJAX_SMOKE=1 every script in benchmarks/ runs its comparison on the
smoke model (both sides, one round of a couple of steps; benchmarks/common.py), so a benchmark that no longer runs
is found here, not when someone spends its real minutes. Each command must exit 0 and print the smoke run's label
and its table; the numbers are not checked (a smoke run's mean nothing).

The commands are the ones benchmarks/README.md, README.md and docs/ give, run from the repository root with one CPU
device (conftest's eight virtual devices would split the benchmarks' batches) and the fast tier's cheap-compile
flags, as the docs tier runs them.
"""

import os
import pathlib
import subprocess
import sys
import time

import jax
import pytest

from conftest import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]
LABEL = "# smoke run (GPTJAX_SMOKE=1): "
# (the command as documented, the first line of the table it prints)
COMMANDS = [
    ("python benchmarks/train_throughput.py",
     "| variant | XLA flags | tokens/s (median) | min..max | ratio vs peer | MFU |"),
    ("python benchmarks/step_breakdown.py", "| part | PyTorch (transformers GPT-2) | gptjax |"),
    ("python benchmarks/step_breakdown.py --profile", "| kind of op | ms per step | share | ops per step |"),
    ("python benchmarks/model_ablation.py",
     "| variant (attention, norm, loss) | median step ms | min step ms | tokens/s | speed-up |"),
    ("python benchmarks/generate_throughput.py",
     "| shape | batch | variant | new tokens/s (median of 1) | min..max | ratio vs transformers |"),
    ("python benchmarks/generate_throughput.py --positions --rounds=1",
     "| prompt tokens | positions decoded | transformers fp32 ms/token | gptjax fp32 ms/token |"),
    ("python benchmarks/eval_throughput.py",
     "| shape | backend | requests/s (median of 1) | min..max | ratio vs hf | accuracy |"),
    ("JAX_PLATFORMS=cpu python benchmarks/rollout_throughput.py --torch_threads=1",
     "| setting | gptjax tokens/s | min..max | transformers tokens/s | min..max |"),
    ("python benchmarks/plan_table.py",
     "| config | topology (chips) | mesh (data, fsdp, tensor) | state per chip | total per chip / HBM |"),
    ("bash benchmarks/shakespeare_char.sh", "final val loss "),
]
GPU_COMMAND = "python benchmarks/gpu_train.py --variants=gptjax:cudnn,gptjax:reference"
GPU_TABLE = "| variant | software | tokens/s (median) | min..max | vs nanoGPT | MFU |"


def _run(command: str, tmp_path) -> subprocess.CompletedProcess:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env = dict(os.environ, GPTJAX_SMOKE="1", XLA_FLAGS=" ".join(flags + [f for f in FAST_COMPILE if f not in flags]),
               TMPDIR=str(tmp_path), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               PATH=f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}")  # `gptjax` for the .sh
    start = time.time()
    out = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"{command}: {time.time() - start:.1f} s, exit {out.returncode}")
    assert "Traceback (most recent call last)" not in out.stderr, out.stderr[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command,table", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_benchmark_smoke_run(command, table, tmp_path):
    out = _run(command, tmp_path)
    assert out.returncode == 0, f"{command} failed (exit {out.returncode}):\n{out.stderr[-6000:]}"
    lines = out.stdout.splitlines()
    assert any(ln.startswith(LABEL) and ln.endswith("its numbers are meaningless") for ln in lines), out.stdout
    assert any(ln.startswith(table) for ln in lines), f"{command} printed no table:\n{out.stdout[-4000:]}"


@pytest.mark.slow
def test_gpu_benchmark_needs_a_gpu(tmp_path):
    """gpu_train.py compares CUDA programs: on a GPU it runs shrunk like the others; elsewhere it stops at once with
    one `gptjax: error:` line that says a GPU is needed."""
    out = _run(GPU_COMMAND, tmp_path)
    if jax.default_backend() == "gpu":  # the subprocess sees the platforms this one does (JAX_PLATFORMS)
        assert out.returncode == 0, out.stderr[-6000:]
        assert LABEL in out.stdout and GPU_TABLE in out.stdout, out.stdout
        return
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode != 0 and lines and lines[-1].startswith("gptjax: error: "), out.stderr[-4000:]
    assert len(lines) == 1 and "needs an NVIDIA GPU" in lines[0], out.stderr[-4000:]
    assert out.stdout == ""
