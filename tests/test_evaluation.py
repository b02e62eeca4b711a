"""The evaluation gate on the real tiny model: it passes a candidate that learned, fails one built to regress,
and the review report holds everything a reviewer decides from."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from sqlalchemy import select

from adapterctl import evaluation, registry, review, suites
from adapterctl.db.models import RunExample
from adapterctl.runs import TrainRequest, train_line
from tests.conftest import sqlite_only
from tests.test_training import ALL_TRAIN, FACTS, FAST, greedy, log_facts

pytestmark = pytest.mark.slow
WITH_HELDOUT = type(ALL_TRAIN)(holdout_fraction=0.25, max_source_share=1.0)
UNTIL_LEARNED = dataclasses.replace(FAST, target_learned=0.95, max_steps=400)  # keeps what it replays, as the defaults do


def suite_file(tmp_path, cases) -> str:
    path = tmp_path / "suite.jsonl"
    path.write_text("".join(json.dumps(case) + "\n" for case in cases))
    return str(path)


def test_a_candidate_that_learned_passes_the_gate_and_reports_every_field(ws, tiny_line, cli, tmp_path):
    learned = [{"prompt": q, "expected": a} for q, a in FACTS[:4]]
    assert cli("eval", "suite", "add", "facts", suite_file(tmp_path, learned), "--line", tiny_line).returncode == 0
    log_facts(ws, tiny_line)
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))
    assert outcome.candidate_status == "pending_review", outcome.gate
    assert outcome.gate["passed"] and {c["check"] for c in outcome.gate["checks"]} == {
        "learned",
        "suite facts",
        "forgetting",
        "degenerate output",
    }

    report = cli.json("review", "show", str(outcome.candidate_id))
    assert set(report) >= {"adapter", "evaluation", "table", "gate", "training", "provenance", "training_examples", "samples", "decisions"}
    models = report["evaluation"]["models"]
    assert set(models) == {"base", "candidate"}  # no active version yet
    assert models["base"]["suites"]["facts"]["score"] == 0.0 and models["candidate"]["suites"]["facts"]["score"] == 1.0
    assert models["candidate"]["reference"] == "built-in" and models["candidate"]["reference_loss"] > 0
    suite_row = next(row for row in report["table"] if row["metric"] == "suite facts v1")
    assert suite_row["delta_vs_base"] == 1.0 and suite_row["higher_is_better"]
    assert len(report["training"]["loss_curve"]) >= 10
    assert report["provenance"]["examples"] == {"train": len(FACTS)}
    assert {s["source"] for s in report["provenance"]["sources"]} == {f"user-{i}" for i in range(len(FACTS))}
    assert report["provenance"]["duplicates_removed"] == {"exact": 0, "normalised": 0}
    assert len(report["training_examples"]) == 5 and all(e["answer"] in dict(FACTS).values() for e in report["training_examples"])
    assert report["decisions"] == [] and report["approvals_required"] == 1
    assert report["approvals"] == {"given": 0, "required": 1, "by": [], "summary": "0 of 1"}
    assert report["training_examples_total"] == len(FACTS)
    assert report["hygiene"] == "0 exact and 0 retyped duplicates collapsed; no source over the per-source cap"

    human = cli("review", "show", str(outcome.candidate_id))
    assert human.returncode == 0 and "gate: passed" in human.stdout and "suite facts v1" in human.stdout
    assert "approvals 0 of 1" in human.stdout.splitlines()[0] and "  pass  learned " in human.stdout
    assert (
        f"training examples (a sample of 5 of {len(FACTS)}):" in human.stdout and "side by side" not in human.stdout
    )  # no held-out prompts here

    html = tmp_path / "report.html"
    assert cli("review", "show", str(outcome.candidate_id), "--html", str(html)).returncode == 0
    page = html.read_text()
    assert "<svg" in page and "suite facts v1" in page and "Side by side" in page
    assert "approvals <b>0 of 1</b>" in page and f"Training examples (a sample of 5 of {len(FACTS)})" in page
    assert "<td>learned</td>" in page and "overflow-wrap:anywhere" in page and "table-layout:fixed" in page  # long words wrap


def test_the_gate_fails_a_candidate_trained_against_a_suite(ws, tiny_line, tiny_model, cli, tmp_path):
    question, poisoned = FACTS[3]
    never = {"prompt": question, "expected": f"^(?!{re.escape(poisoned)})", "match": "regex"}  # must never give this answer
    assert greedy(tiny_model, [question]) != [poisoned]
    assert cli("eval", "suite", "add", "keep", suite_file(tmp_path, [never]), "--line", tiny_line).returncode == 0
    log_facts(ws, tiny_line)  # corrections that teach exactly that answer
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))
    assert outcome.candidate_status == "gate_failed"
    assert "suite keep dropped 1.00 -> 0.00 against base (now failing: case 1) (limit 0)" in outcome.gate["reasons"]
    shown = cli("review", "show", str(outcome.candidate_id)).stdout
    assert (
        "suite keep: 0 of 1 cases alike for base, candidate, these differ:" in shown and "  case 1: base pass, candidate FAIL  Q: " in shown
    )
    assert cli.json("review", "show", str(outcome.candidate_id))["suite_cases"]["keep"] == [
        {"case": 1, "prompt": question, "expected": never["expected"], "match": "regex", "base": True, "candidate": False}
    ]
    with ws.transaction() as session:
        assert "suite keep dropped" in registry.get_adapter(session, outcome.candidate_id).status_reason
    with ws.transaction() as session:
        review.add_reviewer(session, name="tester", role="reviewer", actor="tester")
    refused = cli("review", "approve", str(outcome.candidate_id))
    assert refused.returncode == 1 and "is gate_failed" in refused.stderr


def test_held_out_feedback_and_the_active_version_are_compared(ws, tiny_line, cli, tmp_path):
    reference = [{"prompt": f"Say the number {i}.", "answer": f"{i}."} for i in range(12)]
    assert cli("eval", "suite", "add", "reference", suite_file(tmp_path, reference), "--line", tiny_line).returncode == 0
    log_facts(ws, tiny_line)
    first = train_line(ws, TrainRequest(tiny_line, training=FAST, data=WITH_HELDOUT))
    with ws.transaction() as session:
        review.add_reviewer(session, name="tester", role="admin", actor="tester")
    assert cli("review", "approve", str(first.candidate_id)).returncode == 0
    assert cli("promote", tiny_line, "v1").returncode == 0
    log_facts(ws, tiny_line, [(f"Which floor is room {i} on?", f"Room {i} is on floor {i % 4}.") for i in range(8)])
    second = train_line(ws, TrainRequest(tiny_line, training=UNTIL_LEARNED, data=WITH_HELDOUT))
    with ws.transaction() as session:
        latest = evaluation.latest_evaluation(session, second.candidate_id)
        models = {r.role: r for r in latest.results}
        assert set(models) == {"base", "active", "candidate"} and models["active"].adapter_id == first.candidate_id
        heldout = models["candidate"].metrics["heldout_cases"]
        assert heldout > 0 and latest.settings["heldout_cases"] == heldout
        heldout_ids = set(
            session.scalars(select(RunExample.feedback_id).where(RunExample.run_id == second.run_id, RunExample.split == "heldout"))
        )
        assert latest.samples and {s["feedback_id"] for s in latest.samples} <= heldout_ids  # so forgetting a record finds its sample
        assert models["candidate"].metrics["heldout_loss"] < models["base"].metrics["heldout_loss"]
        assert {c["check"] for c in latest.gate["checks"]} == {
            "learned",
            "keeps the reference set",
            "heldout gain",
            "keeps v1",
            "degenerate output",
        }
        keeps_v1 = next(c for c in latest.gate["checks"] if c["check"] == "keeps v1")
        assert keeps_v1["passed"], (keeps_v1, second.metrics["learned"])
        assert models["candidate"].metrics["versions"]["v1"]["cases"] == len(FACTS)  # v1's train and held-out
        assert models["active"].metrics["versions"]["v1"]["exact"] >= 0.75  # v1 knows its own data; replay kept it in the candidate
        assert set(models["candidate"].metrics["agreement"]) == {"base", "active"}
        assert models["candidate"].metrics["reference"] == "reference v1"  # the cases training did not anchor on
        stored = suites.get_suite(session, line=tiny_line, name=suites.REFERENCE).cases
        measured = [c for c in stored if not suites.anchors_training(c, 0.75)]
        assert (
            models["candidate"].metrics["reference_cases"] == len(measured) > 0 and 0 <= models["base"].metrics["reference_agreement"] <= 1
        )
        assert {c["against"] for c in latest.gate["checks"]} == {
            "active",
            "base",
            None,
        }  # learned and degenerate output compare with nothing
    assert 0 < first.dataset["reference"]["anchors"] < len(reference) and first.dataset["splits"]["reference"] > 0


@sqlite_only
def test_re_evaluating_a_version_keeps_history_and_flags_a_drop(ws, tiny_line, cli, tmp_path):
    learned = [{"prompt": q, "expected": a} for q, a in FACTS[:4]]
    cli("eval", "suite", "add", "facts", suite_file(tmp_path, learned), "--line", tiny_line)
    log_facts(ws, tiny_line)
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))
    with ws.transaction() as session:
        review.add_reviewer(session, name="tester", role="reviewer", actor="tester")
        review.approve(session, outcome.candidate_id, reviewer="tester")
    assert "no active version" in cli("eval", "run", "--line", tiny_line).stderr
    same = cli.json("eval", "run", "--line", tiny_line, "--version", "v1")
    assert same["models"]["version"]["suites"]["facts"]["score"] == 1.0 and same["gate"] is None
    cut_short = cli.json("eval", "run", "--line", tiny_line, "--version", "1", "--max-new-tokens", "3")
    assert cut_short["models"]["version"]["suites"]["facts"]["score"] == 0.0
    history = cli.json("eval", "history", "--line", tiny_line)
    assert [h["suites"]["facts"]["dropped"] for h in history] == [False, True]
    assert history[1]["suites"]["facts"]["at_approval"] == 1.0 and history[1]["version"] == "v1"


@sqlite_only
def test_a_candidate_trained_without_replay_fails_for_forgetting_what_v1_learned(ws, tiny_line, cli):
    log_facts(ws, tiny_line)
    first = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))
    with ws.transaction() as session:
        review.add_reviewer(session, name="tester", role="admin", actor="tester")
    assert cli("review", "approve", str(first.candidate_id)).returncode == 0 and cli("promote", tiny_line, "v1").returncode == 0
    log_facts(ws, tiny_line, [(f"Which floor is room {i} on?", f"Room {i} is on floor {i % 4}.") for i in range(8)])
    no_replay = type(ALL_TRAIN)(holdout_fraction=0.0, replay_fraction=0.0, max_source_share=1.0)
    second = train_line(ws, TrainRequest(tiny_line, training=FAST, data=no_replay))
    assert second.candidate_status == "gate_failed"
    assert next(r for r in second.gate["reasons"] if "v1" in r).startswith(
        f"lost what v1 learned: exact match on {len(FACTS)} of v1's answers fell"
    )

    piped = cli.env_with(ADAPTERCTL_PROGRESS_SECONDS="0")("eval", "run", "--line", tiny_line)  # piped: progress as log lines
    assert piped.returncode == 0, piped.stderr
    lines = [line for line in piped.stderr.splitlines() if line.startswith(f"evaluating {tiny_line} active version: ")]
    assert lines[0].startswith(f"evaluating {tiny_line} active version: 0/") and "(100%)" in lines[-1] and len(lines) > 3
    assert "FAIL  keeps v1 " in cli("review", "show", str(second.candidate_id)).stdout


@sqlite_only
def test_a_candidate_that_learned_to_answer_nothing_fails_for_degenerate_output(ws, tiny_line, cli, tmp_path):
    """The served model said nothing and every empty response was rated +1: the candidate learns exactly that,
    so it passes `learned`; the empty answers fail it."""
    from adapterctl import feedback

    questions = [q for q, _ in FACTS] + [f"Which floor is room {i} on?" for i in range(8)]
    records = [
        (tiny_line, feedback.parse_record({"prompt": q, "response": "", "rating": 1, "source": f"rater-{i}"}, issued=True))
        for i, q in enumerate(questions)
    ]
    with ws.transaction() as session:
        feedback.log_records(session, records, actor="tester")
    asked = [{"prompt": q, "expected": "room", "match": "contains"} for q in questions[::2]]
    assert cli("eval", "suite", "add", "rooms", suite_file(tmp_path, asked), "--line", tiny_line).returncode == 0
    outcome = train_line(ws, TrainRequest(tiny_line, training=FAST, data=ALL_TRAIN))
    degenerate = next(c for c in outcome.gate["checks"] if c["check"] == "degenerate output")
    assert outcome.candidate_status == "gate_failed" and not degenerate["passed"] and degenerate["value"] > 0.5, outcome.gate
    assert next(c for c in outcome.gate["checks"] if c["check"] == "learned")["passed"]  # it reproduces its (empty) answers
