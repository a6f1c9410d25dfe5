"""Test setup: eight virtual CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f
) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests run on the CPU. With libtpu installed (the test extra has it, for `gptjax plan`), jax would otherwise
# probe for a TPU in this process and in every subprocess, and libtpu's warnings would fill their stderr.
# TPU topologies for ahead-of-time compiles do not need the TPU platform initialised. On a GPU machine,
# GPTJAX_TEST_PLATFORMS=cuda,cpu runs tests/test_gpu.py on the GPU (the rest of the suite assumes the CPU).
os.environ["JAX_PLATFORMS"] = os.environ.get("GPTJAX_TEST_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """A small real-text corpus: the first 200 kB of Shakespeare's plays from the embedded source."""
    from gptjax import data

    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    text = "\n\n".join(data.shakespeare_plays()[name] for name in sorted(data.shakespeare_plays())[:3])
    path.write_text(text[:200_000], encoding="utf-8")
    return str(path)
