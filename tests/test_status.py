"""`adapterctl status`: one screen for the deployment, and the warnings it must raise."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from adapterctl import feedback, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import AuditEvent, Lease, TrainingRun
from adapterctl.db.types import utcnow
from adapterctl.lines import get_line
from tests.test_runtime import approved_version

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "What is the code for room 3?"}]


def candidate(ws, line: str, status: str) -> int:
    """A candidate of a run, in `status`, without an artifact (only servable versions' artifacts are checked)."""
    with ws.transaction() as session:
        run = TrainingRun(
            line_id=get_line(session, line).id,
            status="succeeded",
            started_by="cron",
            host="t",
            base_model_hash="0" * 64,
            params={},
            dataset={},
            finished_at=utcnow(),
        )
        session.add(run)
        session.flush()
        return registry.create_candidate(
            session, run=run, artifact_path=f"{line}/{run.id}", sha256="0" * 64, actor="cron", status=status
        ).id


def test_status_says_what_each_line_serves_waits_for_and_warns_about(ws, cli, tiny_line, tiny_model, settings):
    report = cli.json("status")
    [facts] = report["lines"]
    assert (
        facts["line"],
        facts["serving"]["version"],
        facts["waiting_for_review"],
        facts["last_run"],
        facts["new_feedback"],
        facts["warnings"],
    ) == ("facts", "base", [], None, 0, [])
    assert report["warnings"] == [] and report["audit"]["ok"] is True

    with ws.transaction() as session:
        feedback.log_records(
            session,
            [("facts", feedback.parse_record({"prompt": CHAT, "response": "x", "correction": f"Code {i}."})) for i in range(3)],
            actor="tester",
        )
    version = approved_version(ws, tiny_line, tiny_model, seed=1)
    assert cli("promote", "facts", f"v{version}").returncode == 0
    failed = [candidate(ws, "facts", "gate_failed") for _ in range(2)]
    facts = cli.json("status")["lines"][0]
    assert facts["new_feedback"] == 3
    assert (facts["serving"]["version"], facts["serving"]["by"], facts["serving"]["how"]) == ("v1", "tester", "promote")
    assert facts["last_run"]["candidate"] == failed[-1] and facts["last_run"]["candidate_status"] == "gate_failed"
    assert facts["warnings"] == ["the last 2 candidates failed the gate (`adapterctl review show ID` says why)"]

    revoked = approved_version(ws, tiny_line, tiny_model, seed=2)
    waiting = candidate(ws, "facts", "pending_review")
    with ws.transaction() as session:
        registry.transition(session, registry.get_version(session, get_line(session, "facts").id, revoked).id, "revoked", actor="tester")
        session.add(
            Lease(
                name="train:facts",
                holder="gone-host:4242:abcd",
                acquired_at=utcnow() - timedelta(minutes=10),
                expires_at=utcnow() - timedelta(minutes=5),
            )
        )
        path = ArtifactStore(settings.artifacts_dir).path_of(
            registry.get_version(session, get_line(session, "facts").id, version).artifact_path
        )
    (path / "adapter_config.json").write_text("{}")  # the served version's files changed on disk
    facts = cli.json("status")["lines"][0]
    assert [w["candidate"] for w in facts["waiting_for_review"]] == [waiting]
    assert len(facts["warnings"]) == 3, facts["warnings"]
    assert facts["warnings"][0].startswith("a training lease expired") and "gone-host:4242:abcd" in facts["warnings"][0]
    assert facts["warnings"][1] == f"revoked (trained on forgotten feedback): v{revoked}"
    assert facts["warnings"][2].startswith("v1: ") and "adapter_config.json" in facts["warnings"][2]

    with ws.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(actor="mallory"))
    shown = cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "facts: serves v1" in shown.stdout and f"candidate {waiting} for 0 min" in shown.stdout
    assert "WARNING: the audit chain is broken: event #2" in shown.stdout
    assert "new eligible feedback since: 3" in shown.stdout


def test_status_of_an_empty_database(cli):
    result = cli("status")
    assert result.returncode == 0 and "no lines yet" in result.stdout
