"""Reviewers, roles, N distinct approvals, gap-free versions, and decisions racing in real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import select

from adapterctl import audit, registry, review
from adapterctl.db.models import Adapter, ReviewDecision, TrainingRun
from adapterctl.errors import AlreadyExists, InvalidInput, InvalidTransition, NotFound, PermissionDenied
from adapterctl.lines import get_line
from tests.test_cli import one_line_error


def candidate(ws, line: str, status: str = "pending_review") -> int:
    """A candidate row as the training job leaves it (the artifact itself does not matter to reviewing)."""
    with ws.transaction() as session:
        line_row = get_line(session, line)
        run = TrainingRun(
            line_id=line_row.id,
            status="succeeded",
            started_by="cron",
            host="test",
            base_model_hash="0" * 64,
            params={},
            dataset={"splits": {"train": 3}, "sources": {"a": 2, "b": 1}},
            metrics={"loss_curve": [[1, 2.0], [2, 1.0]]},
        )
        session.add(run)
        session.flush()
        return registry.create_candidate(
            session, run=run, artifact_path=f"{line}/{run.id}", sha256="0" * 64, actor="cron", status=status
        ).id


def set_approvals(ws, line: str, n: int) -> None:
    with ws.transaction() as session:
        line_row = get_line(session, line)
        line_row.settings = {**line_row.settings, "approvals_required": n}


@pytest.fixture
def team(ws, line):
    with ws.transaction() as session:
        review.add_reviewer(session, name="ada", role="admin", actor="ada")
        review.add_reviewer(session, name="bob", role="reviewer", actor="ada")
        review.add_reviewer(session, name="cy", role="reviewer", actor="ada")
    return line


def decide(ws, action, adapter_id, reviewer, text=None):
    with ws.transaction() as session:
        if action == "approve":
            return review.approve(session, adapter_id, reviewer=reviewer, note=text).status
        return review.reject(session, adapter_id, reviewer=reviewer, reason=text).status


def test_only_admins_manage_reviewers_once_an_admin_exists(ws, line):
    with ws.transaction() as session:
        review.add_reviewer(session, name="bob", role="reviewer", actor="anyone")  # no admin yet: set-up is open
        review.add_reviewer(session, name="ada", role="admin", actor="bob")
    with pytest.raises(PermissionDenied, match="only admins may add reviewers"), ws.transaction() as session:
        review.add_reviewer(session, name="eve", role="admin", actor="bob")
    with pytest.raises(PermissionDenied), ws.transaction() as session:
        review.remove_reviewer(session, name="ada", actor="bob")
    with pytest.raises(InvalidInput, match="last admin"), ws.transaction() as session:
        review.remove_reviewer(session, name="ada", actor="ada")
    with pytest.raises(AlreadyExists), ws.transaction() as session:
        review.add_reviewer(session, name="bob", role="reviewer", actor="ada")
    with pytest.raises(InvalidInput, match="--role"), ws.transaction() as session:
        review.add_reviewer(session, name="zed", role="owner", actor="ada")
    with ws.transaction() as session:
        review.remove_reviewer(session, name="bob", actor="ada")
        assert [r.name for r in review.list_reviewers(session)] == ["ada"]


def test_unregistered_people_cannot_decide(ws, team):
    adapter_id = candidate(ws, team)
    with pytest.raises(NotFound, match="'mallory' is not a registered reviewer"):
        decide(ws, "approve", adapter_id, "mallory")
    with ws.transaction() as session:
        assert registry.get_adapter(session, adapter_id).status == "pending_review"
        assert session.scalars(select(ReviewDecision)).all() == []


def test_n_distinct_approvals_make_a_version(ws, team):
    set_approvals(ws, team, 2)
    adapter_id = candidate(ws, team)
    assert decide(ws, "approve", adapter_id, "bob", "looks right") == "pending_review"
    with ws.reading() as session:
        assert review.report(session, adapter_id)["approvals"] == {"given": 1, "required": 2, "by": ["bob"], "summary": "1 of 2 (bob)"}
    with pytest.raises(AlreadyExists, match="distinct reviewers"):
        decide(ws, "approve", adapter_id, "bob")
    assert decide(ws, "approve", adapter_id, "cy") == "approved"
    with ws.transaction() as session:
        adapter = registry.get_adapter(session, adapter_id)
        assert adapter.version == 1 and "approved by bob, cy" in adapter.status_reason
        actions = [e.action for e in audit.list_events(session, limit=1000)]
    assert actions.count("review.approve") == 2 and "adapter.approved" in actions
    with pytest.raises(InvalidTransition, match="is approved; it cannot be approved"):
        decide(ws, "approve", adapter_id, "ada")


def test_one_rejection_rejects_and_a_reason_is_required(ws, team):
    set_approvals(ws, team, 2)
    adapter_id = candidate(ws, team)
    decide(ws, "approve", adapter_id, "bob")
    with pytest.raises(InvalidInput, match="--reason is required"):
        decide(ws, "reject", adapter_id, "cy", "  ")
    assert decide(ws, "reject", adapter_id, "cy", "answers room 7 wrongly") == "rejected"
    with pytest.raises(InvalidTransition, match="is rejected"):
        decide(ws, "approve", adapter_id, "ada")


@pytest.mark.parametrize("status", ["gate_failed", "revoked", "evaluating"])
def test_candidates_out_of_review_cannot_be_approved(ws, team, status):
    adapter_id = candidate(ws, team, status=status)
    with pytest.raises(InvalidTransition, match=f"adapter {adapter_id} is {status}; it cannot be approved"):
        decide(ws, "approve", adapter_id, "bob")


def test_versions_are_gap_free_per_line_and_never_reused(ws, team):
    first, rejected, second = candidate(ws, team), candidate(ws, team), candidate(ws, team)
    decide(ws, "approve", first, "bob")
    decide(ws, "reject", rejected, "bob", "no")
    with ws.transaction() as session:
        registry.transition(session, first, "revoked", actor="ada", reason="tainted")  # v1 stays v1, revoked
    decide(ws, "approve", second, "bob")
    third = candidate(ws, team)
    decide(ws, "approve", third, "cy")
    with ws.transaction() as session:
        versions = {a.id: a.version for a in session.scalars(select(Adapter))}
    assert (versions[first], versions[rejected], versions[second], versions[third]) == (1, None, 2, 3)


def test_the_cli_reports_the_queue_and_records_decisions(team, cli, ws):
    adapter_id = candidate(ws, team)
    queue = cli.json("review", "list")
    assert [(q["id"], q["line"], q["approvals"], q["approvals_required"]) for q in queue] == [(adapter_id, team, [], 1)]
    assert queue[0]["gate"] == "not evaluated"
    refused = cli("review", "approve", str(adapter_id), user="mallory")
    assert "'mallory' is not a registered reviewer" in one_line_error(refused, 2)
    assert "--reason" in cli("review", "reject", str(adapter_id), user="bob").stderr
    approved = cli("review", "approve", str(adapter_id), "--note", "fine", "--json", user="bob")
    assert approved.returncode == 0, approved.stderr
    assert '"version": "v1"' in approved.stdout
    assert cli.json("review", "list") == []
    assert "only admins may add reviewers" in one_line_error(cli("reviewer", "add", "eve", user="bob"), 1)


# ---------------------------------------------------------------- races in real processes

RACE = """
import sys
from adapterctl.cli.main import main
sys.stdin.readline()  # every process waits here until all are started
main(sys.argv[1:])
"""


def race(cli, commands: list[tuple[str, list[str]]]) -> list[subprocess.CompletedProcess]:
    """Start one process per (user, arguments), release them together, and collect their results."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, *args],
            env={**cli.env, "ADAPTERCTL_USER": user},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for user, args in commands
    ]
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]


