"""Canary releases in the database: start, share changes, abort and completion as activations; the live
comparison from issued responses; the watcher that rolls a bad canary back with its evidence."""

from __future__ import annotations

import random
import uuid

import pytest
from sqlalchemy import insert, select

from adapterctl import activations, audit, canary_watch, feedback, lines, review
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import Adapter, AuditEvent, IssuedResponse
from adapterctl.errors import InvalidInput, InvalidTransition
from adapterctl.lines import get_line
from tests.test_activations import promote, statuses, version


def start(ws, line, number, share=0.1):
    with ws.transaction() as session:
        return activations.start_canary(
            session, ArtifactStore(ws.settings.artifacts_dir), line=line, version=number, share=share, actor="ops"
        ).id


def served(ws, line) -> tuple[str, str | None, float | None]:
    with ws.reading() as session:
        now = activations.current(session, get_line(session, line).id)
        return (activations.describe(now.adapter), now.canary_adapter and activations.describe(now.canary_adapter), now.canary_share)


def rate(ws, line, canary_id, arm, ratings, *, errors=0, latency_ms=20.0):
    """Responses a canary routed, rated as given (1 up, -1 down); `errors` more that failed."""
    with ws.transaction() as session:
        line_id = get_line(session, line).id
        rows = [
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "line_id": line_id,
                "served_by": f"{line}@{arm}",
                "prompt": "[]",
                "prompt_hash": "0" * 64,
                "answers": "[]",
                "canary_id": canary_id,
                "arm": arm,
                "latency_ms": latency_ms,
                "rating": r,
                "corrected": False,
            }
            for r in ratings
        ]
        rows += (
            [{**rows[0], "id": f"chatcmpl-{uuid.uuid4().hex}", "rating": None, "error": "nan scores"} for _ in range(errors)]
            if rows
            else []
        )
        session.execute(insert(IssuedResponse), [{"error": None, **row} for row in rows])


def test_a_canary_is_activations_its_share_changes_and_it_ends_by_abort_or_completion(ws, line):
    for fill in (0.5, 0.6, 0.7):
        version(ws, line, fill=fill)
    promote(ws, line, 1)
    first = start(ws, line, 2, 0.1)
    assert served(ws, line) == ("v1", "v2", 0.1)
    assert statuses(ws) == {1: "active", 2: "approved", 3: "approved"}  # a canary changes no adapter state
    with ws.transaction() as session:
        activations.set_canary_share(session, line=line, share=0.5, actor="ops", reason="looks fine")
        assert activations.canary_start(session, get_line(session, line).id).id == first  # one canary across share changes
        with pytest.raises(InvalidTransition, match="already runs a canary of v2"):
            activations.start_canary(session, ArtifactStore(ws.settings.artifacts_dir), line=line, version=3, share=0.1, actor="ops")
        with pytest.raises(InvalidInput, match="already has 50%"):
            activations.set_canary_share(session, line=line, share=0.5, actor="ops")
    with ws.transaction() as session:
        activations.abort_canary(session, line=line, actor="ops", reason="not today")
    assert served(ws, line) == ("v1", None, None)
    with ws.transaction() as session:
        with pytest.raises(InvalidTransition, match="runs no canary"):
            activations.abort_canary(session, line=line, actor="ops")
        assert activations.canary_start(session, get_line(session, line).id) is None
    second = start(ws, line, 3, 0.2)
    assert second != first
    with ws.transaction() as session:
        activations.complete_canary(session, ArtifactStore(ws.settings.artifacts_dir), line=line, actor="ops")
        history = activations.history(session, line)
        events = [
            e.action for e in session.scalars(select(AuditEvent).where(AuditEvent.subject == f"line:{line}").order_by(AuditEvent.seq))
        ]
        assert audit.verify(session).ok
    assert served(ws, line) == ("v3", None, None) and statuses(ws) == {1: "inactive", 2: "approved", 3: "active"}
    assert [(e["kind"], e["to"], e["canary"]) for e in history] == [
        ("promote", "v1", None),
        ("canary", "v1", "v2 to 10%"),
        ("canary_set", "v1", "v2 to 50%"),
        ("canary_abort", "v1", None),
        ("canary", "v1", "v3 to 20%"),
        ("promote", "v3", None),
    ]
    assert history[-1]["reason"] == "canary complete"
    assert events[-5:] == ["line.canary", "line.canary_set", "line.canary_abort", "line.canary", "line.promote"]


def test_a_canary_needs_an_approved_version_other_than_the_active_one(ws, line):
    version(ws, line)
    version(ws, line, status="rejected", fill=0.6)
    promote(ws, line, 1)
    with ws.transaction() as session:
        store = ArtifactStore(ws.settings.artifacts_dir)
        with pytest.raises(InvalidTransition, match="already active"):
            activations.start_canary(session, store, line=line, version=1, share=0.1, actor="ops")
        with pytest.raises(InvalidTransition, match="rejected"):
            activations.start_canary(session, store, line=line, version=2, share=0.1, actor="ops")


