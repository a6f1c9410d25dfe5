"""Fine-tuning against the amount of labelled data (issue 22 part 4): the seeded nested training subsets, the fixed
test split, a real run that logs test accuracy beside validation, and the curve's early stopping, table, paired
differences and majority floor against numbers computed here by hand."""

import json
import math

import pytest

from gptjax import runs
from gptjax.errors import ConfigError
from gptjax.finetune import curve
from gptjax.finetune import data as ft_data
from test_finetune import _config, _pretrained_workdir

T_975_DF2 = 4.302652729911275  # the t table's 0.975 quantile at 2 degrees of freedom (three seeds)


def test_subsets_are_seeded_nested_and_in_order():
    recs = list(range(1000))
    small, large = ft_data.subset(recs, 0.01, seed=3), ft_data.subset(recs, 0.1, seed=3)
    assert len(small) == 10 and len(large) == 100 and set(small) <= set(large)  # one seed's fractions nest
    assert small == sorted(small) and ft_data.subset(recs, 0.01, seed=3) == small
    assert ft_data.subset(recs, 0.01, seed=4) != small  # another seed, another draw
    assert ft_data.subset(recs, 1.0, seed=3) == recs and ft_data.subset(recs[:10], 0.01, seed=0) != []


def test_the_test_split_is_fixed_and_disjoint_from_validation():
    recs = [(f"r{i}", {"label": i % 3}) for i in range(200)]
    val, test = ft_data.split_test(recs, 0.5)
    assert len(val) == len(test) == 100 and not {w for w, _ in val} & {w for w, _ in test}
    assert ft_data.split_test(recs, 0.5) == (val, test)  # the same split for every run
    assert ft_data.split_test(recs, 0.0) == (recs, [])


@pytest.mark.parametrize("key,value,message", [("train_fraction", 0.0, "needs 0 < fraction <= 1, got 0.0"),
                                               ("test_fraction", 1.0, "needs 0 <= fraction < 1, got 1.0")])
def test_fractions_out_of_range_are_refused(key, value, message):
    from gptjax.configs import finetune as finetune_config

    c = _config(**{key: value})
    with pytest.raises(ConfigError, match=f"finetune.{key}: {message}"):
        finetune_config.validate(c)


def test_a_run_on_a_fraction_logs_test_accuracy_beside_validation(tmp_path):
    """A whole classification run on half of 24 JSONL records, 4 of its 10 validation records set aside as test."""
    pre = tmp_path / "pre"
    _pretrained_workdir(pre)
    for split, n in (("train", 24), ("val", 10)):
        with open(tmp_path / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"s": "abc" * (i % 3 + 1) if i % 2 else "fgh :" * (i % 2 + 1), "y": i % 2}) + "\n")
    c = _config(source="jsonl", train_path=str(tmp_path / "train.jsonl"), val_path=str(tmp_path / "val.jsonl"),
                fields=("s",), label_field="y", labels=("0", "1"), train_fraction=0.5, test_fraction=0.4)
    c.train.init_from = str(pre)
    c.eval.update(every_steps=1, batch_size=8)
    runs.train(c, str(tmp_path / "sweep" / "ft"))
    rows = [json.loads(x) for x in open(tmp_path / "sweep" / "ft" / "metrics.jsonl")]
    evals = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [1, 2, 3] and all("test_accuracy" in r and "test_f1" in r for r in evals)
    assert all(r["test_accuracy"] * 4 == round(r["test_accuracy"] * 4) for r in evals)  # 4 test records
    assert len(open(tmp_path / "sweep" / "ft" / "predictions.jsonl").readlines()) == 6  # validation only
    run, = curve.read_runs(str(tmp_path / "sweep"))
    assert (run.way, run.fraction, run.seed) == ("pretrained", 0.5, 0)
    best = max(evals, key=lambda r: (r["val_accuracy"], -r["step"]))
    assert (run.step, run.test_accuracy) == (best["step"], best["test_accuracy"])
    # the majority class of the 24 training records (12 each: the first, "0", on the tie) on the 4 test records
    _, test = ft_data.split_test(ft_data.read_jsonl(str(tmp_path / "val.jsonl")), 0.4)
    assert curve.majority_floor(json.load(open(tmp_path / "sweep" / "ft" / "config.json"))) == \
        ("0", sum(r["y"] == 0 for _, r in test) / 4)