def test_approve_and_reject_racing_leave_one_outcome(ws, team, cli):
    adapter_id = candidate(ws, team)
    results = race(cli, [("bob", ["review", "approve", str(adapter_id)]), ("cy", ["review", "reject", str(adapter_id), "--reason", "no"])])
    assert sorted(r.returncode for r in results) == [0, 1], [r.stderr for r in results]
    with ws.transaction() as session:
        adapter = registry.get_adapter(session, adapter_id)
        decisions = session.scalars(select(ReviewDecision)).all()
        assert len(decisions) == 1
        assert (adapter.status, adapter.version) == (("approved", 1) if decisions[0].decision == "approve" else ("rejected", None))
        assert audit.verify(session).ok


def test_last_approvals_racing_make_one_version_and_candidates_racing_get_distinct_ones(ws, team, cli):
    set_approvals(ws, team, 2)
    contested, other = candidate(ws, team), candidate(ws, team)
    decide(ws, "approve", other, "ada")
    results = race(
        cli,
        [
            ("bob", ["review", "approve", str(contested)]),
            ("cy", ["review", "approve", str(contested)]),
            ("bob", ["review", "approve", str(other)]),
        ],
    )
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    with ws.transaction() as session:
        adapters = {a.id: a for a in session.scalars(select(Adapter))}
        assert (adapters[contested].status, adapters[other].status) == ("approved", "approved")
        assert {adapters[contested].version, adapters[other].version} == {1, 2}
