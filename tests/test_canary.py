"""Canary assignment and the sequential test, as pure functions: simulated raters with known thumbs-up rates."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from adapterctl.canary import CanarySettings, Tally, assigned_to_canary, judge, parse_share
from adapterctl.errors import InvalidInput


def test_assignment_is_sticky_honours_the_share_and_raising_it_only_moves_users_onto_the_canary():
    users = [f"user-{i}" for i in range(20_000)]
    at_10 = {u for u in users if assigned_to_canary(u, 0.10, "canary-1")}
    at_50 = {u for u in users if assigned_to_canary(u, 0.50, "canary-1")}
    assert abs(len(at_10) / len(users) - 0.10) < 0.01 and abs(len(at_50) / len(users) - 0.50) < 0.015
    assert at_10 <= at_50  # nobody on the canary at 10% leaves it at 50%
    assert at_10 == {u for u in users if assigned_to_canary(u, 0.10, "canary-1")}  # the same every time
    other_canary = {u for u in users if assigned_to_canary(u, 0.10, "canary-2")}
    assert len(at_10 & other_canary) < 0.2 * len(at_10)  # another canary draws other users


@pytest.mark.parametrize("text, share", [("10%", 0.10), ("10", 0.10), ("0.25", 0.25), ("12.5%", 0.125), (" 1% ", 0.01)])
def test_a_share_reads_as_a_percentage(text, share):
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["0%", "100%", "0", "-5%", "150", "ten", ""])
def test_a_share_outside_0_to_100_percent_is_refused(text):
    with pytest.raises(InvalidInput, match="share"):
        parse_share(text)


def simulate(
    rng: random.Random, baseline_rate: float, canary_rate: float, ratings: int, test: CanarySettings, *, stop_when_not_worse: bool = True
) -> tuple[str, int]:
    """Ratings arrive one by one, half from each version's users; the test is asked after every one."""
    counts = {"baseline": [0, 0], "canary": [0, 0]}
    rates = {"baseline": baseline_rate, "canary": canary_rate}
    for seen in range(1, ratings + 1):
        side = "canary" if rng.random() < 0.5 else "baseline"
        counts[side][0] += 1
        counts[side][1] += rng.random() < rates[side]
        decision = judge(Tally(*counts["baseline"]), Tally(*counts["canary"]), test).decision
        if decision == "worse" or (decision == "not_worse" and stop_when_not_worse):
            return decision, seen
    return "undecided", ratings


def naive_z_test_says_worse(baseline: Tally, canary: Tally, alpha: float) -> bool:
    """A fixed-sample one-sided z-test, wrongly asked after every rating."""
    pooled = (baseline.ups + canary.ups) / (baseline.ratings + canary.ratings)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / baseline.ratings + 1 / canary.ratings))
    return spread > 0 and (canary.rate - baseline.rate) / spread < NormalDist().inv_cdf(alpha)


def test_looking_after_every_rating_keeps_wrong_rollbacks_within_alpha_where_a_repeated_z_test_does_not():
    """An A/A canary (both at 70%): the share of runs ever rolled back stays within alpha; a fixed-sample
    z-test asked as often rolls back far more of them."""
    test = CanarySettings(alpha=0.05, min_feedback=20)
    rng = random.Random(7)
    runs, ratings = 100, 1500
    ours = naive = 0
    for _ in range(runs):
        counts = {"baseline": [0, 0], "canary": [0, 0]}
        naive_fired = False
        for _ in range(ratings):
            side = "canary" if rng.random() < 0.5 else "baseline"
            counts[side][0] += 1
            counts[side][1] += rng.random() < 0.7
            baseline, canary = Tally(*counts["baseline"]), Tally(*counts["canary"])
            if min(baseline.ratings, canary.ratings) >= test.min_feedback:
                naive_fired = naive_fired or naive_z_test_says_worse(baseline, canary, test.alpha)
                if judge(baseline, canary, test).decision == "worse":
                    ours += 1
                    break
        naive += naive_fired
    assert ours / runs <= test.alpha, ours
    assert naive / runs > 2 * test.alpha, naive  # what continuous looking does to a fixed-sample test


