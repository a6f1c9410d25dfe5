"""`gptjax eval`: a grid of tasks x shots x seeds on one or more workdirs.

gptjax eval --workdir=runs/shakespeare --config=experiments/eval/shakespeare.py
gptjax eval --workdir=runs/icl/icl,runs/icl/control --config=experiments/eval/icl.py --config.shots='(0,1,2,4,8,16)'

The config (`experiments/eval/*.py`, or any file with `get_config(arg)`) has `tasks` (task specs,
`gptjax/evals/tasks`), `shots`, `seeds`, `limit` (examples per task, 0 for all), `tokens_per_batch` and `workdirs`
(used when --workdir is not given: an evaluation sweep from one file). For each workdir it writes, and changes
nothing else:

  <workdir>/eval/results.json   every metric of every (task, K, seed), their mean over seeds, and the settings
  <workdir>/eval/results.md     the main metric (mean over seeds, and the spread when there are several) by K
  <workdir>/eval/shots.png      the main metric against K, one line per task (the chance level dotted)

With several workdirs, `--output_dir` (default: the first workdir's eval/) also gets models.md and models.png: one
line per model for each task, as in GPT-3's figure 1.2. Without --config it runs `gptjax/evals/config.py`, GPT-3's
synthetic probes. gptjax/main.py dispatches `gptjax eval` here (`define_flags`, `main`); `python -m gptjax.evals.cli
--workdir=... --config=...` runs the same command on its own.

Workdirs and --output_dir may be local paths or cloud URLs (gs://...): every file is written through gptjax.files.
"""

import json
import math
import os
import sys
import time

import numpy as np
from absl import flags

from gptjax import files
from gptjax.configs import smoke
from gptjax.errors import ConfigError, DataError, GptjaxError

# The default config is inside the package (an installed gptjax has no experiments/): the synthetic probes.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")


def define_flags(fv=None, argv=None) -> None:
    """The eval command's flags on `fv` (default absl's FLAGS); `argv` is what --config's overrides are read from
    (default sys.argv). A flag already defined on `fv` (--workdir, by the main CLI) is kept."""
    from ml_collections import config_flags

    fv = flags.FLAGS if fv is None else fv
    if "workdir" not in fv:
        flags.DEFINE_string("workdir", None, "Workdir(s) to evaluate, comma-separated (default: the config's).",
                            flag_values=fv)
    if "config" not in fv:
        kwargs = {} if argv is None else {"sys_argv": list(argv)}
        config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Evaluation config file, FILE[:ARG].",
                                        lock_config=True, flag_values=fv, **kwargs)
    if "output_dir" not in fv:
        flags.DEFINE_string("output_dir", None, "Where the comparison of several workdirs goes "
                                                "(default: the first workdir's eval/).", flag_values=fv)


def main(f=None) -> dict:
    """Runs the grid that the parsed flags describe (`f`: parsed FlagValues, default absl's FLAGS; an argv list,
    as absl's app.run passes, also means FLAGS); returns {workdir: results}. `--workdir` takes comma-separated
    workdirs; without it the config's `workdirs` are evaluated."""
    f = f if isinstance(f, flags.FlagValues) else flags.FLAGS
    config = f.config
    workdirs = [w for w in (f.workdir or "").split(",") if w] or list(config.workdirs)
    if not workdirs:
        raise ConfigError("--workdir: give one or more workdirs (comma-separated), or set workdirs in the config")
    if smoke.enabled():
        with config.unlocked():
            config.limit = min(config.limit or smoke.EVAL_EXAMPLES, smoke.EVAL_EXAMPLES)
            config.seeds = tuple(config.seeds)[:1]
        smoke.announce(f"{config.limit} examples per task, seed {config.seeds[0]}")
    return run(workdirs, config, output_dir=f.output_dir)