def test_a_canary_from_the_base_model_and_a_revoked_canary_ends_at_once(ws, line):
    tainted = ws.log_feedback(line=line, prompt="q", response="a", rating=1)
    version(ws, line, trained_on=[tainted])
    start(ws, line, 1, 0.25)  # the line serves the base model; v1 goes to a quarter of its users
    assert served(ws, line) == ("base", "v1", 0.25)
    with ws.transaction() as session:
        report = feedback.forget_feedback(session, actor="privacy", ids=[tainted], reason="request #12")
    assert report.fallbacks == [{"line": line, "to": "base"}]
    assert served(ws, line) == ("base", None, None)
    with ws.reading() as session:
        last = activations.history(session, line)[-1]
    assert (last["kind"], last["by"]) == ("fallback", "privacy") and "canary v1 revoked" in last["reason"]


def test_line_settings_of_the_test_are_set_checked_and_audited(ws, line, cli):
    assert cli("line", "set", line, "canary.max_drop=0.03", "canary.min_feedback=20").returncode == 0
    with ws.reading() as session:
        settings = lines.settings_of(get_line(session, line)).canary
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "line.settings")).one()
    assert (settings.max_drop, settings.min_feedback) == (0.03, 20)
    assert '"canary.max_drop":{"from":0.05,"to":0.03}' in event.payload
    for bad, named in (
        ("canary.alpha=0.7", "canary.alpha must be in"),
        ("canary.nope=1", "unknown setting 'canary.nope'"),
        ("canary.min_feedback=ten", "canary.min_feedback must be an integer"),
        ("alpha", "is not KEY=VALUE"),
        ("canary.max_latency_ratio=inf", "must be a finite number"),
    ):
        result = cli("line", "set", line, bad)
        assert result.returncode == 2 and named in result.stderr, result.stderr
    assert cli.json("line", "show", line)["settings"]["canary"]["max_drop"] == 0.03  # nothing half-written


def test_the_live_comparison_counts_each_side_of_this_canary_only_and_status_shows_it(ws, line, cli):
    version(ws, line)
    version(ws, line, fill=0.6)
    promote(ws, line, 1)
    earlier = start(ws, line, 2, 0.5)
    rate(ws, line, earlier, "canary", [-1] * 30)  # an earlier canary's responses do not count
    with ws.transaction() as session:
        activations.abort_canary(session, line=line, actor="ops")
    canary_id = start(ws, line, 2, 0.5)
    rate(ws, line, canary_id, "baseline", [1, 1, 1, -1], errors=1, latency_ms=10)
    rate(ws, line, canary_id, "canary", [1, -1], latency_ms=30)
    with ws.reading() as session:
        c = canary_watch.compare(session, line)
    assert (c.baseline.version, c.canary.version, c.share) == (f"{line}@v1", f"{line}@v2", 0.5)
    assert (c.baseline.requests, c.baseline.errors, c.baseline.rated, c.baseline.ups) == (5, 1, 4, 3)
    assert (c.canary.requests, c.canary.rated, c.canary.ups, c.canary.p99_ms) == (2, 2, 1, 30)
    summary = c.as_dict()
    assert summary["baseline"]["mean_rating"] == 0.5 and summary["baseline"]["error_rate"] == 0.2
    low, high = summary["canary"]["thumbs_up_bounds"]
    assert low < 0.5 < high
    assert (c.verdict.decision, c.decision) == ("undecided", "wait") and "fewer than 50 ratings" in c.why
    shown = cli("status")
    assert shown.returncode == 0 and f"canary: {line}@v2 to 50%" in shown.stdout and "2 vs 4 rated, thumbs up 50% vs 75%" in shown.stdout
    assert cli.json("status")["lines"][0]["canary"]["canary"]["rated"] == 2


def test_the_watcher_rolls_back_a_worse_canary_with_the_evidence_for_its_reviewers(ws, line, cli):
    version(ws, line)
    version(ws, line, fill=0.6)
    promote(ws, line, 1)
    canary_id = start(ws, line, 2, 0.5)
    rng = random.Random(7)
    for _ in range(40):  # a look after every 50 ratings: the baseline at 70% up, the canary at 40%
        rate(ws, line, canary_id, "baseline", [1 if rng.random() < 0.7 else -1 for _ in range(25)])
        rate(ws, line, canary_id, "canary", [1 if rng.random() < 0.4 else -1 for _ in range(25)])
        outcome = canary_watch.check(ws, line)
        if outcome.action:
            break
    assert outcome.action == "aborted", outcome.message()
    assert served(ws, line) == ("v1", None, None)
    with ws.reading() as session:
        last = activations.history(session, line)[-1]
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "line.canary_abort")).one()
        adapter_id = session.scalar(select(Adapter.id).where(Adapter.version == 2))
        report = review.report(session, adapter_id)
    assert last["kind"] == "canary_abort" and last["by"] == "tester (canary watch)"
    assert last["reason"].startswith("automatic rollback: the canary's thumbs-up rate is at most")
    assert '"verdict":"worse"' in event.payload and '"rated":' in event.payload  # the counts behind it
    assert [(e["kind"], e["by"]) for e in report["canaries"]] == [("canary", "ops"), ("canary_abort", "tester (canary watch)")]
    shown = cli("review", "show", str(adapter_id), "--html", str(ws.settings.home / "report.html"))
    assert "automatic rollback" in shown.stdout and "canary_abort" in shown.stdout
    page = (ws.settings.home / "report.html").read_text()
    assert "Canary releases of this version" in page and "automatic rollback" in page
    assert canary_watch.check(ws, line).comparison is None  # nothing left to watch


