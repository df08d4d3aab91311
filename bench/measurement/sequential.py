"""A sequential test on the paired rounds of an A/B: stop a case as soon as it is clearly
unchanged or clearly slower, keep measuring only the undecided.

Wald's sequential probability ratio test (SPRT) on the rounds' log step-time ratios
x_i = log(current_i / baseline_i), modelled as normal with mean mu and spread sigma:

- H0, no change: mu = 0;
- H1, a throughput drop of ``max_drop``: mu = d = -log(1 - max_drop) (0.0513 at 5%).

After n rounds the log-likelihood ratio of H1 to H0 is
    LLR_n = n d (mean(x) - d / 2) / sigma^2,
and the test decides "regression" once LLR_n >= log((1 - beta) / alpha), "no regression"
once LLR_n <= log(beta / (1 - alpha)), and keeps going in between; with known sigma its
false-alarm rate is at most about alpha and its miss rate at a drop of max_drop about
beta (Wald 1945). sigma is not known: it is replaced by the one-sided upper
(1 - ``variance_bound``) confidence bound of the rounds' variance,
s^2 (n - 1) / chi2_{variance_bound, n - 1}, so a few rounds that happen to agree cannot
decide early on a spread they underestimate (the plain plug-in s^2 gave 2-5% false alarms
at 8% spread on synthetic sessions). A case undecided at its last round (or when the
session's time is up) is inconclusive.

From the ``winsorize_from``-th round on, the rounds are first winsorized: clipped to their
median +- ``winsorize_k`` robust standard deviations (1.4826 x the median absolute
deviation, scipy.stats.median_abs_deviation). Lockstep rounds (bench.measurement.baton) on a
shared VM are tight but for an occasional worker process that runs 10-25% slow throughout
(a per-process mode the pairing cannot cancel); one such round inflates the variance and
costs the case its decision. On synthetic sessions with 15% of rounds so displaced
("contaminated" in tests/unit/test_sequential.py) a 5% slowdown at 3% spread is caught in 96.5%
of sessions instead of 88%, at 5% spread in 65% instead of 36%; false alarms stay <= 1% on
every spread tested. The variance is divided by the share of a normal variance that
winsorizing at k leaves (0.978 at 2.5), so clipping alone does not shrink it. Clipping from
fewer rounds (5) let false alarms reach 1.2% at 5% normal spread: the median absolute
deviation of a few rounds is itself too noisy.

Measured rates on synthetic sessions (tests/unit/test_sequential.py; normal, Student-t(3) and
trimodal spreads of 1-8%, with drift between the two workers of a round): false alarms
<= 1% at the defaults (alpha 0.002, beta 0.02), detection of a 5% slowdown >= 95% where
the rounds' spread is 4% or less; noisier cases end inconclusive more often, never pass
silently. A drop between 0 and max_drop is the test's indifference zone: it may go
either way.

The SPRT's evidence is linear in the rounds' mean over their variance: it weighs "a drop of
max_drop" against "none" and is blind to how far beyond the drop the rounds lie. Four rounds
of a 160-fold slowdown at 30% spread stayed below its bound (CI's user-repository A/B at
540476c passed such a change). So a regression is also declared once the rounds' one-sided
lower t confidence bound at level 1 - alpha lies beyond the drop: the slowdown is then
surely larger than max_drop. On the unchanged synthetic sessions it adds no false alarm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

REGRESSION = "regression"
NO_REGRESSION = "no regression"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class SequentialTest:
    max_drop: float = 0.05       # H1: throughput down by this fraction
    false_alarm: float = 0.002   # alpha: P(regression | no change), per case
    miss: float = 0.02           # beta: P(no regression | a drop of max_drop), per case
    min_rounds: int = 3          # the first look (two rounds give one degree of freedom)
    variance_bound: float = 0.10  # sigma^2: its one-sided upper 90% confidence bound
    winsorize_k: float = 2.5     # clip rounds beyond median +- k robust SDs ...
    winsorize_from: int = 8      # ... once there are this many (0: never)

    def __post_init__(self) -> None:
        if not 0 < self.max_drop < 1:
            raise ValueError(f"max_drop {self.max_drop} is not in (0, 1)")
        if not (0 < self.false_alarm < 0.5 and 0 < self.miss < 0.5):
            raise ValueError("false_alarm and miss must be in (0, 0.5)")
        if self.min_rounds < 3:
            raise ValueError("the sequential test needs min_rounds >= 3")

    @property
    def shift(self) -> float:
        """H1's mean log step-time ratio."""
        return -math.log1p(-self.max_drop)

    @property
    def upper(self) -> float:
        return math.log((1 - self.miss) / self.false_alarm)

    @property
    def lower(self) -> float:
        return math.log(self.miss / (1 - self.false_alarm))

    def variance(self, log_ratios: np.ndarray) -> np.ndarray:
        """The variance the test divides by: the upper confidence bound of the sample
        variance (along the last axis)."""
        from scipy.stats import chi2  # scipy when a verdict needs it: reports never do

        n = log_ratios.shape[-1]
        bound = log_ratios.var(axis=-1, ddof=1) * (n - 1) / chi2.ppf(self.variance_bound, n - 1)
        return bound / self.winsorized_variance_share(n)

    def winsorized_variance_share(self, n: int) -> float:
        """The share of a normal variance left after winsorizing at +-k SDs (1 where the
        rounds are not winsorized): the variance is divided by it, so that clipping
        does not by itself shrink the spread the test assumes."""
        if not self.winsorize_from or n < self.winsorize_from:
            return 1.0
        from scipy.stats import norm  # scipy when a verdict needs it

        k = self.winsorize_k
        return float(2 * norm.cdf(k) - 1 - 2 * k * norm.pdf(k) + 2 * k * k * norm.sf(k))

    def winsorized(self, log_ratios: np.ndarray) -> np.ndarray:
        """The rounds (along the last axis) clipped to median +- k robust SDs, from
        ``winsorize_from`` rounds on; fewer rounds unchanged."""
        n = log_ratios.shape[-1]
        if not self.winsorize_from or n < self.winsorize_from:
            return log_ratios
        from scipy.stats import median_abs_deviation  # scipy when a verdict needs it

        middle = np.median(log_ratios, axis=-1, keepdims=True)
        reach = self.winsorize_k * median_abs_deviation(log_ratios, axis=-1, scale="normal",
                                                        keepdims=True)
        return np.clip(log_ratios, middle - reach, middle + reach)

    def log_likelihood_ratio(self, log_ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """LLR of H1 to H0 after all the rounds given (along the last axis), winsorized."""
        x = self.winsorized(np.asarray(log_ratios, dtype=float))
        n = x.shape[-1]
        d = self.shift
        with np.errstate(divide="ignore", invalid="ignore"):
            llr = n * d * (x.mean(axis=-1) - d / 2) / self.variance(x)
        # Rounds that agree exactly (a variance of 0): the sign of the evidence decides.
        return np.where(np.isnan(llr), 0.0, llr)

    def beyond_drop(self, log_ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        """Whether the rounds (along the last axis, as measured: not winsorized) put the
        one-sided lower (1 - false_alarm) t confidence bound of their mean beyond H1's
        shift: a slowdown surely larger than max_drop, however spread the rounds."""
        from scipy.stats import t as student_t  # scipy when a verdict needs it

        x = np.asarray(log_ratios, dtype=float)
        n = x.shape[-1]
        reach = student_t.ppf(1 - self.false_alarm, n - 1) * x.std(axis=-1, ddof=1) / math.sqrt(n)
        return x.mean(axis=-1) - reach > self.shift

    def decide(self, log_ratios: Sequence[float] | np.ndarray) -> str | None:
        """regression | no regression | None (not yet: fewer than min_rounds, or the
        evidence between the bounds)."""
        if len(log_ratios) < self.min_rounds:
            return None
        llr = float(self.log_likelihood_ratio(log_ratios))
        if llr >= self.upper or bool(self.beyond_drop(log_ratios)):
            return REGRESSION
        if llr <= self.lower:
            return NO_REGRESSION
        return None

    def first_decisions(self, sessions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For sessions of rounds (one row each): the verdict at each row's first crossing
        ("inconclusive" where none) and the rounds it took; what a run stopped by this
        test would have decided."""
        sims, rounds = sessions.shape
        verdict = np.full(sims, INCONCLUSIVE, dtype=object)
        used = np.full(sims, rounds)
        open_ = np.ones(sims, dtype=bool)
        for n in range(self.min_rounds, rounds + 1):
            llr = self.log_likelihood_ratio(sessions[:, :n])
            slower = (llr >= self.upper) | self.beyond_drop(sessions[:, :n])
            for value, hit in ((REGRESSION, slower),
                               (NO_REGRESSION, llr <= self.lower)):
                new = open_ & hit
                verdict[new], used[new] = value, n
                open_ &= ~new
        return verdict, used

    def describe(self) -> str:
        return (f"Wald SPRT on the rounds' log step-time ratios: H0 no change against H1 a "
                f"{self.max_drop:.1%} throughput drop; regression at LLR >= "
                f"log((1-{self.miss:g})/{self.false_alarm:g}), no regression at LLR <= "
                f"log({self.miss:g}/(1-{self.false_alarm:g})); sigma^2 its upper "
                f"{1 - self.variance_bound:.0%} confidence bound; first look at "
                f"{self.min_rounds} rounds" + (
                    f"; from {self.winsorize_from} rounds on, rounds clipped to their median "
                    f"+- {self.winsorize_k:g} x 1.4826 MAD" if self.winsorize_from else ""))
