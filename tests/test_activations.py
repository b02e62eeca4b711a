"""Promote, rollback, history and the fallback after forgetting: append-only activations, race-safe."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from adapterctl import activations, audit, feedback, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import Adapter, RunExample, TrainingRun
from adapterctl.errors import IntegrityError, InvalidInput, InvalidTransition, NotFound
from adapterctl.lines import get_line
from tests.test_artifacts import fake_adapter
from tests.test_review import race


def version(ws, line: str, *, status: str = "approved", trained_on: list[int] = (), fill: float = 0.5) -> int:
    """An approved version with a real artifact in the store, trained (lineage) on the given feedback."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        line_row = get_line(session, line)
        run = TrainingRun(
            line_id=line_row.id, status="succeeded", started_by="cron", host="test", base_model_hash="0" * 64, params={}, dataset={}
        )
        session.add(run)
        session.flush()
        session.add_all([RunExample(run_id=run.id, feedback_id=i, split="train") for i in trained_on])
        stored = store.commit(fake_adapter(store.staging_dir(line, f"run-{run.id}"), fill=fill), line, run.id)
        adapter = registry.create_candidate(
            session, run=run, artifact_path=stored.relative_path, sha256=stored.sha256, actor="cron", status="pending_review"
        )
        if status != "pending_review":
            adapter.version = registry.next_version(session, line_row.id)
            session.flush()
            registry.transition(session, adapter.id, status, actor="reviewer")
        return adapter.version or adapter.id


def promote(ws, line, number, **kwargs):
    with ws.transaction() as session:
        return activations.describe(
            activations.promote(session, ArtifactStore(ws.settings.artifacts_dir), line=line, version=number, actor="ops", **kwargs).adapter
        )


def rollback(ws, line, to=None):
    with ws.transaction() as session:
        return activations.describe(
            activations.rollback(session, ArtifactStore(ws.settings.artifacts_dir), line=line, to=to, actor="ops").adapter
        )


def statuses(ws) -> dict[int, str]:
    with ws.transaction() as session:
        return {a.version: a.status for a in session.scalars(select(Adapter))}


def test_promote_and_rollback_append_activations_and_keep_states_in_step(ws, line):
    version(ws, line)
    version(ws, line, fill=0.7)
    assert promote(ws, line, 1, reason="first") == "v1"
    assert promote(ws, line, 2) == "v2"
    assert statuses(ws) == {1: "inactive", 2: "active"}
    assert rollback(ws, line) == "v1"  # the version served before
    assert statuses(ws) == {1: "active", 2: "inactive"}
    assert rollback(ws, line, to="base") == "base"
    assert statuses(ws) == {1: "inactive", 2: "inactive"}
    assert rollback(ws, line, to="v2") == "v2"
    with ws.transaction() as session:
        steps = [(h["kind"], h["from"], h["to"], h["by"]) for h in activations.history(session, line)]
        assert registry.active_adapter(session, get_line(session, line).id).version == 2
        kinds = [e.action for e in audit.list_events(session, limit=100) if e.action.startswith("line.")]
    assert steps == [
        ("promote", "base", "v1", "ops"),
        ("promote", "v1", "v2", "ops"),
        ("rollback", "v2", "v1", "ops"),
        ("rollback", "v1", "base", "ops"),
        ("rollback", "base", "v2", "ops"),
    ]
    assert kinds.count("line.promote") == 2 and kinds.count("line.rollback") == 3


def test_only_approved_versions_are_promoted(ws, line):
    version(ws, line)
    version(ws, line, status="pending_review")  # a candidate: no version number yet
    with ws.transaction() as session:
        registry.transition(session, registry.get_version(session, get_line(session, line).id, 1).id, "revoked", actor="t")
    with pytest.raises(InvalidTransition, match="v1 is revoked; only approved versions can be promoted"):
        promote(ws, line, 1)
    with pytest.raises(NotFound, match="v2 does not exist"):
        promote(ws, line, 2)


