"""Fine-tuning accuracy against the amount of labelled data (experiments/sweeps/genre_data_fraction.py): each run's
test accuracy at its early-stopping point, per way of training and data fraction, over seeds, with the majority
class as a floor.

  python -m gptjax.finetune.curve runs/genre_fraction

Reads every run under the directory (each a workdir with config.json and metrics.jsonl), whatever launched it.
A run's way is read from its config: `lora` (finetune.lora_rank > 0), `pretrained` (train.init_from set) or
`scratch`; where a way and fraction ran at several learning rates (a sweep's grid), the rate with the best mean
validation accuracy over seeds is kept. Early stopping is the same for every run: of its evaluations, the one with the best validation accuracy
(the earliest on a tie) is its result, and the test accuracy logged with it (finetune.test_fraction) is what is
reported; the validation number is never reported and the test number never chosen on. Writes curve.md and curve.png
beside the runs and prints the table.
"""

import collections
import dataclasses
import io
import json
import sys

import numpy as np

from gptjax import files, sweep_stats
from gptjax.errors import GptjaxError

WAYS = ("pretrained", "scratch", "lora")


@dataclasses.dataclass(frozen=True)
class Run:
    way: str
    fraction: float
    seed: int
    step: int  # the early-stopping evaluation's step
    test_accuracy: float
    config: dict
    lr: float = 0.0
    val_accuracy: float = 0.0  # at the early-stopping evaluation: what the learning rate is chosen on


def way(config: dict) -> str:
    if config.get("finetune", {}).get("lora_rank", 0):
        return "lora"
    return "pretrained" if config.get("train", {}).get("init_from") else "scratch"


def early_stopped(rows: list[dict]) -> dict | None:
    """The evaluation with the best validation accuracy (the earliest on a tie) among those that logged a test
    accuracy too; None when there is none."""
    evals = [r for r in rows if "val_accuracy" in r and "test_accuracy" in r]
    return max(evals, key=lambda r: (r["val_accuracy"], -r["step"])) if evals else None


def _run_dirs(root):
    """Every directory under root (itself included) holding a config.json, in sorted order; walked by hand
    because etils' glob refuses `**` on gs:// paths."""
    if not files.path(root).is_dir():
        raise GptjaxError(f"{root}: no such directory")
    todo, found = [files.path(root)], []
    while todo:
        d = todo.pop()
        if (d / "config.json").exists():
            found.append(d)
        todo += [c for c in d.iterdir() if c.is_dir() and c.name not in ("checkpoints", "tokenizer", "logs")]
    return sorted(found, key=str)


def read_runs(root: str) -> list[Run]:
    runs = []
    for run_dir in _run_dirs(root):
        cfg_path = run_dir / "config.json"
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            continue
        config = json.loads(cfg_path.read_text())
        if "finetune" not in config:
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        best = early_stopped(rows)
        if best is None:
            continue
        runs.append(Run(way(config), float(config["finetune"]["train_fraction"]), int(config["seed"]),
                        int(best["step"]), float(best["test_accuracy"]), config, float(config["optim"]["lr"]),
                        float(best["val_accuracy"])))
    return runs


def chosen(runs: list[Run]) -> list[Run]:
    """Per way and fraction, the runs of the learning rate with the best mean validation accuracy over seeds (at
    each run's early-stopping point; sweep_stats.choose_point: only rates where every seed finished compete, the
    smallest rate on a tie). The test accuracy plays no part."""
    groups = collections.defaultdict(lambda: collections.defaultdict(dict))
    for r in runs:
        groups[(r.way, r.fraction)][r.lr][r.seed] = r
    out = []
    for rates in groups.values():
        seeds = sorted({s for by_seed in rates.values() for s in by_seed})
        order = sorted(rates)
        pick = sweep_stats.choose_point({lr: {s: -r.val_accuracy for s, r in rates[lr].items()} for lr in order},
                                        seeds)
        out += [rates[pick.point][s] for s in pick.values]
    return out


def majority_floor(config: dict) -> tuple[str, float]:
    """The training set's most frequent label and its share of the scored test records: what always answering it
    scores."""
    from ml_collections import ConfigDict

    from gptjax.finetune import data

    f = ConfigDict(config["finetune"])
    train = collections.Counter(r[f.label_field] for _, r in data.records(f, "train"))
    _, test = data.split_test(data.records(f, "validation"), f.test_fraction)
    limit = config.get("eval", {}).get("max_examples", 0)
    test = test[:limit] if limit > 0 else test
    label = train.most_common(1)[0][0]
    return str(label), sum(r[f.label_field] == label for _, r in test) / len(test)


