"""The statistics of a sweep's results: the grid point chosen per arm, mean and spread over seeds, each arm's
difference from the base arm with a t interval, validation curves as a mean with a band, and a scaling-law fit.

Why these and not more: an ablation compares arms that each ran a few seeds (three, say) at the learning rate best
for that arm. With so few seeds a normal interval is too narrow, so intervals come from the t distribution. When
two arms ran the same seeds, a seed fixes the data order (and the initialisation where the shapes agree), so the
per-seed differences are paired and their spread is what the interval reads; otherwise the two samples are
compared with Welch's interval, which does not assume equal variances. The grid point is chosen on validation loss
alone (mean over seeds), so held-out numbers reported at that point are not selected on.

Plain numpy and scipy: `launch/sweep.py` imports this without jax, and a notebook can use it on a results.csv.
"""

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

LEVEL = 0.95  # the intervals' coverage


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; None for one value) of `n` values."""
    mean: float
    sd: float | None
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean and spread over seeds. One value has no spread: sd is None rather than 0, which would claim certainty."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize: no values")
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, int(x.size))


@dataclasses.dataclass(frozen=True)
class Difference:
    """An arm's mean minus the base arm's, with a `level` t interval (low, high both None when a sample is too small
    for one). `method`: 'paired' (per-seed differences over the seeds both ran) or 'welch'. `n`: the pairs (paired)
    or the arm's values (Welch); `n_base`: the base's values."""
    mean: float
    low: float | None
    high: float | None
    n: int
    n_base: int
    method: str
    level: float = LEVEL


def _t(level: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


def paired_difference(arm: Mapping[Hashable, float], base: Mapping[Hashable, float],
                      level: float = LEVEL) -> Difference:
    """mean(arm[s] - base[s]) over the seeds s that both ran, +- t(n-1) * sd / sqrt(n). Pairing removes what a
    seed's data order adds to both arms; with one pair there is no spread, so no interval."""
    seeds = [s for s in arm if s in base]
    if not seeds:
        raise ValueError("paired_difference: the two arms ran no seed in common")
    d = np.array([arm[s] - base[s] for s in seeds], dtype=float)
    mean, n = float(d.mean()), d.size
    if n < 2:
        return Difference(mean, None, None, n, n, "paired", level)
    half = _t(level, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Difference(mean, mean - half, mean + half, n, n, "paired", level)


def welch_difference(arm: Sequence[float], base: Sequence[float], level: float = LEVEL) -> Difference:
    """mean(arm) - mean(base) +- t(df) * sqrt(var_a / n_a + var_b / n_b), with the Welch-Satterthwaite df: for arms
    that did not run the same seeds (a seed failed in one), where nothing pairs the values. Each side needs two
    values for a variance; otherwise no interval."""
    a, b = np.asarray(arm, dtype=float), np.asarray(base, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("welch_difference: an arm has no values")
    mean = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Difference(mean, None, None, a.size, b.size, "welch", level)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:  # identical values on both sides: the difference is exact
        return Difference(mean, mean, mean, a.size, b.size, "welch", level)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = _t(level, df) * se
    return Difference(mean, mean - half, mean + half, a.size, b.size, "welch", level)


def compare(arm: Mapping[Hashable, float], base: Mapping[Hashable, float], level: float = LEVEL) -> Difference:
    """An arm against the base, values keyed by seed: paired when both ran the same seeds, else Welch."""
    if set(arm) == set(base):
        return paired_difference(arm, base, level)
    return welch_difference(list(arm.values()), list(base.values()), level)


@dataclasses.dataclass(frozen=True)
class Choice:
    """The grid point chosen for an arm and why: `point` (None when no point has a finished run), its values keyed
    by seed, and `incomplete`: the points left out of the choice because some of their seeds did not finish."""
    point: Hashable | None
    values: dict
    incomplete: tuple = ()


def choose_point(points: Mapping[Hashable, Mapping[Hashable, float]], seeds: Sequence[Hashable]) -> Choice:
    """The point with the lowest mean validation loss over seeds, in the grid's order on a tie (the first listed).

    Only points where every seed in `seeds` finished compete: a seed that diverged or failed at a point says the
    point is unreliable, and the mean of the seeds that survived would flatter it. When no point is complete, the
    points with the most finished seeds compete instead (and all others are listed as incomplete)."""
    done = {p: dict(v) for p, v in points.items() if v}
    if not done:
        return Choice(None, {}, tuple(points))
    want = set(seeds)
    complete = [p for p, v in done.items() if want <= set(v)]
    if not complete:
        most = max(len(v) for v in done.values())
        complete = [p for p, v in done.items() if len(v) == most]
    best = min(complete, key=lambda p: (float(np.mean(list(done[p].values()))), list(points).index(p)))
    return Choice(best, done[best], tuple(p for p in points if p not in complete))


@dataclasses.dataclass(frozen=True)
class Band:
    """Curves over seeds at the steps every curve has: their mean, and the min and max at each step."""
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def band(curves: Sequence[Mapping[int, float]]) -> Band:
    """Per step, the mean and the range (min to max) over seeds. Only steps all curves reached are drawn, so the
    mean never mixes a different set of seeds from one step to the next (a seed still running, or killed)."""
    curves = [c for c in curves if c]
    if not curves:
        empty = np.zeros(0)
        return Band(empty, empty, empty, empty)
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    y = np.array([[c[s] for s in steps] for c in curves], dtype=float).reshape(len(curves), len(steps))
    return Band(np.array(steps), y.mean(0), y.min(0), y.max(0))


# --- scaling laws ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(N) = E + A / N**alpha with the standard errors of E, A and alpha (from the fit's covariance, scaled by the
    residual variance), fitted to `n_points` points."""
    E: float
    A: float
    alpha: float
    se_E: float
    se_A: float
    se_alpha: float
    n_points: int

    def __call__(self, n):
        return self.E + self.A / np.asarray(n, dtype=float) ** self.alpha


def _law(log_n, e, log_a, alpha):
    return np.log(e + np.exp(log_a - alpha * log_n))


def _start(log_n: np.ndarray, log_l: np.ndarray):
    """A starting point for the fit: for a few guesses of E below the smallest loss, the straight line of
    log(L - E) on log N; the guess whose line fits best. curve_fit from a poor start can stop at alpha near 0."""
    lowest = float(np.exp(log_l).min())
    best = None
    for frac in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99):
        e = frac * lowest
        y = np.log(np.exp(log_l) - e)
        slope, intercept = np.polyfit(log_n, y, 1)
        err = float(((np.polyval((slope, intercept), log_n) - y) ** 2).sum())
        if slope < 0 and (best is None or err < best[0]):
            best = (err, (e, intercept, -slope))
    return best[1] if best else (0.5 * lowest, float(log_l.mean()), 0.1)


def fit_power_law(sizes: Sequence[float], losses: Sequence[float]) -> PowerLaw:
    """Fits L(N) = E + A / N**alpha (Kaplan et al. 2020; Hoffmann et al. 2022) by least squares on log L, so that
    each size weighs by its relative error rather than the largest losses dominating. Parametrised by log A (A > 0)
    with E >= 0. Three constants need at least four points to leave a residual to estimate their errors from."""
    from scipy.optimize import curve_fit

    n, loss = np.asarray(sizes, dtype=float), np.asarray(losses, dtype=float)
    if n.shape != loss.shape or n.ndim != 1:
        raise ValueError(f"fit_power_law: sizes and losses must be two lists of one length, got {n.shape} and "
                         f"{loss.shape}")
    if n.size < 4:
        raise ValueError(f"fit_power_law: {n.size} points; fitting E, A and alpha with their errors needs at least 4")
    if (n <= 0).any() or (loss <= 0).any() or not np.isfinite(n).all() or not np.isfinite(loss).all():
        raise ValueError("fit_power_law: sizes and losses must be finite and positive")
    if len(set(n.tolist())) < 4:
        raise ValueError("fit_power_law: needs at least 4 different sizes")
    log_n, log_l = np.log(n), np.log(loss)
    params, cov = curve_fit(_law, log_n, log_l, p0=_start(log_n, log_l),
                            bounds=([0.0, -np.inf, 0.0], [np.inf, np.inf, 10.0]), maxfev=20000)
    e, log_a, alpha = (float(p) for p in params)
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.isfinite(cov).all() else np.full(3, np.inf)
    a = math.exp(log_a)
    return PowerLaw(e, a, alpha, float(se[0]), a * float(se[1]), float(se[2]), int(n.size))  # se(A) = A se(log A)


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The size left out of a fit, its measured loss and the loss the fit without it predicts."""
    size: float
    loss: float
    predicted: float
    fit: PowerLaw

    @property
    def error(self) -> float:
        """predicted - measured, in the loss's units."""
        return self.predicted - self.loss


def predict_held_out(sizes: Sequence[float], losses: Sequence[float], index: int) -> HeldOut:
    """Fits without point `index` and predicts it: how well the law extrapolates (the largest size held out) or
    interpolates. The remaining points must still be at least four."""
    n, loss = list(sizes), list(losses)
    if not -len(n) <= index < len(n):
        raise IndexError(f"predict_held_out: no point {index} among {len(n)}")
    i = index % len(n)
    fit = fit_power_law(n[:i] + n[i + 1:], loss[:i] + loss[i + 1:])
    return HeldOut(float(n[i]), float(loss[i]), float(fit(n[i])), fit)
