"""A sweep's scaling-law section: validation loss against non-embedding parameters N, the fit L(N) = E + A / N^alpha
(gptjax/sweep_stats.py) with its constants' standard errors, one size held out of the fit and predicted, and a
log-log plot. launch/sweep.py writes it for a sweep file that defines get_scaling() (experiments/sweeps/scaling.py).

N is counted as Kaplan et al. (2020) count it: every parameter but the token and position embeddings (and an untied
output head, the token embedding's transpose), read from each run's own config.json, so the count is the model that
trained.
"""

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import sweep_stats
from gptjax.checkpoint import read_config
from gptjax.configs.model import ModelConfig

EMBEDDINGS = ("wte", "wpe", "lm_head")  # the parameters N leaves out


def non_embedding_params(params) -> int:
    """Parameters outside the token and position embeddings and the output head (boxed params or plain)."""
    from flax import linen as nn

    leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(params))
    return sum(int(np.prod(x.shape)) for path, x in leaves
               if not any(isinstance(k, jax.tree_util.DictKey) and k.key in EMBEDDINGS for k in path))


def model_size(run_dir: str) -> int:
    """N of the model a run trained, from its config.json (the model section, vocabulary size resolved)."""
    from gptjax.model import GPT

    cfg = ModelConfig.from_config(read_config(run_dir)["model"])
    abstract = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return non_embedding_params(abstract["params"])


@dataclasses.dataclass(frozen=True)
class Point:
    """One model size: its arm, N, and the validation losses of its chosen grid point's seeds."""
    arm: str
    size: int
    losses: tuple

    @property
    def loss(self) -> sweep_stats.Summary:
        return sweep_stats.summarize(self.losses)


def section(points: list[Point], hold_out: str | None) -> tuple[list[str], object, object]:
    """The results.md lines of the scaling section, the fit over every point (None where there are fewer than 4)
    and the held-out prediction (sweep_stats.HeldOut; None without one). `hold_out` names the arm left out of a
    second fit and predicted by it."""
    points = sorted(points, key=lambda p: p.size)
    lines = ["", "Scaling law: validation loss against non-embedding parameters N (each size at its chosen point, "
             "mean over its seeds)", "", "| arm | N | val loss |", "|---|---:|---:|"]
    lines += [f"| {p.arm} | {p.size:,} | {p.loss.mean:.4f}" + (f" ± {p.loss.sd:.4f}" if p.loss.sd is not None else "")
              + " |" for p in points]
    sizes, losses = [p.size for p in points], [p.loss.mean for p in points]
    if len(points) < 4:
        return lines + ["", f"No fit: {len(points)} sizes finished; L(N) = E + A / N^alpha needs at least 4."], None, None
    fit = sweep_stats.fit_power_law(sizes, losses)
    lines += ["", f"Fit over all {fit.n_points} sizes (least squares on log L): L(N) = E + A / N^alpha with "
              f"E = {fit.E:.3f} ± {fit.se_E:.3f}, A = {fit.A:.4g} ± {fit.se_A:.2g}, alpha = {fit.alpha:.3f} ± "
              f"{fit.se_alpha:.3f} (± one standard error). Largest residual: "
              f"{max(abs(fit(n) - l) for n, l in zip(sizes, losses)):.4f} nats."]
    arms, held = [p.arm for p in points], None
    if hold_out is not None and hold_out in arms and len(points) >= 5:
        held = sweep_stats.predict_held_out(sizes, losses, arms.index(hold_out))
        lines += ["", f"Held out: `{hold_out}` (N = {held.size:,.0f}). The fit over the other {held.fit.n_points} sizes "
                  f"(E = {held.fit.E:.3f}, A = {held.fit.A:.4g}, alpha = {held.fit.alpha:.3f}) predicts "
                  f"{held.predicted:.4f}; measured {held.loss:.4f}: error {held.error:+.4f} nats "
                  f"({held.error / held.loss:+.1%})."]
    elif hold_out is not None:
        lines += ["", f"Held out: `{hold_out}` cannot be: it did not finish, or fewer than 5 sizes did."]
    return lines, fit, held


def plot(points: list[Point], fit, held) -> bytes:
    """scaling.png: the sizes' mean losses (bars: lowest to highest seed) on log-log axes, the fit over all of them
    and, dashed, the fit without the held-out size (its point a red square)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for p in sorted(points, key=lambda p: p.size):
        out = held is not None and p.size == held.size
        low, high = min(p.losses), max(p.losses)
        ax.errorbar([p.size], [p.loss.mean], yerr=[[p.loss.mean - low], [high - p.loss.mean]], fmt="s" if out else "o",
                    color="tab:red" if out else "tab:blue", capsize=3)
        ax.annotate(p.arm, (p.size, p.loss.mean), textcoords="offset points", xytext=(4, 4), fontsize=6)
    if fit is not None:
        n = np.geomspace(min(p.size for p in points) / 1.5, max(p.size for p in points) * 1.5, 100)
        ax.plot(n, fit(n), color="tab:gray", label=f"fit: {fit.E:.2f} + {fit.A:.3g} / N^{fit.alpha:.3f}")
        if held is not None:
            ax.plot(n, held.fit(n), color="tab:red", linestyle="--", linewidth=1,
                    label=f"fit without N = {held.size:,.0f}: predicts {held.predicted:.3f}, measured {held.loss:.3f}")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 4.8, not 4.8 x 10^0
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss against model size (bars: lowest to highest seed)")
    ax.grid(alpha=0.3, which="both")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return png.getvalue()
