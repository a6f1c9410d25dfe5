"""Metric writers (JSONL, TensorBoard, console), throughput and MFU, and the loss-curve plot."""

import json
import math
import os
import re
import time

import jax

from gptjax import files

LN2 = math.log(2)

# Stated dense peak FLOP/s per chip, by device kind and compute dtype (vendor datasheets). On TPUs an fp32 matmul
# runs at default precision as one bf16 pass, so fp32 is listed at the bf16 rate (MaxText does the same). GPU fp32
# is plain fp32, not TF32. MFU is always against these numbers, never a measurement.
PEAK_FLOPS = {
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},  # v5e
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},  # v5p reports "TPU v5"
    "TPU v6 lite": {"bfloat16": 918e12, "float32": 918e12},  # Trillium
    "NVIDIA A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12},
    "NVIDIA H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},  # SXM
    "NVIDIA H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12},
}


def log(*args) -> None:
    """A progress line, printed by process 0 only."""
    if jax.process_index() == 0:
        print(*args, flush=True)


def cpu_peak_flops() -> float:
    """The stated fp32 peak of the cores this process may use: cores x nominal GHz x FLOPs per cycle (two FMA
    units x 16 fp32 lanes x 2 with AVX-512, 32 with AVX2+FMA, else 8). Nothing is timed, so a busy machine
    does not move it. XLA:CPU converts bf16 matmuls to fp32, so this is the peak for every dtype."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ghz, flags = 2.0, set()
    try:
        info = open("/proc/cpuinfo").read()
        nominal = re.search(r"model name\s*:.*@\s*([\d.]+)GHz", info)
        current = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
        ghz = float(nominal.group(1)) if nominal else float(current.group(1)) / 1000 if current else ghz
        flags = set(re.search(r"flags\s*:(.*)", info).group(1).split())
    except (OSError, AttributeError):
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    return cores * ghz * 1e9 * per_cycle


def peak_flops_per_device(dtype_name: str, device=None) -> float | None:
    """The stated peak FLOP/s of one device for `dtype_name` compute: the table for accelerators; on CPU the
    cores' peak shared among the virtual CPU devices; None for a kind the table lacks (MFU is then not logged)."""
    device = device or jax.devices()[0]
    for kind, by_dtype in PEAK_FLOPS.items():
        if device.device_kind.startswith(kind):
            return by_dtype.get(dtype_name, by_dtype["bfloat16"])
    if device.platform == "cpu":
        return cpu_peak_flops() / len(jax.devices("cpu"))
    return None


class _EventFile:
    """A TensorBoard event file written in the caller's thread: a refused write (no space...) is raised where the
    metric is written, not in a writer thread that would die printing a traceback and leave later writes blocked
    on its queue (tensorboardX's SummaryWriter). Flushed every `flush_every` seconds and on close."""

    def __init__(self, logdir, flush_every: float = 30.0):
        from tensorboardX import record_writer
        from tensorboardX.event_file_writer import EventsWriter

        logdir = files.path(logdir)
        if not files.is_local(logdir):  # event files on a bucket go through epath, as in files.tensorboard_writer
            for scheme in files.PACKAGES:
                record_writer.register_writer_factory(scheme, files._EpathRecordFactory())
        logdir.mkdir(parents=True, exist_ok=True)
        self._events = EventsWriter(os.path.join(os.fspath(logdir), "events"))
        self.flush_every, self._flushed = flush_every, time.monotonic()

    def add_scalars(self, step: int, scalars: dict) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        for k, v in scalars.items():
            self._events.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=scalar(k, v)))
        if time.monotonic() - self._flushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self._events.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._events.close()


class MetricWriter:
    """Writes one JSON object per logged step to metrics.jsonl and the same scalars to TensorBoard.
    Only process 0 writes. A write the filesystem refuses is one WriteError line naming the file."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.path = files.path(workdir) / "metrics.jsonl"
        self.tb_dir = files.path(workdir) / "tensorboard"
        with files.writing(self.path, "metrics.jsonl"):
            files.path(workdir).mkdir(parents=True, exist_ok=True)
            self._jsonl = files.AppendFile(self.path)
        self._tb = None
        with files.writing(self.tb_dir, "TensorBoard events"):
            self._tb = _EventFile(self.tb_dir)

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with files.writing(self.path, "metrics.jsonl"):
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        with files.writing(self.tb_dir, "TensorBoard events"):
            self._tb.add_scalars(step, {k: float(v) for k, v in scalars.items()})

    def close(self) -> None:
        """Closes both files, the second even when the first is refused (whose error is then raised)."""
        if not self.enabled:
            return
        try:
            with files.writing(self.path, "metrics.jsonl"):
                self._jsonl.close()
        finally:
            if self._tb is not None:
                with files.writing(self.tb_dir, "TensorBoard events"):
                    self._tb.close()


def matmul_params(params) -> int:
    """Parameters that take part in matmuls: all but LayerNorm, biases and the position table."""
    from gptjax.model import count_params

    def name(path):  # the last dict key (boxed params end in the box's `value` attribute)
        return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]

    return count_params({jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(params)
                         if name(path).endswith("kernel") or name(path) in ("wte", "lm_head")})


def flops_per_token(params, model_cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus attention scores (PaLM appendix B)."""
    return 6.0 * matmul_params(params) + 12.0 * model_cfg.num_layers * seq_len * model_cfg.d_model


def plot_loss_curve(metrics_path: str, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in files.path(metrics_path).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    files.atomic_write(out_png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
