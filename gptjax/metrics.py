"""Metric writers (JSONL, TensorBoard, console), throughput and MFU, and the loss-curve plot."""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s per chip by device kind (bf16), for MFU on accelerators.
_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
}


class MetricWriter:
    """Writes one JSON object per logged step to metrics.jsonl and the same scalars to TensorBoard.
    Only process 0 writes."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self.path, "a")
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def matmul_params(params) -> int:
    """Parameters that take part in matmuls: all but LayerNorm, biases and the position table."""
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        name = path[-1].key
        if name.endswith("kernel") or name in ("wte", "lm_head"):
            total += int(np.prod(x.shape))
    return total


def flops_per_token(params, model_cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus attention scores (PaLM appendix B)."""
    return 6.0 * matmul_params(params) + 12.0 * model_cfg.num_layers * seq_len * model_cfg.d_model


def peak_flops_per_device(dtype_name: str) -> float:
    """The peak FLOP/s of one device: a table for accelerators, measured with a jitted matmul on CPU."""
    device = jax.devices()[0]
    for kind, flops in _PEAK_FLOPS.items():
        if device.device_kind.startswith(kind):
            return flops
    n = 2048  # large enough to reach the matmul peak; the best of a few repeats is steadier than the median
    a = jnp.ones((n, n), dtype=jnp.dtype(dtype_name))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def plot_loss_curve(metrics_path: str, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path)]
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
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