def test_early_stopping_takes_the_best_validation_accuracy_never_test():
    rows = [{"step": 10, "val_accuracy": 0.5, "test_accuracy": 0.9}, {"step": 20, "val_accuracy": 0.7,
            "test_accuracy": 0.4}, {"step": 30, "val_accuracy": 0.7, "test_accuracy": 0.8}, {"step": 30, "loss": 1}]
    assert curve.early_stopped(rows)["step"] == 20  # the earliest of the tie, whatever test says
    assert curve.early_stopped([{"step": 5, "val_accuracy": 0.5}]) is None


def _run(way, fraction, seed, acc):
    return curve.Run(way, fraction, seed, 10, acc, {})


def test_the_table_is_mean_sd_and_the_difference_from_scratch_paired_by_seed():
    accs = {("pretrained", 0.01): (0.50, 0.55, 0.60), ("scratch", 0.01): (0.30, 0.40, 0.35),
            ("pretrained", 1.0): (0.70, 0.72, 0.74), ("scratch", 1.0): (0.71,)}
    rs = [_run(w, f, s, a) for (w, f), vals in accs.items() for s, a in enumerate(vals)]
    lines, cells = curve.table(rs, num_train=13_411)
    assert lines[0] == "| fraction | passages | pretrained | scratch | pretrained - scratch [95% CI] |"
    # 1%: pretrained 0.55 +- 0.05; scratch 0.35 +- 0.05; per-seed differences 0.20, 0.15, 0.25: mean 0.20, sd 0.05
    half = T_975_DF2 * 0.05 / math.sqrt(3)
    assert lines[2] == (f"| 1% | 134 | 0.550 ± 0.050 (n=3) | 0.350 ± 0.050 (n=3) | +0.200 [{0.2 - half:+.3f}, "
                        f"{0.2 + half:+.3f}] |")
    # 100%: scratch has one seed, not the same seeds: Welch's difference of means (0.72 - 0.71), no interval
    assert lines[3] == "| 100% | 13,411 | 0.720 ± 0.020 (n=3) | 0.710 (n=1) | +0.010 (n=1) |"
    assert cells[("scratch", 1.0)] == {0: 0.71}
    assert curve.plot(cells, ("histories", 0.2))[:4] == b"\x89PNG"


def test_a_directory_without_runs_is_one_line(tmp_path, capsys):
    assert curve.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gptjax: error: {tmp_path}: no fine-tuning run") and err.count("\n") == 1
    assert curve.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"gptjax: error: {tmp_path / 'missing'}: no such directory\n"


def test_the_learning_rate_is_chosen_per_way_and_fraction_on_validation_never_test():
    def run(lr, seed, val, test):
        return curve.Run("scratch", 0.1, seed, 10, test, {}, lr, val)

    rs = [run(1e-3, 0, 0.30, 0.90), run(1e-3, 1, 0.34, 0.90), run(3e-3, 0, 0.40, 0.20), run(3e-3, 1, 0.36, 0.30),
          run(1e-2, 0, 0.90, 0.90)]  # 1e-2: one seed of two finished, so it does not compete
    kept = curve.chosen(rs)
    assert [(r.lr, r.seed) for r in kept] == [(3e-3, 0), (3e-3, 1)]  # mean val 0.38 beats 0.32; test ignored
    lines, _ = curve.table(kept)
    assert lines[2] == "| 10% | 0.250 ± 0.071 (n=2, lr 0.003) |"