def table(runs: list[Run], num_train: int | None = None) -> tuple[list[str], dict]:
    """curve.md's lines and {(way, fraction): {seed: accuracy}}."""
    cells, rates = collections.defaultdict(dict), {}
    for r in runs:
        cells[(r.way, r.fraction)][r.seed] = r.test_accuracy
        rates[(r.way, r.fraction)] = r.lr
    fractions = sorted({r.fraction for r in runs})
    ways = [w for w in WAYS if any(k[0] == w for k in cells)]
    heads = ["fraction", *(["passages"] if num_train else []), *ways,
             *(f"{w} - scratch [95% CI]" for w in ways if w != "scratch" and "scratch" in ways)]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for fr in fractions:
        row = [f"{fr:.0%}" if fr >= 0.1 else f"{fr:.1%}".replace(".0%", "%"),
               *([f"{max(1, round(fr * num_train)):,}"] if num_train else [])]
        for w in ways:
            vals = cells.get((w, fr), {})
            s = sweep_stats.summarize(list(vals.values())) if vals else None
            row.append("-" if s is None else f"{s.mean:.3f}" + (f" ± {s.sd:.3f}" if s.sd is not None else "")
                       + f" (n={s.n}" + (f", lr {rates[(w, fr)]:g}" if rates[(w, fr)] else "") + ")")
        for w in ways:
            if w == "scratch" or "scratch" not in ways:
                continue
            a, b = cells.get((w, fr), {}), cells.get(("scratch", fr), {})
            if not a or not b:
                row.append("-")
                continue
            d = sweep_stats.compare(a, b)
            row.append(f"{d.mean:+.3f}" + (f" [{d.low:+.3f}, {d.high:+.3f}]" if d.low is not None else " (n=1)"))
        lines.append("| " + " | ".join(row) + " |")
    return lines, cells


def plot(cells: dict, floor: tuple[str, float] | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for w in WAYS:
        fr = sorted(f for (ww, f) in cells if ww == w)
        if not fr:
            continue
        vals = [list(cells[(w, f)].values()) for f in fr]
        line, = ax.plot(fr, [np.mean(v) for v in vals], marker="o", label=f"{w} (n={max(len(v) for v in vals)})")
        ax.fill_between(fr, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    if floor is not None:
        ax.axhline(floor[1], color="tab:gray", linestyle=":", label=f"majority class ({floor[0]})")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the labelled training passages")
    ax.set_ylabel("test accuracy at the early-stopping point")
    ax.set_title("fine-tuning against labelled data (mean over seeds; band: lowest to highest)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return png.getvalue()


def report(root: str) -> str:
    runs = chosen(read_runs(root))
    if not runs:
        raise GptjaxError(f"{root}: no fine-tuning run with validation and test accuracy under it "
                          "(finetune.test_fraction > 0)")
    from ml_collections import ConfigDict

    from gptjax.finetune import data

    config = runs[0].config
    floor = majority_floor(config)
    num_train = len(data.records(ConfigDict(config["finetune"]), "train"))
    lines, cells = table(runs, num_train)
    steps = collections.Counter(r.step for r in runs)
    text = "\n".join(["Test accuracy at each run's early-stopping point (best validation accuracy), mean ± sd over "
                      "seeds, at the learning rate with the best mean validation accuracy for that way and fraction; "
                      "the difference from scratch is paired by seed, with a 95% t interval.", "", *lines, "",
                      f"Majority class ({floor[0]}, the most frequent training label): {floor[1]:.3f} on the same "
                      f"test passages.", "", f"{len(runs)} runs; early-stopping steps chosen: "
                      + ", ".join(f"{s} ({n})" for s, n in sorted(steps.items())) + "."]) + "\n"
    out = files.path(root)
    files.write_text(out / "curve.md", text)
    (out / "curve.png").write_bytes(plot(cells, floor))
    return text


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m gptjax.finetune.curve SWEEP_WORKDIR", file=sys.stderr)
        return 2
    try:
        print(report(argv[0]), end="")
    except GptjaxError as e:
        print(f"gptjax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
