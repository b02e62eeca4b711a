"""Candidates and versions: adapter rows, their states, and the one place transitions are checked.

    training ─> evaluating ─> gate_failed
                          └─> pending_review ─> rejected
                                             └─> approved ─> active <─> inactive
    any state but gate_failed and rejected ─> revoked

A transition is one conditional UPDATE (… WHERE status IN the allowed sources), so of two processes
racing to move the same adapter, exactly one wins and the other gets InvalidTransition.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.db.models import Adapter, Line, RunExample, TrainingRun
from adapterctl.db.types import utcnow
from adapterctl.errors import InvalidInput, InvalidTransition, NotFound

TRANSITIONS: dict[str, frozenset[str]] = {
    "training": frozenset({"evaluating", "revoked"}),
    "evaluating": frozenset({"gate_failed", "pending_review", "revoked"}),
    "pending_review": frozenset({"rejected", "approved", "revoked"}),
    "approved": frozenset({"active", "revoked"}),
    "active": frozenset({"inactive", "revoked"}),
    "inactive": frozenset({"active", "revoked"}),
    "gate_failed": frozenset(),
    "rejected": frozenset(),
    "revoked": frozenset(),
}
STATES = tuple(TRANSITIONS)
TRAINED_SPLITS = ("train", "replay")  # held-out rows were evaluated on, not trained on


def sources_of(target: str) -> list[str]:
    return [state for state, targets in TRANSITIONS.items() if target in targets]


def transition(session: Session, adapter_id: int, to: str, *, actor: str, reason: str | None = None) -> Adapter:
    """Move an adapter to state `to`, or raise InvalidTransition naming its current state."""
    if to not in TRANSITIONS:
        raise InvalidInput(f"unknown adapter state {to!r}; states: {', '.join(STATES)}")
    result = session.execute(
        update(Adapter)
        .where(Adapter.id == adapter_id, Adapter.status.in_(sources_of(to)))
        .values(status=to, status_changed_at=utcnow(), status_reason=reason)
        .returning(Adapter.status)
    )
    if result.first() is None:
        current = get_adapter(session, adapter_id).status
        raise InvalidTransition(f"adapter {adapter_id} is {current}; it cannot become {to}")
    adapter = get_adapter(session, adapter_id)
    session.refresh(adapter)
    audit.record(
        session, actor=actor, action=f"adapter.{to}", subject=f"adapter:{adapter_id}", payload={"line": adapter.line.name, "reason": reason}
    )
    return adapter


def create_candidate(session: Session, *, run: TrainingRun, artifact_path: str, sha256: str, actor: str, status: str) -> Adapter:
    """Register the adapter a run produced; it takes the run's id."""
    adapter = Adapter(id=run.id, line_id=run.line_id, run_id=run.id, status=status, artifact_path=artifact_path, sha256=sha256)
    session.add(adapter)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="adapter.create",
        subject=f"adapter:{adapter.id}",
        payload={"line": run.line.name, "run": run.id, "status": status, "sha256": sha256},
    )
    return adapter


def revoke_trained_on(session: Session, feedback_ids: Iterable[int], *, actor: str) -> list[Adapter]:
    """Revoke every adapter whose run trained on any of these feedback records (lineage)."""
    ids = sorted(set(feedback_ids))
    culprits: dict[int, int] = {}  # adapter id -> the first forgotten record it was trained on
    for start in range(0, len(ids), 1000):
        query = (
            select(Adapter.id, func.min(RunExample.feedback_id))
            .join(RunExample, RunExample.run_id == Adapter.run_id)
            .where(
                RunExample.feedback_id.in_(ids[start : start + 1000]),
                RunExample.split.in_(TRAINED_SPLITS),
                Adapter.status.in_(sources_of("revoked")),
            )
            .group_by(Adapter.id)
        )
        for adapter_id, feedback_id in session.execute(query):
            culprits[adapter_id] = min(feedback_id, culprits.get(adapter_id, feedback_id))
    return [
        transition(session, adapter_id, "revoked", actor=actor, reason=f"trained on forgotten feedback #{feedback_id}")
        for adapter_id, feedback_id in sorted(culprits.items())
    ]


