"""Summary statistics of independent trials: median, bootstrap CI, CV, percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class Summary:
    """Statistics of per-trial values (seconds per iteration, or any positive metric)."""

    n: int
    median: float
    mean: float
    std: float
    cv: float
    ci_low: float
    ci_high: float
    ci_level: float
    ci_method: str

    @property
    def rel_half_width(self) -> float:
        if self.median == 0:
            return float("inf")
        return (self.ci_high - self.ci_low) / 2 / abs(self.median)


def bootstrap_median_ci(values: np.ndarray, level: float = CI_LEVEL,
                        resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("-inf"), float("inf")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    medians = np.median(values[idx], axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(medians, [alpha, 1.0 - alpha])
    return float(low), float(high)


def summarize(values: list[float] | np.ndarray, level: float = CI_LEVEL) -> Summary:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("no values to summarize")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    low, high = bootstrap_median_ci(arr, level)
    return Summary(
        n=int(arr.size),
        median=float(np.median(arr)),
        mean=mean,
        std=std,
        cv=std / mean if mean else float("inf"),
        ci_low=low,
        ci_high=high,
        ci_level=level,
        ci_method=f"percentile bootstrap of the median, {BOOTSTRAP_RESAMPLES} resamples",
    )


def percentiles(values: list[float] | np.ndarray,
                qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


@dataclass(frozen=True)
class RatioEstimate:
    """How ``current`` compares to ``baseline``: the ratio of their medians with a 95%
    bootstrap CI, and a two-sided Mann-Whitney U p-value on the raw per-trial values."""

    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    n_baseline: int
    n_current: int
    method: str = ("median(current) / median(baseline); percentile bootstrap CI resampling "
                   "both sides' trials independently; Mann-Whitney U (two-sided) on the trials")
    pairs: int | None = None  # set when estimated from interleaved (paired) rounds

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha and not (self.ci_low <= 1.0 <= self.ci_high)

    @property
    def smallest_p(self) -> float:
        """The smallest p-value the test could give with these sample sizes, whatever the
        data: a test that cannot go below alpha cannot reach a verdict."""
        if self.pairs is not None:
            return 0.0 if self.pairs >= MIN_PAIRED_ROUNDS else 1.0
        return mann_whitney_smallest_p(self.n_baseline, self.n_current)


# A paired t-test needs two rounds for a standard error; with them any p is reachable.
MIN_PAIRED_ROUNDS = 2


def mann_whitney_smallest_p(n1: int, n2: int) -> float:
    """Two-sided exact Mann-Whitney U: the most extreme ordering of n1 + n2 values has
    probability 1 / C(n1 + n2, n1) on each side, so p >= 2 / C(n1 + n2, n1)."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2.0 / math.comb(n1 + n2, n1))


@dataclass(frozen=True)
class SeedComparison:
    """Time to target over the seeds of two runs of one case: the ratio of the olympic
    scores (current / baseline: above 1, slower to reach the target) and a two-sided
    Mann-Whitney U on the per-seed times, a seed that did not converge ranked slowest."""

    ratio: float | None
    p_value: float
    smallest_p: float
    seeds_baseline: int
    seeds_current: int
    method: str = ("olympic score current / baseline; two-sided Mann-Whitney U on each "
                   "seed's wall time to target (a seed short of the target ranks slowest)")

    def decidable(self, alpha: float) -> bool:
        return self.smallest_p < alpha


def compare_seeds(baseline: list[float], current: list[float], baseline_score: float | None,
                  current_score: float | None) -> SeedComparison:
    from scipy.stats import mannwhitneyu  # as ratio_of_medians

    finite = [v for v in baseline + current if math.isfinite(v)]
    slowest = 2 * max(finite, default=1.0) + 1  # ranks a miss behind every finite time
    base = [v if math.isfinite(v) else slowest for v in baseline]
    cur = [v if math.isfinite(v) else slowest for v in current]
    p_value = 1.0
    if base and cur and len(set(base + cur)) > 1:
        p_value = float(mannwhitneyu(cur, base, alternative="two-sided").pvalue)
    ratio = None if not baseline_score or current_score is None else \
        current_score / baseline_score
    return SeedComparison(ratio, p_value, mann_whitney_smallest_p(len(base), len(cur)),
                          len(base), len(cur))


def min_trials_for_verdict(alpha: float = 0.05) -> int:
    """Trials each side needs for Mann-Whitney to be able to reach p < alpha (4 at 0.05:
    2/C(8,4) = 0.029, while 3 trials give at best 0.1 and 2 trials 0.333)."""
    n = 1
    while mann_whitney_smallest_p(n, n) >= alpha:
        n += 1
    return n