def test_an_equal_canary_is_not_rolled_back_and_completes_when_asked(ws, line):
    """An A/A run at this seed: the test never says worse, and with auto-complete the canary becomes the version."""
    version(ws, line)
    version(ws, line, fill=0.6)
    promote(ws, line, 1)
    with ws.transaction() as session:
        lines.update_settings(session, name=line, assignments={"canary.prior_ratings": "200"}, actor="ops")
    canary_id = start(ws, line, 2, 0.5)
    rng = random.Random(3)
    for _ in range(1, 200):
        rate(ws, line, canary_id, "baseline", [1 if rng.random() < 0.7 else -1 for _ in range(50)])
        rate(ws, line, canary_id, "canary", [1 if rng.random() < 0.7 else -1 for _ in range(50)])
        outcome = canary_watch.check(ws, line, auto_complete=True)
        assert outcome.action != "aborted", outcome.message()
        if outcome.action:
            break
    assert outcome.action == "completed" and served(ws, line) == ("v2", None, None)
    assert outcome.comparison.verdict.decision == "not_worse"


def test_a_canary_failing_requests_is_rolled_back_whatever_its_ratings(ws, line):
    version(ws, line)
    version(ws, line, fill=0.6)
    promote(ws, line, 1)
    canary_id = start(ws, line, 2, 0.5)
    rate(ws, line, canary_id, "baseline", [1] * 40)
    rate(ws, line, canary_id, "canary", [1] * 10, errors=40)
    outcome = canary_watch.check(ws, line)
    assert outcome.action == "aborted" and "failed 40 of 50 requests" in outcome.comparison.why


def test_the_cli_shows_the_comparison_and_a_watch_from_cron_rolls_a_worse_canary_back(ws, line, cli):
    version(ws, line)
    version(ws, line, fill=0.6)
    promote(ws, line, 1)
    assert cli("canary", "status", line).stdout.startswith(f"{line} runs no canary")
    canary_id = start(ws, line, 2, 0.5)
    rate(ws, line, canary_id, "baseline", [1] * 150 + [-1] * 50)
    rate(ws, line, canary_id, "canary", [1] * 50 + [-1] * 150)
    shown = cli("canary", "status", line)
    assert shown.returncode == 0 and "canary support-bot@v2 to 50% of end users" in shown.stdout
    assert "verdict: worse: the canary's thumbs-up rate is at most" in shown.stdout and "75.0%" in shown.stdout
    watched = cli.json("canary", "watch", "--once", "--line", line)
    assert [(w["line"], w["action"]) for w in watched] == [(line, "aborted")]
    assert watched[0]["canary"]["canary"]["ups"] == 50 and served(ws, line) == ("v1", None, None)
    assert cli.json("canary", "watch", "--once", "--line", line)[0]["canary"] is None
    refused = cli("canary", "watch", "--line", "nope", "--once")
    assert refused.returncode == 2 and "line 'nope' does not exist" in refused.stderr


def test_forgetting_feedback_removes_its_responses_from_a_canarys_comparison(ws, line):
    """Forget means gone: the rated response leaves the live comparison with the feedback given on it."""
    version(ws, line)
    version(ws, line, fill=0.6)
    promote(ws, line, 1)
    canary_id = start(ws, line, 2, 0.5)
    rate(ws, line, canary_id, "canary", [1, 1, -1])
    with ws.reading() as session:
        rated = list(session.scalars(select(IssuedResponse.id).where(IssuedResponse.arm == "canary").order_by(IssuedResponse.id)))
    given = ws.log_feedback(line=line, prompt="q", response="a", rating=-1, source="user-5", request_id=rated[0])
    with ws.transaction() as session:
        report = feedback.forget_feedback(session, actor="privacy", source="user-5", reason="request #31")
        comparison = canary_watch.compare(session, line)
    assert report.responses_deleted == 1 and given
    assert (comparison.canary.requests, comparison.canary.rated) == (2, 2)
    with ws.reading() as session:
        assert session.get(IssuedResponse, rated[0]) is None
