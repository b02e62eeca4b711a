"""The gate's checks, each a plain function over measurements: each fails, and passes, for its own reason."""

from __future__ import annotations

import pytest

from adapterctl.evaluation import check_gate, degenerate_answers, paired_gain_interval
from adapterctl.lines import GateThresholds

LEARNED = {"train": {"learned": 19, "sample": 20, "of": 20}, "replay": {"learned": 12, "sample": 12, "of": 12}, "target": 0.95}


def metrics(correct: int = 6, **changes) -> dict:
    """One model's measurements: `correct` of 12 held-out answers right, every other check passing."""
    values = {
        "heldout_cases": 12,
        "heldout_correct": [1] * correct + [0] * (12 - correct),
        "heldout_exact": round(correct / 12, 4),
        "heldout_loss": 1.0,
        "suites": {"policies": suite(passed=4)},
        "reference": "reference v1",
        "reference_agreement": 1.0,
        "reference_cases": 20,
        "reference_loss": 0.01,
        "versions": {},
        "degenerate": {"empty": 0, "repetitive": 0, "max_length": 0, "answers": 40},
    }
    return {**values, **changes}


def suite(passed: int, failed: tuple = ()) -> dict:
    return {"version": 1, "passed": passed, "cases": 4, "score": passed / 4, "failed": list(failed)}


def gate(candidate: dict, base: dict | None = None, learned=LEARNED, thresholds=GateThresholds(), active: dict | None = None) -> dict:
    results = {
        "base": {"metrics": base or metrics(correct=0)},
        **({"active": {"metrics": active}} if active else {}),
        "candidate": {"metrics": candidate},
    }
    return check_gate(results, thresholds, learned)


def test_a_good_candidate_passes_every_check_and_each_is_listed():
    verdict = gate(metrics())
    assert verdict["passed"] and verdict["reasons"] == []
    assert [c["check"] for c in verdict["checks"]] == [
        "learned",
        "heldout gain",
        "keeps the reference set",
        "suite policies",
        "degenerate output",
    ]
    assert all(c["passed"] and c["verdict"] == "pass" and {"value", "limit", "bound", "detail"} <= set(c) for c in verdict["checks"])
    assert next(c for c in verdict["checks"] if c["check"] == "learned")["value"] == 0.95  # the weaker split


@pytest.mark.parametrize(
    ("candidate", "learned", "reason"),
    [
        (metrics(), {"train": {"learned": 1, "sample": 30, "of": 30}}, "learned only 1 of 30 new training answers (greedy; needs 80%)"),
        (metrics(correct=0), LEARNED, "held-out exact match gained +0.00 against base"),
        (metrics(reference_agreement=0.75), LEARNED, "agreement with the reference set's answers fell 1.00 -> 0.75 against the base model"),
        (
            metrics(suites={"policies": suite(passed=2, failed=(1, 3))}),
            LEARNED,
            "suite policies dropped 1.00 -> 0.50 against base (now failing: case 2, 4)",
        ),
        (
            metrics(degenerate={"empty": 40, "repetitive": 0, "max_length": 0, "answers": 40}),
            LEARNED,
            "40 of 40 answers are empty or repetitive (40 empty; limit 10%)",
        ),
        (
            metrics(degenerate={"empty": 2, "repetitive": 3, "max_length": 30, "answers": 40}),
            LEARNED,
            "5 of 40 answers are empty or repetitive (2 empty, 3 repetitive; limit 10%)",
        ),
    ],
)
def test_each_check_fails_for_its_own_reason_alone(candidate, learned, reason):
    verdict = gate(candidate, learned=learned, thresholds=GateThresholds(min_heldout_gain=0.01))
    assert not verdict["passed"] and len(verdict["reasons"]) == 1 and verdict["reasons"][0].startswith(reason), verdict["reasons"]


def test_answers_cut_at_the_token_limit_are_counted_but_do_not_fail_the_gate():
    verdict = gate(metrics(degenerate={"empty": 1, "repetitive": 0, "max_length": 39, "answers": 40}))
    assert verdict["passed"] and next(c for c in verdict["checks"] if c["check"] == "degenerate output")["value"] == 0.025


def test_a_text_only_reference_set_falls_back_to_its_loss_and_old_runs_skip_the_learned_check():
    text_only = {k: v for k, v in metrics(reference_loss=0.02).items() if k not in ("reference_agreement", "reference_cases")}
    base = {k: v for k, v in metrics(correct=0).items() if k not in ("reference_agreement", "reference_cases")}
    verdict = gate(text_only, base, learned=None)
    assert [c["check"] for c in verdict["checks"]] == ["heldout gain", "forgetting", "suite policies", "degenerate output"]
    assert verdict["reasons"] == ["reference loss rose 100.0% over the base model (limit 5.0%)"]


