"""Canary releases, the pure part: who gets the canary, and when live feedback proves it worse (or not).

    assigned_to_canary(key, share, salt)   sticky: the same user (key) always lands on the same side
                                           of a share; raising the share only moves users onto the canary
    judge(baseline, canary, test)          the sequential test, valid however often it is looked at
    unhealthy(baseline, canary, test)      the canary fails requests or answers slowly: why, or None

The test compares the thumbs-up rates of the two versions (a rating > 0 is up; a lower rating, or a
correction, is down). For each version it keeps a confidence sequence: bounds on its true rate that
hold at every moment at once, with probability 1 - alpha/2 (Robbins' normal mixture for a bounded
outcome, Howard et al. 2021), so looking after every rating does not inflate the error rates as a
repeated fixed-sample test would.

- **worse**: the canary's upper bound is below the baseline's lower bound. If the canary is in truth
  no worse, this happens with probability at most `alpha`, however long the canary runs: the chance of
  a wrong rollback.
- **not worse**: the canary's lower bound (at beta) exceeds the baseline's upper bound minus
  `max_drop`. If the canary is in truth worse by `max_drop` or more, this happens with probability at
  most `beta`: the chance of completing a canary that is too bad.
- otherwise, or before `min_feedback` ratings on each side: **undecided**, keep collecting.

The bounds assume only that outcomes lie in [0, 1] (variance at most 1/4): no normal approximation, no
minimum sample for validity, at the price of some more ratings than a test that estimates the variance.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from adapterctl.errors import InvalidInput

BUCKETS = 10_000
"""Assignment resolution: a share is honoured to 0.01%."""


def assigned_to_canary(key: str, share: float, salt: str) -> bool:
    """Whether the end user `key` is served the canary at `share` (0..1). Stable for a (key, salt): a user
    keeps their side while the share holds, and raising it only moves users onto the canary. The salt
    (say, the canary's id) gives each canary its own draw of users."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS < round(share * BUCKETS)


def percent(share: float) -> str:
    """0.1 -> '10%', 0.125 -> '12.5%'."""
    return f"{share * 100:.4g}%"


def parse_share(text: str) -> float:
    """'10%', '10' or '0.1' -> 0.1; a share of 0 or 100% is not a canary."""
    value = text.strip()
    try:
        share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise InvalidInput(f"share {text!r} is not a percentage like 10%") from None
    if share >= 1 and not value.endswith("%") and share < 100:
        share /= 100  # "10" means 10%
    if not 0 < share < 1:
        raise InvalidInput(f"share {text!r} must be more than 0% and less than 100%")
    return share


@dataclass(frozen=True)
class CanarySettings:
    max_drop: float = 0.05
    """The worst acceptable drop of the thumbs-up rate (0.05: 5 points)."""
    alpha: float = 0.05
    """The highest chance of rolling back a canary that is in truth no worse."""
    beta: float = 0.10
    """The highest chance of completing a canary that is in truth worse by max_drop or more."""
    min_feedback: int = 50
    """Ratings each version needs before the test judges."""
    prior_ratings: int = 500
    """Where the bounds are tightest (the mixture's scale): about the ratings a canary is expected to get."""
    max_error_rate: float = 0.05
    """The canary is aborted once its share of failed requests is above this (at confidence 1 - alpha)."""
    max_latency_ratio: float = 2.0
    """The canary is aborted once its p99 latency is above this multiple of the baseline's."""
    min_requests: int = 200
    """Requests each version needs before their latencies are compared (and where the error-rate bound is tightest)."""

    def problems(self) -> list[str]:
        checks = [
            (0 < self.max_drop < 1, f"max_drop must be in (0, 1) (got {self.max_drop})"),
            (0 < self.alpha < 0.5, f"alpha must be in (0, 0.5) (got {self.alpha})"),
            (0 < self.beta < 0.5, f"beta must be in (0, 0.5) (got {self.beta})"),
            (self.min_feedback >= 1, f"min_feedback must be at least 1 (got {self.min_feedback})"),
            (self.prior_ratings >= 1, f"prior_ratings must be at least 1 (got {self.prior_ratings})"),
            (0 < self.max_error_rate < 1, f"max_error_rate must be in (0, 1) (got {self.max_error_rate})"),
            (self.max_latency_ratio >= 1, f"max_latency_ratio must be at least 1 (got {self.max_latency_ratio})"),
            (self.min_requests >= 1, f"min_requests must be at least 1 (got {self.min_requests})"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class Tally:
    """Outcomes in [0, 1] of one version: thumbs up (1) or down (0), or any score rescaled to [0, 1]."""

    ratings: int = 0
    ups: float = 0

    @property
    def rate(self) -> float | None:
        return self.ups / self.ratings if self.ratings else None

    def bounds(self, error: float, prior_ratings: int) -> tuple[float, float]:
        """Bounds on the true rate that hold at every number of ratings at once, except with probability `error`."""
        if not self.ratings:
            return 0.0, 1.0
        rate, half_width = self.ups / self.ratings, _mixture_boundary(self.ratings / 4, prior_ratings / 4, error) / self.ratings
        return max(0.0, rate - half_width), min(1.0, rate + half_width)


@dataclass(frozen=True)
class Verdict:
    decision: str
    """worse, not_worse or undecided."""
    baseline: tuple[float, float]
    canary: tuple[float, float]
    """Each version's thumbs-up rate bounds at 1 - alpha (shown to people; the decisions use their own levels)."""
    reason: str


def judge(baseline: Tally, canary: Tally, test: CanarySettings = CanarySettings()) -> Verdict:
    shown = (baseline.bounds(test.alpha, test.prior_ratings), canary.bounds(test.alpha, test.prior_ratings))
    if min(baseline.ratings, canary.ratings) < test.min_feedback:
        return Verdict(
            "undecided", *shown, f"fewer than {test.min_feedback} ratings on a side (baseline {baseline.ratings}, canary {canary.ratings})"
        )
    base_low, _ = baseline.bounds(test.alpha / 2, test.prior_ratings)
    _, canary_high = canary.bounds(test.alpha / 2, test.prior_ratings)
    if canary_high < base_low:
        return Verdict(
            "worse",
            *shown,
            f"the canary's thumbs-up rate is at most {canary_high:.1%}, the baseline's at least "
            f"{base_low:.1%} (each bound holds with {1 - test.alpha / 2:.1%} at any time)",
        )
    base_high_beta = baseline.bounds(test.beta / 2, test.prior_ratings)[1]
    canary_low_beta = canary.bounds(test.beta / 2, test.prior_ratings)[0]
    if canary_low_beta > base_high_beta - test.max_drop:
        return Verdict(
            "not_worse",
            *shown,
            f"the canary's thumbs-up rate is at least {canary_low_beta:.1%}, within "
            f"{test.max_drop:.0%} of the baseline's at most {base_high_beta:.1%}",
        )
    return Verdict("undecided", *shown, "the bounds overlap: keep collecting ratings")


@dataclass(frozen=True)
class Health:
    """One version's requests during the canary: how many, how many failed, its p99 latency."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None


def unhealthy(baseline: Health, canary: Health, test: CanarySettings = CanarySettings()) -> str | None:
    """Why the canary must be aborted whatever its ratings say, or None: its error rate is above
    `max_error_rate` (the lower bound of a confidence sequence at alpha, tightest near `min_requests`
    requests, so valid when looked at continuously), or its p99 latency is above `max_latency_ratio` times the baseline's (a threshold,
    judged once each side has `min_requests`)."""
    if canary.requests:
        low, _ = Tally(canary.requests, canary.errors).bounds(test.alpha, test.min_requests)
        if low > test.max_error_rate:
            return (
                f"the canary failed {canary.errors} of {canary.requests} requests: its error rate is at least {low:.1%} "
                f"(holds with {1 - test.alpha:.0%} at any time), above the {test.max_error_rate:.0%} allowed"
            )
    if (
        min(baseline.requests - baseline.errors, canary.requests - canary.errors) >= test.min_requests
        and baseline.p99_ms
        and canary.p99_ms
        and canary.p99_ms > test.max_latency_ratio * baseline.p99_ms
    ):
        return (
            f"the canary's p99 latency is {canary.p99_ms:.0f} ms, more than {test.max_latency_ratio:g} times the "
            f"baseline's {baseline.p99_ms:.0f} ms"
        )
    return None


def _mixture_boundary(variance: float, rho: float, error: float) -> float:
    """Robbins' normal-mixture boundary for a sub-Gaussian sum with variance process `variance`: the sum
    of centred outcomes stays below it at every time at once, except with probability `error`."""
    return math.sqrt(2 * (variance + rho) * math.log(math.sqrt((variance + rho) / rho) / error))
