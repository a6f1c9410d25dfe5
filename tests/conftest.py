"""Test setup: eight virtual CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f
) + " --xla_force_host_platform_device_count=8"
# gptjax/__init__.py lengthens XLA:CPU's collective timeout in every process that imports gptjax.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests run on the CPU. With libtpu installed (the test extra has it, for `gptjax plan`), jax would otherwise
# probe for a TPU in this process and in every subprocess, and libtpu's warnings would fill their stderr.
# TPU topologies for ahead-of-time compiles do not need the TPU platform initialised. On a GPU machine,
# GPTJAX_TEST_PLATFORMS=cuda,cpu runs tests/test_gpu.py on the GPU (the rest of the suite assumes the CPU).
os.environ["JAX_PLATFORMS"] = os.environ.get("GPTJAX_TEST_PLATFORMS", "cpu")
# One persistent compilation cache for the session, its subprocesses (each `gptjax` command a test runs compiles
# much the same smoke-sized programs) and pytest-xdist's workers, which start after this module is read. A cache
# hit skips XLA's compile, never the tracing or the run, so every program still runs as the user's would.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptjax-tests-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import pytest  # noqa: E402

# XLA:CPU flags that make compiling about 4x cheaper and running compiled code 2-3x slower: no LLVM optimisation,
# and fusions emitted by the elemental emitter instead of the MLIR fusion emitters. The fast tier compiles hundreds
# of tiny programs and runs each a few times, so it takes them; the full run keeps XLA's defaults, because its
# end-to-end tests train for hundreds of steps. No test compares against numbers taken with other flags.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def pytest_configure(config):
    """`-m "not slow"` (the fast tier) compiles with FAST_COMPILE; set before any test starts a jax backend (the
    flags are read once per process, and subprocesses inherit them)."""
    if "not slow" in (config.option.markexpr or "") and os.environ["JAX_PLATFORMS"] == "cpu":
        flags = os.environ["XLA_FLAGS"].split()
        os.environ["XLA_FLAGS"] = " ".join(flags + [f for f in FAST_COMPILE if f not in flags])


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """A small real-text corpus: the first 200 kB of Shakespeare's plays from the embedded source."""
    from gptjax import data

    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    text = "\n\n".join(data.shakespeare_plays()[name] for name in sorted(data.shakespeare_plays())[:3])
    path.write_text(text[:200_000], encoding="utf-8")
    return str(path)