def test_nothing_to_roll_back_to_and_unknown_versions_are_refused(ws, line):
    with pytest.raises(InvalidInput, match="already serves base; nothing to roll back to"):
        rollback(ws, line)
    with pytest.raises(NotFound, match="v7 does not exist"):
        promote(ws, line, 7)
    version(ws, line)
    promote(ws, line, 1)
    with pytest.raises(InvalidTransition, match="already active"):
        promote(ws, line, 1)


def test_a_tampered_artifact_is_never_promoted(ws, line):
    version(ws, line)
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        path = store.path_of(registry.get_version(session, get_line(session, line).id, 1).artifact_path) / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        promote(ws, line, 1)
    assert statuses(ws) == {1: "approved"}


def test_forgetting_the_served_versions_data_falls_back_to_the_newest_clean_version(ws, line):
    clean = ws.log_feedback(line=line, prompt="q1", response="a", rating=1)
    tainted = ws.log_feedback(line=line, prompt="q2", response="b", rating=1)
    version(ws, line, trained_on=[clean])
    version(ws, line, trained_on=[clean, tainted], fill=0.7)
    promote(ws, line, 2)
    with ws.transaction() as session:
        report = feedback.forget_feedback(session, actor="privacy", ids=[tainted], reason="request #9")
    assert report.fallbacks == [{"line": line, "to": "v1"}]
    assert statuses(ws) == {1: "active", 2: "revoked"}
    with ws.transaction() as session:
        last = activations.history(session, line)[-1]
        assert (last["kind"], last["from"], last["to"], last["by"]) == ("fallback", "v2", "v1", "privacy")
        feedback.forget_feedback(session, actor="privacy", ids=[clean])
        assert activations.history(session, line)[-1]["to"] == "base"  # nothing clean is left
    with pytest.raises(InvalidTransition, match="revoked"):
        rollback(ws, line, to="v2")


def test_the_cli_promotes_rolls_back_shows_history_and_exports(ws, line, cli, tmp_path):
    version(ws, line)
    version(ws, line, fill=0.7)
    assert cli.json("promote", line, "v1", "--reason", "good")["serves"] == "v1"
    assert cli.json("promote", line, "2")["serves"] == "v2"
    assert cli.json("rollback", line)["serves"] == "v1"
    history = cli.json("history", line)
    assert [(h["from"], h["to"]) for h in history] == [("base", "v1"), ("v1", "v2"), ("v2", "v1")] and history[0]["reason"] == "good"
    shown = cli.json("adapters", "show", "1")
    assert [a["kind"] for a in shown["activations"]] == ["promote", "rollback"] and shown["status"] == "active"
    exported = cli("adapters", "export", "1", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    refused = cli("promote", line, "v9")
    assert refused.returncode == 2 and "v9 does not exist" in refused.stderr
    (tmp_path / "file").write_text("x")
    below_a_file = cli("adapters", "export", "1", str(tmp_path / "file" / "out"))
    assert below_a_file.returncode == 2 and below_a_file.stderr.startswith(f"adapterctl: cannot export to {tmp_path / 'file' / 'out'}: ")
    assert "Traceback" not in below_a_file.stderr


def test_promote_racing_rollback_leaves_one_consistent_history(ws, line, cli):
    for fill in (0.5, 0.6, 0.7):
        version(ws, line, fill=fill)
    promote(ws, line, 1)
    results = race(cli, [("ops", ["promote", line, "v2"]), ("oncall", ["rollback", line, "--to", "v3"]), ("ops", ["promote", line, "v3"])])
    assert sum(r.returncode == 0 for r in results) >= 2, [r.stderr for r in results]
    with ws.transaction() as session:
        history = activations.history(session, line)
        served = history[-1]["to"]
        active = [a.version for a in session.scalars(select(Adapter).where(Adapter.status == "active"))]
        assert audit.verify(session).ok
    assert [f"v{v}" for v in active] == [served]  # exactly one active version: the newest activation's
    assert all(step["from"] == before["to"] for before, step in zip(history, history[1:]))  # an unbroken chain