def check_config(config) -> None:
    from gptjax.evals import tasks

    if not config.tasks:
        raise ConfigError("config.tasks: no task given")
    for key in ("shots", "seeds"):
        values = config[key]
        if not values or not all(isinstance(v, int) and v >= 0 for v in values):
            raise ConfigError(f"config.{key}: needs non-negative integers, got {tuple(values)}")
    for spec in config.tasks:
        name, _ = tasks.parse(spec)
        if name not in tasks.NAMES:
            raise ConfigError(f"config.tasks: unknown task {name!r}; choose from {', '.join(tasks.NAMES)}")
    failed = []  # every task file read and every K checked before a model is loaded; all failures in one line
    for spec in config.tasks:
        try:
            task = tasks.get(spec)
            if task.kind != "perplexity":
                task.prefix(0, max(config.shots), config.seeds[0])
        except DataError as e:
            failed.append((tasks.parse(spec)[0], e))
    if len(failed) == 1:
        raise failed[0][1]
    if failed:
        others = ", ".join(name for name, _ in failed[1:])
        raise DataError(f"{failed[0][1]}; and {len(failed) - 1} more tasks cannot be read: {others}") \
            from failed[0][1]


def evaluate_workdir(workdir: str, config, log=print) -> dict:
    """Loads the workdir's latest params and runs the grid; returns the results dict (nothing written)."""
    import jax

    from gptjax import sharding, workdirs
    from gptjax.evals import evaluator, scoring, tasks

    run_config, model_cfg, params, tok = workdirs.load(workdir)
    mesh = sharding.make_mesh((-1, 1, 1))  # the mesh workdirs.load put the params on
    scorer = scoring.Scorer(model_cfg, params, tok, mesh=mesh, rules=run_config.mesh.logical_axis_rules,
                            tokens_per_batch=config.tokens_per_batch, progress=sys.stderr.isatty())
    results = {"workdir": str(files.path(workdir)), "settings": config.to_dict(), "tasks": {}}
    for spec in config.tasks:
        task = tasks.get(spec)
        per_task = results["tasks"][task.name] = {"kind": task.kind, "chance": task.chance,
                                                  "main_metric": evaluator.MAIN_METRIC[task.kind], "shots": {}}
        for k in config.shots:
            if task.kind == "perplexity" and k:
                continue
            t0 = time.time()
            runs = {str(s): evaluator.evaluate(scorer, task, k, seed=s, limit=config.limit) for s in config.seeds}
            metrics = runs[str(config.seeds[0])].keys()
            mean = {m: float(np.mean([r[m] for r in runs.values()])) for m in metrics}
            std = {m: float(np.std([r[m] for r in runs.values()])) for m in metrics}
            per_task["shots"][str(k)] = {"seeds": runs, "mean": mean, "std": std}
            main = per_task["main_metric"]
            if jax.process_index() == 0:
                log(f"eval {os.path.basename(os.path.normpath(workdir))} | {task.name} | {k}-shot | "
                    f"{main} {mean[main]:.4f} | n {int(mean['n'])} | {time.time() - t0:.1f}s")
    return results


