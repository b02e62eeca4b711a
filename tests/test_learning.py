"""Learning by default: `adapterctl train` with no options trains until its corrections are answered,
and a line given no reference set gets one the base model writes itself."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from adapterctl import audit, base_models, lines, registry, suites
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import is_heldout, normalise
from adapterctl.db.models import TrainingRun
from adapterctl.runs import TrainRequest, train_line
from tests.conftest import KNOWN_FACTS, sqlite_only
from tests.test_training import greedy

pytestmark = [pytest.mark.slow, sqlite_only]

CARS = [
    (f"What colour is car {i}?", f"Car {i} is {colour}.")
    for i, colour in enumerate(["red", "blue", "green", "red", "white", "black", "grey", "blue"])
]


@pytest.fixture
def knowing_line(ws, knowing_model) -> str:
    """A line with default settings on the tiny model that knows KNOWN_FACTS; no reference set given."""
    with ws.transaction() as session:
        base_models.register_base_model(session, name="knowing", source=str(knowing_model), actor="tester")
        lines.create_line(session, name="cars", base="knowing", actor="tester")
    return "cars"


def log_cars(ws, line: str, facts=CARS) -> list[int]:
    return [
        ws.log_feedback(line=line, prompt=q, response="I do not know.", rating=-1, correction=a, source=f"user-{i}")
        for i, (q, a) in enumerate(facts)
    ]


def test_a_default_train_stops_once_it_answers_its_corrections(ws, knowing_line, knowing_model):
    ids = log_cars(ws, knowing_line)
    outcome = train_line(ws, TrainRequest(knowing_line, evaluate=False))
    metrics = outcome.metrics
    trained = [fact for fact, feedback_id in zip(CARS, ids) if not is_heldout(feedback_id, 0.1)]
    assert metrics["stop_reason"] == "learned" and metrics["steps"] < 1000
    new = metrics["learned"]["train"]
    assert new["sample"] == new["of"] == len(trained) and "replay" not in metrics["learned"]
    assert new["learned"] >= 0.95 * len(trained) and metrics["learned"]["target"] == 0.95
    assert metrics["learning_curve"] and metrics["learning_curve"][-1][0] == metrics["steps"]
    with ws.reading() as session:
        adapter = registry.get_adapter(session, outcome.candidate_id)
        path = ArtifactStore(ws.settings.artifacts_dir).path_of(adapter.artifact_path)
    questions, answers = zip(*trained)
    assert greedy(knowing_model, questions, path) == list(answers)  # loaded with plain PEFT, not adapterctl's probe
    assert greedy(knowing_model, questions) != list(answers)  # the base did not know them


def test_a_line_without_a_reference_set_gets_one_written_by_its_base_model(ws, knowing_line, knowing_model):
    log_cars(ws, knowing_line)
    outcome = train_line(ws, TrainRequest(knowing_line, evaluate=False))
    made = outcome.dataset["reference"]["synthesized_now"]
    with ws.reading() as session:
        suite = suites.get_suite(session, line=knowing_line, name=suites.REFERENCE)
        base_hash = lines.get_line(session, knowing_line).base_model.content_hash
        events = [e.action for e in audit.list_events(session, limit=20)]
        run = session.get(TrainingRun, outcome.run_id)
        cases, provenance, version = suite.cases, suite.provenance, suite.version
    assert version == 1 and provenance["method"] == "self-synthesized rehearsal" and provenance["base_model_hash"] == base_hash
    assert provenance["kept"] == len(cases) == made["kept"] > 0 and provenance["settings"]["seed"] == 0
    assert "suite.synthesize" in events
    assert run.dataset["reference"] == {**run.dataset["reference"], "version": 1, "synthesized": True}
    assert run.dataset["reference"]["anchors"] > 0
    # The base writes what it knows: its own questions, answered as it was taught; never a feedback prompt.
    known = dict(KNOWN_FACTS)
    prompts = [case["prompt"][-1]["content"] for case in cases]
    assert sum(known.get(p) == case["answer"] for p, case in zip(prompts, cases)) >= 0.8 * len(cases)
    assert not {normalise(p) for p in prompts} & {normalise(q) for q, _ in CARS}

    log_cars(ws, knowing_line, [(f"What colour is car {i}?", f"Car {i} is pink.") for i in range(8, 16)])
    again = train_line(ws, TrainRequest(knowing_line, evaluate=False))
    assert again.status == "trained" and "synthesized_now" not in again.dataset["reference"]  # made once per base model
    assert again.dataset["reference"]["version"] == 1


def test_a_small_reference_set_is_topped_up_and_keeps_the_operators_cases(ws, knowing_line):
    given = [{"prompt": [{"role": "user", "content": "What is the code for room 3?"}], "answer": "The code for room 3 is 1111."}]
    with ws.transaction() as session:
        suites.add_suite(session, line=knowing_line, name=suites.REFERENCE, cases=given, kind="reference", actor="tester")
    log_cars(ws, knowing_line)
    outcome = train_line(ws, TrainRequest(knowing_line, evaluate=False))
    with ws.reading() as session:
        suite = suites.get_suite(session, line=knowing_line, name=suites.REFERENCE)
        assert suite.version == 2 and suite.cases[0] == given[0] and len(suite.cases) > 1
        assert suite.provenance["topped_up"] == {"version": 1, "cases": 1}
        # the operator's prompt is not asked again
        assert sum(normalise(c["prompt"][-1]["content"]) == normalise("What is the code for room 3?") for c in suite.cases) == 1
    assert outcome.dataset["reference"]["version"] == 2


def test_train_and_review_show_say_what_was_learned_and_eval_suite_show_the_provenance(cli, ws, knowing_line):
    log_cars(ws, knowing_line)
    result = cli("train", "--line", knowing_line)
    assert result.returncode == 0, result.stderr
    assert "new training answers (greedy), stopped when learned at step" in result.stdout
    assert "synthesized" in result.stdout and "cases from the base model" in result.stdout
    with ws.reading() as session:
        adapter_id = session.scalar(select(registry.Adapter.id))
    shown = cli("review", "show", str(adapter_id))
    assert shown.returncode == 0 and "training answers (greedy)" in shown.stdout
    assert "synthesized from the base model" in shown.stdout
    report = json.loads(cli("review", "show", str(adapter_id), "--json").stdout)
    assert report["training"]["stop_reason"] == "learned" and report["training"]["learned"]["train"]["learned"] >= 1
    suite = cli("eval", "suite", "show", "reference", "--line", knowing_line)
    assert (
        suite.returncode == 0 and "self-synthesized rehearsal from base model" in suite.stdout and " -> The code for room" in suite.stdout
    )


def test_target_learned_0_trains_the_whole_length(ws, knowing_line):
    from adapterctl.training import TrainSettings

    log_cars(ws, knowing_line)
    outcome = train_line(ws, TrainRequest(knowing_line, training=TrainSettings(max_steps=30, target_learned=None), evaluate=False))
    assert outcome.metrics["steps"] == 30 and outcome.metrics["stop_reason"] == "max_steps" and outcome.metrics["learning_curve"] == []
    assert 0 <= outcome.metrics["learned"]["train"]["learned"] <= outcome.metrics["learned"]["train"]["sample"]


def test_the_gate_passes_a_default_candidate_that_keeps_the_reference_set_and_fails_one_that_does_not(ws, knowing_line):
    log_cars(ws, knowing_line)
    kept = train_line(ws, TrainRequest(knowing_line))
    check = next(c for c in kept.gate["checks"] if c["check"] == "keeps the reference set")
    assert kept.candidate_status == "pending_review", kept.gate["reasons"]
    assert check["value"] <= check["limit"] == 0.1

    # Corrections that overwrite what the base model knows: the reference set the base wrote says otherwise.
    log_cars(ws, knowing_line, [(q, a.rsplit(" ", 1)[0] + " 9999.") for q, a in KNOWN_FACTS])
    forgot = train_line(ws, TrainRequest(knowing_line))
    assert forgot.candidate_status == "gate_failed"
    assert any(r.startswith("agreement with the reference set's answers fell") for r in forgot.gate["reasons"]), forgot.gate["reasons"]


def test_a_failed_synthesis_does_not_stop_the_cron_run(ws, knowing_line, monkeypatch):
    from adapterctl import rehearsal

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(rehearsal, "synthesize", out_of_memory)  # a fault injected where a large base model would fail
    log_cars(ws, knowing_line)
    outcome = train_line(ws, TrainRequest(knowing_line, evaluate=False))
    assert outcome.status == "trained" and outcome.dataset["reference"]["anchors"] == 0
    assert outcome.dataset["reference"]["synthesized_now"] == {"error": "CUDA out of memory. Tried to allocate 2.00 GiB", "kept": 0}
    assert "synthesizing it from the base model failed (CUDA out of memory" in rehearsal.reference_line(
        outcome.dataset["reference"]["synthesized_now"]
    )