def test_a_canary_worse_by_10_points_is_rolled_back_and_one_as_good_is_judged_not_worse():
    test = CanarySettings(max_drop=0.05, alpha=0.05, beta=0.10)
    rng = random.Random(11)
    worse = [simulate(rng, 0.80, 0.70, 20_000, test) for _ in range(20)]
    assert all(decision == "worse" for decision, _ in worse), worse
    needed = sorted(seen for _, seen in worse)
    as_good = [simulate(rng, 0.80, 0.80, 20_000, test) for _ in range(20)]
    assert all(decision == "not_worse" for decision, _ in as_good), as_good
    print(
        f"\nratings until a 10-point drop was rolled back: median {needed[len(needed) // 2]}, most {needed[-1]}; "
        f"until an equal canary was judged not worse: median {sorted(s for _, s in as_good)[10]}"
    )


def test_nothing_is_judged_before_the_minimum_feedback_on_both_sides():
    test = CanarySettings(min_feedback=50)
    verdict = judge(Tally(1000, 900), Tally(49, 0), test)  # plainly worse, but the canary has 49 ratings
    assert verdict.decision == "undecided" and "fewer than 50" in verdict.reason
    assert judge(Tally(1000, 900), Tally(50, 0), test).decision == "worse"


def test_the_bounds_shown_contain_the_rate_and_narrow_with_more_ratings():
    few, many = Tally(100, 70).bounds(0.05, 500), Tally(10_000, 7_000).bounds(0.05, 500)
    assert few[0] < 0.7 < few[1] and many[0] < 0.7 < many[1]
    assert many[1] - many[0] < (few[1] - few[0]) / 5
    assert Tally().bounds(0.05, 500) == (0.0, 1.0)


def test_settings_out_of_range_are_named():
    problems = CanarySettings(max_drop=0, alpha=0.5, beta=0, min_feedback=0).problems()
    assert [p.split()[0] for p in problems] == ["max_drop", "alpha", "beta", "min_feedback"]


def test_health_aborts_on_failures_and_slowness_only_once_they_are_shown():
    from adapterctl.canary import Health, unhealthy

    test = CanarySettings()
    assert unhealthy(Health(500, 0, 80.0), Health(500, 5, 90.0), test) is None  # 1% failed: within the 5% allowed
    assert "failed 25 of 25" in unhealthy(Health(25, 0, 80.0), Health(25, 25, None), test)
    assert unhealthy(Health(25, 0, 80.0), Health(5, 5, None), test) is None  # 5 of 5 could still be chance
    assert unhealthy(Health(100, 0, 80.0), Health(100, 0, 400.0), test) is None  # fewer than min_requests: not compared yet
    assert "p99 latency is 400 ms, more than 2 times the baseline's 80 ms" in unhealthy(Health(300, 0, 80.0), Health(200, 0, 400.0), test)
    assert unhealthy(Health(300, 0, 80.0), Health(200, 0, 150.0), test) is None


def test_routing_sends_named_users_to_their_side_and_anonymous_requests_at_random():
    from adapterctl.serving.canary_routing import CanaryRouter, Route, Split

    router = CanaryRouter(None, ["facts"])
    router.splits = {"facts": Split(canary_id=7, version="facts@v2", share=0.5)}
    held = ["facts@v2"]
    named = {router.route("facts", "alice", held) for _ in range(20)}
    assert len(named) == 1  # the same user, the same side
    anonymous = {router.route("facts", None, held).arm for _ in range(200)}
    assert anonymous == {"baseline", "canary"}
    assert router.route("facts", None, []) == Route("facts")  # the canary is not loaded yet: nobody is counted
    assert router.route("facts@v1", "alice", held) == Route("facts@v1")  # a named version is never routed
    assert router.route("other", "alice", held) == Route("other")
