"""The preference experiment's comparison: each policy workdir's held-out measurements (eval_true_reward,
eval_reward, eval_kl from metrics.jsonl) over training, as a markdown table and a three-panel plot.

  python -m gptjax.rl.report runs/rlhf/genre_ppo runs/rlhf/genre_grpo runs/rlhf/genre_dpo --out=runs/rlhf/report
"""

import argparse
import json

from gptjax import files

KEYS = ("eval_true_reward", "eval_reward", "eval_kl")
TITLES = {"eval_true_reward": "true score (judge)", "eval_reward": "reward model score", "eval_kl": "KL to reference"}


def curves(workdir: str) -> dict[str, dict[int, float]]:
    """key -> {step: value} of the eval_* rows (a resumed run's later rows win)."""
    out = {k: {} for k in KEYS}
    for line in (files.path(workdir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for k in KEYS:
            if k in row:
                out[k][row["step"]] = row[k]
    return out


def table(runs: dict[str, dict]) -> str:
    lines = ["| method | steps | true score: start → end | reward model: start → end | KL to reference (end) |",
             "|---|---|---|---|---|"]
    for name, c in runs.items():
        t, r, kl = (c[k] for k in KEYS)
        if not t:
            continue
        first, last = min(t), max(t)
        lines.append(f"| {name} | {last} | {t[first]:.3f} → **{t[last]:.3f}** | {r.get(first, float('nan')):.3f} → "
                     f"{r.get(last, float('nan')):.3f} | {kl.get(last, float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, KEYS):
        for name, c in runs.items():
            steps = sorted(c[key])
            ax.plot(steps, [c[key][s] for s in steps], marker="o", ms=3, label=name)
        ax.set_title(TITLES[key])
        ax.set_xlabel("step (PPO/GRPO: iterations; DPO: updates)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+")
    p.add_argument("--out", required=True, help="writes OUT.md and OUT.png")
    a = p.parse_args(argv)
    runs = {str(w).rstrip("/").split("/")[-1]: curves(w) for w in a.workdirs}
    md = table(runs)
    files.write_text(a.out + ".md", md)
    plot(runs, a.out + ".png")
    print(md, end="")


if __name__ == "__main__":
    main()
