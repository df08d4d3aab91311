"""The statistics: bootstrap CI coverage on a known distribution, CV, percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.measurement.stats import bootstrap_median_ci, percentiles, summarize


def test_ci_covers_true_median_about_95_percent():
    # Normal(10, 1): true median 10. Percentile bootstrap of the median at n=40
    # should cover it close to 95% of the time.
    rng = np.random.default_rng(7)
    trials, covered = 400, 0
    for i in range(trials):
        sample = rng.normal(10.0, 1.0, size=40)
        low, high = bootstrap_median_ci(sample, resamples=1000, seed=i)
        covered += low <= 10.0 <= high
    coverage = covered / trials
    assert 0.90 <= coverage <= 0.99, coverage


def test_ci_width_matches_asymptotic_theory():
    # The median of n normal draws has standard error sqrt(pi/2) * sigma / sqrt(n).
    rng = np.random.default_rng(3)
    n, sigma = 400, 2.0
    widths = []
    for i in range(30):
        low, high = bootstrap_median_ci(rng.normal(0, sigma, n), resamples=2000, seed=i)
        widths.append((high - low) / 2)
    expected = 1.96 * math.sqrt(math.pi / 2) * sigma / math.sqrt(n)
    assert np.median(widths) == pytest.approx(expected, rel=0.15)


def test_summary_fields():
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = summarize(values)
    assert s.n == 5 and s.median == 3.0 and s.mean == 22.0
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert s.cv == pytest.approx(s.std / s.mean)
    assert s.ci_low <= s.median <= s.ci_high
    assert s.ci_level == 0.95


def test_constant_values_have_zero_width():
    s = summarize([5.0] * 10)
    assert (s.ci_low, s.ci_high, s.cv, s.rel_half_width) == (5.0, 5.0, 0.0, 0.0)


def test_percentiles():
    p = percentiles(list(range(1, 101)))
    assert p["p50"] == pytest.approx(50.5)
    assert p["p99"] == pytest.approx(99.01)


def test_bootstrap_is_deterministic():
    data = np.random.default_rng(1).exponential(size=25)
    assert bootstrap_median_ci(data) == bootstrap_median_ci(data)