def test_degenerate_answers_are_counted_with_the_models_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    answers = ["", "   ", "the the the the the the the", "aaaaaaaaaaaaaaaa", "Paris is the capital of France.", "word " * 40]
    assert degenerate_answers(answers, tokenizer, max_new_tokens=32) == {"empty": 2, "repetitive": 3, "max_length": 0, "answers": 6}
    assert (
        degenerate_answers(["Paris is the capital of France, a city of many bridges and museums."], tokenizer, max_new_tokens=8)[
            "max_length"
        ]
        == 1
    )


def test_a_held_out_set_below_the_minimum_is_too_small_to_judge_and_neither_passes_nor_fails():
    few = metrics(heldout_cases=4, heldout_correct=[0, 0, 0, 0], heldout_exact=0.0)
    verdict = gate(few, base=metrics(heldout_cases=4, heldout_correct=[1, 1, 0, 0], heldout_exact=0.5))
    check = next(c for c in verdict["checks"] if c["check"] == "heldout gain")
    assert check["verdict"] == "too small to judge" and check["passed"] is None and check["value"] == -0.5
    assert verdict["passed"] and verdict["reasons"] == []
    assert verdict["undecided"] == [
        "heldout gain: 4 held-out cases; 10 are needed to judge (95% interval of the gain -0.85 to +0.10)"
    ]  # worked by hand: Wilson 0..0.49 and 0.15..0.85
    judged = gate(
        few, base=metrics(heldout_cases=4, heldout_correct=[1, 1, 0, 0], heldout_exact=0.5), thresholds=GateThresholds(min_heldout_cases=4)
    )
    assert not judged["passed"] and judged["reasons"][0].startswith("held-out exact match gained -0.50 against base")


def test_the_held_out_gain_is_judged_against_the_active_version_with_figures_for_base_and_active():
    verdict = gate(metrics(correct=9), base=metrics(correct=0), active=metrics(correct=10))
    check = next(c for c in verdict["checks"] if c["check"] == "heldout gain")
    assert check["against"] == "active" and check["value"] == -0.0833 and not check["passed"]
    assert "exact match 0.75 (base 0.00, active 0.83)" in check["detail"] and "over 12 cases" in check["detail"]


def test_the_paired_interval_is_newcombes_and_narrows_with_more_cases():
    assert paired_gain_interval([1] * 10, [1] * 10) == (-0.2775, 0.2775)  # Wilson's lower bound of 10/10 is 0.7225
    low, high = paired_gain_interval([1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0])
    assert low < 2 / 6 < high and low >= -1 and high <= 1
    wide, narrow = paired_gain_interval([1, 0] * 5, [0, 0] * 5), paired_gain_interval([1, 0] * 50, [0, 0] * 50)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert narrow[0] > 0.3  # 50 of 100 gained: clearly better
    assert paired_gain_interval(None, [1]) == (-1.0, 1.0)  # an evaluation stored before per-case results


def test_a_candidate_that_lost_an_earlier_versions_data_fails_naming_that_version():
    versions = {"v1": {"exact": 0.25, "cases": 32}, "v2": {"exact": 1.0, "cases": 32}}
    active = metrics(versions={"v1": {"exact": 0.97, "cases": 32}, "v2": {"exact": 1.0, "cases": 32}})
    verdict = gate(metrics(correct=6, versions=versions), active=active)
    assert [c["check"] for c in verdict["checks"] if c["check"].startswith("keeps v")] == ["keeps v1", "keeps v2"]
    assert verdict["reasons"] == [
        "lost what v1 learned: exact match on 32 of v1's answers fell 0.97 -> 0.25 against active (limit a drop of 0.10)"
    ]
    without_active = gate(metrics(versions=versions))
    assert without_active["passed"] and not any(c["check"].startswith("keeps v") for c in without_active["checks"])


def test_the_keeps_check_shows_agreement_with_base_and_active_exact_and_normalised():
    candidate = metrics(
        reference_agreement=0.95, agreement={"base": {"exact": 0.9, "normalised": 0.95}, "active": {"exact": 1.0, "normalised": 1.0}}
    )
    check = next(c for c in gate(candidate, active=metrics())["checks"] if c["check"] == "keeps the reference set")
    assert check["passed"] and check["value"] == 0.05
    assert "same answer as base 0.95 (exactly as written 0.90); same answer as active 1.00 (exactly as written 1.00)" in check["detail"]
