"""The gate's checks, each a plain function over measurements: each fails, and passes, for its own reason."""

from __future__ import annotations

import pytest

from adapterctl.evaluation import check_gate, degenerate_answers
from adapterctl.lines import GateThresholds

LEARNED = {"train": {"learned": 19, "sample": 20, "of": 20}, "replay": {"learned": 12, "sample": 12, "of": 12}, "target": 0.95}


def metrics(**changes) -> dict:
    values = {"heldout_cases": 4, "heldout_exact": 0.5, "heldout_loss": 1.0, "suites": {"policies": {"score": 1.0}},
              "reference": "reference v1", "reference_agreement": 1.0, "reference_cases": 20, "reference_loss": 0.01,
              "degenerate": {"empty": 0, "repetitive": 0, "max_length": 0, "answers": 40}}
    return {**values, **changes}


def gate(candidate: dict, base: dict | None = None, learned=LEARNED, thresholds=GateThresholds()) -> dict:
    results = {"base": {"metrics": base or metrics(heldout_exact=0.0)}, "candidate": {"metrics": candidate}}
    return check_gate(results, thresholds, learned)


def test_a_good_candidate_passes_every_check_and_each_is_listed():
    verdict = gate(metrics())
    assert verdict["passed"] and verdict["reasons"] == []
    assert [c["check"] for c in verdict["checks"]] == ["learned", "heldout gain", "keeps the reference set", "suite policies", "degenerate output"]
    assert all(c["passed"] and {"value", "limit", "bound"} <= set(c) for c in verdict["checks"])
    assert next(c for c in verdict["checks"] if c["check"] == "learned")["value"] == 0.95  # the weaker split


@pytest.mark.parametrize(("candidate", "learned", "reason"), [
    (metrics(), {"train": {"learned": 1, "sample": 30, "of": 30}}, "learned only 1 of 30 new training answers (greedy; needs 80%)"),
    (metrics(heldout_exact=0.0), LEARNED, "held-out exact match gained +0.00 against base"),
    (metrics(reference_agreement=0.75), LEARNED, "agreement with the reference set's answers fell 1.00 -> 0.75 against the base model"),
    (metrics(suites={"policies": {"score": 0.5}}), LEARNED, "suite policies dropped 1.00 -> 0.50 against base"),
    (metrics(degenerate={"empty": 40, "repetitive": 0, "max_length": 0, "answers": 40}), LEARNED,
     "40 of 40 answers are empty or repetitive (40 empty; limit 10%)"),
    (metrics(degenerate={"empty": 2, "repetitive": 3, "max_length": 30, "answers": 40}), LEARNED,
     "5 of 40 answers are empty or repetitive (2 empty, 3 repetitive; limit 10%)"),
])
def test_each_check_fails_for_its_own_reason_alone(candidate, learned, reason):
    verdict = gate(candidate, learned=learned, thresholds=GateThresholds(min_heldout_gain=0.01))
    assert not verdict["passed"] and len(verdict["reasons"]) == 1 and verdict["reasons"][0].startswith(reason), verdict["reasons"]


def test_answers_cut_at_the_token_limit_are_counted_but_do_not_fail_the_gate():
    verdict = gate(metrics(degenerate={"empty": 1, "repetitive": 0, "max_length": 39, "answers": 40}))
    assert verdict["passed"] and next(c for c in verdict["checks"] if c["check"] == "degenerate output")["value"] == 0.025


def test_a_text_only_reference_set_falls_back_to_its_loss_and_old_runs_skip_the_learned_check():
    text_only = {k: v for k, v in metrics(reference_loss=0.02).items() if k not in ("reference_agreement", "reference_cases")}
    base = {k: v for k, v in metrics(heldout_exact=0.0).items() if k not in ("reference_agreement", "reference_cases")}
    verdict = gate(text_only, base, learned=None)
    assert [c["check"] for c in verdict["checks"]] == ["heldout gain", "forgetting", "suite policies", "degenerate output"]
    assert verdict["reasons"] == ["reference loss rose 100.0% over the base model (limit 5.0%)"]


def test_degenerate_answers_are_counted_with_the_models_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    answers = ["", "   ", "the the the the the the the", "aaaaaaaaaaaaaaaa", "Paris is the capital of France.", "word " * 40]
    assert degenerate_answers(answers, tokenizer, max_new_tokens=32) == {"empty": 2, "repetitive": 3, "max_length": 0, "answers": 6}
    assert degenerate_answers(["Paris is the capital of France, a city of many bridges and museums."], tokenizer, max_new_tokens=8)["max_length"] == 1
