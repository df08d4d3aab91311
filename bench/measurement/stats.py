"""Summary statistics of independent trials: median, bootstrap CI, CV, percentiles."""

from __future__ import annotations

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