def get_adapter(session: Session, adapter_id: int) -> Adapter:
    adapter = session.get(Adapter, adapter_id)
    if adapter is None:
        raise NotFound(f"adapter {adapter_id} does not exist; see `adapterctl adapters list`")
    return adapter


def active_adapter(session: Session, line_id: int) -> Adapter | None:
    """The version the line serves now, or None when it serves the base model."""
    return session.scalar(select(Adapter).where(Adapter.line_id == line_id, Adapter.status == "active"))


def get_version(session: Session, line_id: int, version: int) -> Adapter:
    adapter = session.scalar(select(Adapter).where(Adapter.line_id == line_id, Adapter.version == version))
    if adapter is None:
        raise NotFound(f"version v{version} does not exist on this line; see `adapterctl adapters list --status approved`")
    return adapter


def next_version(session: Session, line_id: int) -> int:
    """One more than the highest version the line ever had: numbers are never reused, revoked ones included."""
    return (session.scalar(select(func.max(Adapter.version)).where(Adapter.line_id == line_id)) or 0) + 1


MAX_VERSION = 2**31 - 1
"""Versions are 32-bit integers in the database."""


def parse_version(text: str) -> int:
    """'v3' or '3' as 3."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= MAX_VERSION:
        raise InvalidInput(f"version {text!r} is not like v3 or 3")
    return int(digits)


def list_adapters(session: Session, *, line: str | None = None, status: str | None = None) -> list[Adapter]:
    query = select(Adapter).join(Adapter.line).order_by(Adapter.id.desc())
    if line is not None:
        query = query.where(Line.name == line)
    if status is not None:
        if status not in TRANSITIONS:
            raise InvalidInput(f"unknown adapter state {status!r}; states: {', '.join(STATES)}")
        query = query.where(Adapter.status == status)
    return list(session.scalars(query))


def version_name(adapter: Adapter) -> str | None:
    return f"v{adapter.version}" if adapter.version is not None else None


def details(session: Session, adapter_id: int) -> dict[str, Any]:
    """An adapter with its lineage, evaluations, review decisions and activations."""
    from adapterctl.db.models import Activation, Evaluation, ReviewDecision

    adapter = get_adapter(session, adapter_id)
    run = adapter.run
    lineage = dict(
        session.execute(select(RunExample.split, func.count()).where(RunExample.run_id == run.id).group_by(RunExample.split)).all()
    )
    evaluations = session.scalars(select(Evaluation).where(Evaluation.adapter_id == adapter_id).order_by(Evaluation.id))
    decisions = session.scalars(select(ReviewDecision).where(ReviewDecision.adapter_id == adapter_id).order_by(ReviewDecision.id))
    activations = session.scalars(select(Activation).where(Activation.adapter_id == adapter_id).order_by(Activation.id))
    return {
        **as_dict(adapter),
        "lineage_feedback": lineage,
        "run_metrics": run.metrics,
        "dataset": run.dataset,
        "params": run.params,
        "evaluations": [
            {"id": e.id, "trigger": e.trigger, "at": e.created_at.isoformat(), "gate": e.gate, "summary_sha256": e.summary_hash}
            for e in evaluations
        ],
        "decisions": [{"reviewer": d.reviewer, "decision": d.decision, "note": d.note, "at": d.created_at.isoformat()} for d in decisions],
        "activations": [
            {"id": a.id, "kind": a.kind, "at": a.created_at.isoformat(), "by": a.created_by, "reason": a.reason} for a in activations
        ],
    }


def as_dict(adapter: Adapter) -> dict[str, Any]:
    run = adapter.run
    return {
        "id": adapter.id,
        "line": adapter.line.name,
        "status": adapter.status,
        "version": version_name(adapter),
        "created_at": adapter.created_at.isoformat(),
        "status_changed_at": adapter.status_changed_at.isoformat(),
        "status_reason": adapter.status_reason,
        "artifact_path": adapter.artifact_path,
        "sha256": adapter.sha256,
        "run": run.id,
        "base_model_hash": run.base_model_hash,
        "examples": {split: count for split, count in (run.dataset or {}).get("splits", {}).items()},
    }