def markdown(results: dict) -> str:
    shots = sorted({int(k) for t in results["tasks"].values() for k in t["shots"]})
    lines = ["| task | metric | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    for name, t in results["tasks"].items():
        cells = []
        for k in shots:
            r = t["shots"].get(str(k))
            if r is None:
                cells.append("")
                continue
            m, s = r["mean"][t["main_metric"]], r["std"][t["main_metric"]]
            cells.append(f"{m:.3f}" + (f" ± {s:.3f}" if len(r["seeds"]) > 1 else ""))
        lines.append(f"| {name} | {t['main_metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _save_png(fig, path) -> None:
    """The figure as a PNG at `path` (local or a URL), never seen half-written."""
    files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


def plot_shots(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, t in results["tasks"].items():
        if t["kind"] == "perplexity":
            continue
        ks = sorted(int(k) for k in t["shots"])
        line, = ax.plot([max(k, 0.5) for k in ks], [t["shots"][str(k)]["mean"][t["main_metric"]] for k in ks],
                        marker="o", label=name)
        if t["chance"] is not None:
            ax.axhline(t["chance"], color=line.get_color(), linestyle=":", linewidth=1)
    _finish(ax, fig, os.path.basename(os.path.normpath(results["workdir"])))
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)


def _finish(ax, fig, title):
    ax.set_xscale("log", base=2)
    ks = sorted({x for line in ax.get_lines() if line.get_marker() == "o" for x in line.get_xdata()})
    ax.set_xticks(ks, [("0" if k < 1 else f"{k:g}") for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("examples in context (K)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def compare(all_results: dict[str, dict], out_dir) -> None:
    """models.md and models.png: each task's main metric against K, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {w: os.path.basename(os.path.normpath(w)) for w in all_results}
    task_names = [t for t in next(iter(all_results.values()))["tasks"]]
    task_names = [t for t in task_names if next(iter(all_results.values()))["tasks"][t]["kind"] != "perplexity"]
    lines = []
    cols = min(3, len(task_names)) or 1
    rows = max(1, math.ceil(len(task_names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, task in zip(axes.ravel(), task_names):
        for w, res in all_results.items():
            t = res["tasks"][task]
            ks = sorted(int(k) for k in t["shots"])
            ax.plot([max(k, 0.5) for k in ks], [t["shots"][str(k)]["mean"][t["main_metric"]] for k in ks],
                    marker="o", label=names[w])
        chance = next(iter(all_results.values()))["tasks"][task]["chance"]
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
        _finish(ax, fig, task)
    for ax in axes.ravel()[len(task_names):]:
        ax.axis("off")
    fig.tight_layout()
    out = files.path(out_dir)
    _save_png(fig, out / "models.png")
    plt.close(fig)
    for w, res in all_results.items():
        lines.append(f"### {names[w]}\n\n" + markdown(res))
    files.write_text(out / "models.md", "\n".join(lines))


def run(workdirs: list[str], config, output_dir: str | None = None, log=print) -> dict:
    import jax

    from gptjax import checkpoint

    for w in workdirs:  # a URL this machine cannot read or write is one line before any work
        files.check_url(w)
    if output_dir:
        files.check_url(output_dir, "--output_dir", workdir=False)
    check_config(config)
    for w in workdirs:  # every workdir checked before any is evaluated
        if not (files.path(w) / checkpoint.CONFIG_FILE).is_file():
            raise GptjaxError(f"--workdir: {w} holds no training run (no {checkpoint.CONFIG_FILE})")
    compared = files.path(output_dir) if output_dir else files.path(workdirs[0]) / "eval"
    if jax.process_index() == 0:  # a folder that cannot be written (a file in the way, read-only) is one line now,
        for w in workdirs:  # not after the models are evaluated
            files.writable_dir(files.path(w) / "eval", "the evaluation results")
        if len(workdirs) > 1:
            files.writable_dir(compared, "the comparison of the models (--output_dir)")
    all_results = {}
    for w in workdirs:
        results = evaluate_workdir(w, config, log=log)
        all_results[w] = results
        if jax.process_index() == 0:
            out = files.path(w) / "eval"
            with files.writing(out, "the evaluation results"):
                out.mkdir(parents=True, exist_ok=True)
                files.write_text(out / "results.json", json.dumps(results, indent=1))
                files.write_text(out / "results.md", markdown(results))
                plot_shots(results, out / "shots.png")
            log(f"eval: wrote {out}/results.json, results.md, shots.png")
    if len(workdirs) > 1 and jax.process_index() == 0:
        with files.writing(compared, "the comparison of the models (--output_dir)"):
            compared.mkdir(parents=True, exist_ok=True)
            compare(all_results, compared)
        log(f"eval: wrote {compared}/models.md, models.png")
    return all_results


def _cli():
    from absl import app

    define_flags()

    def _main(argv):
        try:
            main()
        except GptjaxError as e:
            print(f"gptjax: error: {e}", file=sys.stderr)
            sys.exit(2)

    argv = list(sys.argv)
    if not any(a.startswith(("--verbosity", "-v")) for a in argv):
        argv.append("--verbosity=-1")  # absl/orbax INFO lines would drown the results
    app.run(_main, argv=argv)


if __name__ == "__main__":
    _cli()