def ratio_of_medians(baseline: list[float] | np.ndarray, current: list[float] | np.ndarray,
                     level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> RatioEstimate:
    from scipy.stats import mannwhitneyu  # scipy when a verdict needs it: reports never do

    base = np.asarray(baseline, dtype=float)
    cur = np.asarray(current, dtype=float)
    if base.size == 0 or cur.size == 0:
        raise ValueError("both sides need at least one trial")
    ratio = float(np.median(cur) / np.median(base))
    if base.size < 2 or cur.size < 2:
        return RatioEstimate(ratio, float("-inf"), float("inf"), 1.0, base.size, cur.size)
    rng = np.random.default_rng(seed)
    base_medians = np.median(base[rng.integers(0, base.size, (resamples, base.size))], axis=1)
    cur_medians = np.median(cur[rng.integers(0, cur.size, (resamples, cur.size))], axis=1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(cur_medians / base_medians, [alpha, 1.0 - alpha])
    p_value = float(mannwhitneyu(cur, base, alternative="two-sided").pvalue)
    return RatioEstimate(ratio, float(low), float(high), p_value, base.size, cur.size)


PAIRED_METHOD = ("geometric mean over interleaved rounds of current/baseline (each round: one "
                 "worker process per side, run back to back, order alternating); Student-t "
                 "95% CI and one-sample t-test (two-sided) on the per-round log ratios")


def paired_ratio(baseline: list[float] | np.ndarray, current: list[float] | np.ndarray,
                 level: float = CI_LEVEL) -> RatioEstimate:
    """``current`` against ``baseline`` when value i of each side was measured in the same
    round, back to back: machine drift between rounds cancels in each round's ratio, so
    the test is on the rounds' log ratios, not on trials pooled across rounds."""
    from scipy.stats import t as student_t  # as above

    base = np.asarray(baseline, dtype=float)
    cur = np.asarray(current, dtype=float)
    if base.shape != cur.shape or base.size == 0:
        raise ValueError("paired values need the same, non-zero, number of rounds per side")
    if (base <= 0).any() or (cur <= 0).any():
        raise ValueError("paired ratios need positive values")
    logs = np.log(cur / base)
    n = int(logs.size)
    mean = float(logs.mean())
    if n < 2:
        return RatioEstimate(math.exp(mean), float("-inf"), float("inf"), 1.0, n, n,
                             PAIRED_METHOD, pairs=n)
    se = float(logs.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        p_value = 1.0 if mean == 0.0 else 0.0
        low = high = math.exp(mean)
    else:
        t_stat = mean / se
        p_value = float(2 * student_t.sf(abs(t_stat), n - 1))
        half = float(student_t.ppf(1 - (1 - level) / 2, n - 1)) * se
        low, high = math.exp(mean - half), math.exp(mean + half)
    return RatioEstimate(math.exp(mean), low, high, p_value, n, n, PAIRED_METHOD, pairs=n)


def paired_half_width(baseline: list[float] | np.ndarray, current: list[float] | np.ndarray,
                      level: float = CI_LEVEL) -> float:
    """Half the width of the paired ratio's CI on the log scale (0.04: about +-4%)."""
    est = paired_ratio(baseline, current, level)
    if not (est.ci_low > 0 and math.isfinite(est.ci_high)):
        return math.inf
    return (math.log(est.ci_high) - math.log(est.ci_low)) / 2


def needs_another_round(rounds_per_side: list[list[float]], min_rounds: int, max_rounds: int,
                  target_half_width: float) -> bool:
    """Whether an interleaved case should run another round: fewer than ``min_rounds``,
    or, below ``max_rounds``, a paired CI (each side against the next) still wider than
    ``target_half_width``. The rule looks at the spread only, never at the ratio, so
    stopping early does not bias the test; a noisy case simply gets more rounds."""
    done = min(len(r) for r in rounds_per_side)
    if done < min_rounds:
        return True
    if done >= max_rounds:
        return False
    return any(paired_half_width(a[:done], b[:done]) > target_half_width
               for a, b in zip(rounds_per_side, rounds_per_side[1:], strict=False))


def olympic(values: list[float]) -> float | None:
    """MLPerf Training's olympic score: drop the fastest and the slowest run, mean of the
    rest (a run that did not converge is +inf and so the slowest). None when two or more
    did not converge (what remains holds an inf) or fewer than three runs exist."""
    if len(values) < 3:
        return None
    kept = sorted(values)[1:-1]
    if any(not math.isfinite(v) for v in kept):
        return None
    return sum(kept) / len(kept)
