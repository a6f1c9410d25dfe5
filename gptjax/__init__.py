"""gptjax: GPT-style language models in JAX/Flax."""

import glob as _glob
import os as _os

__version__ = "0.1.0"

# With libtpu installed (the tpu and test extras bring it) on a machine without TPUs, the first jax call of every
# process loads libtpu, which asks the cloud metadata server about the host's TPUs, finds none and prints five lines
# of warnings and an INVALID_ARGUMENT error before jax falls back to the CPU or GPU. Where no TPU device exists
# (no /dev/accel*, no /dev/vfio), tell libtpu there is nothing to ask before jax is imported; `gptjax plan` compiles
# for the topology it is given, to the same program either way. On a TPU VM nothing is set.
if not _glob.glob("/dev/accel*") and not _os.path.exists("/dev/vfio"):
    for _key, _value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                         ("TPU_ACCELERATOR_TYPE", "v5litepod-4")):
        _os.environ.setdefault(_key, _value)

# XLA:CPU aborts the whole process ("Termination timeout ... exceeded") when the threads of a collective across
# several CPU devices (a mesh of virtual devices, the README's sharded run) do not all arrive within 40 s, which a
# busy machine can cause. gptjax waits longer instead, unless XLA_FLAGS says otherwise; other platforms ignore it.
_flags = _os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=300",
              "--xla_cpu_collective_call_terminate_timeout_seconds=1800"):
    if _flag.split("=")[0] not in _flags:
        _flags = f"{_flags} {_flag}".strip()
_os.environ["XLA_FLAGS"] = _flags
