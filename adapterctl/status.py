"""`adapterctl status`: the whole deployment on one screen, line by line, with what needs attention.

Per line: its base model; the version it serves (since when, set by whom, how); a running canary with
its live comparison (adapterctl.canary_watch); candidates waiting for review and how long; the last training run; the eligible feedback no run has used yet. Warnings: a
lease left behind by a job that died, candidates failing the gate several times in a row, revoked
versions, artifacts missing or changed, and, for the whole database, a broken audit chain.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import activations, audit, canary_watch, dataset, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import Adapter, Lease, Line, TrainingRun
from adapterctl.db.types import utcnow
from adapterctl.errors import AdapterctlError
from adapterctl.serving.runtime import SERVABLE

GATE_FAILURES_WARNED = 2
"""Candidates failing the gate in a row from which status warns (the line's data or settings need a look)."""


def deployment(session: Session, store: ArtifactStore) -> dict[str, Any]:
    now = utcnow()
    chain = audit.verify(session)
    warnings = [] if chain.ok else [f"the audit chain is broken: {chain.reason} (`adapterctl audit verify`)"]
    lines = [line_status(session, store, line, now) for line in session.scalars(select(Line).order_by(Line.name))]
    return {"at": now.isoformat(), "lines": lines, "warnings": warnings, "audit": {"ok": chain.ok, "events": chain.events}}


def line_status(session: Session, store: ArtifactStore, line: Line, now: datetime) -> dict[str, Any]:
    adapters = list(session.scalars(select(Adapter).where(Adapter.line_id == line.id).order_by(Adapter.id)))
    return {
        "line": line.name,
        "base_model": {"name": line.base_model.name, "hash": line.base_model.content_hash[:12]},
        "serving": _serving(session, line),
        "canary": comparison.as_dict() if (comparison := canary_watch.compare(session, line.name)) else None,
        "waiting_for_review": [
            {"candidate": a.id, "waiting_s": _seconds(now, a.status_changed_at)} for a in adapters if a.status == "pending_review"
        ],
        "last_run": _last_run(session, line),
        "new_feedback": dataset.new_feedback_count(session, line.id),
        "warnings": _warnings(session, store, line, adapters, now),
    }


def _serving(session: Session, line: Line) -> dict[str, Any]:
    current = activations.current(session, line.id)
    if current is None:
        return {"version": "base", "since": None, "by": None, "how": None}
    return {
        "version": activations.describe(current.adapter),
        "since": current.created_at.isoformat(),
        "by": current.created_by,
        "how": current.kind,
    }


def _last_run(session: Session, line: Line) -> dict[str, Any] | None:
    run = session.scalar(select(TrainingRun).where(TrainingRun.line_id == line.id).order_by(TrainingRun.id.desc()).limit(1))
    if run is None:
        return None
    candidate = session.scalar(select(Adapter).where(Adapter.run_id == run.id))
    return {
        "run": run.id,
        "status": run.status,
        "started": run.started_at.isoformat(),
        "finished": run.finished_at.isoformat() if run.finished_at else None,
        "candidate": candidate.id if candidate else None,
        "candidate_status": candidate.status if candidate else None,
        "error": (run.error or "").splitlines()[0] if run.error else None,
    }


def _warnings(session: Session, store: ArtifactStore, line: Line, adapters: list[Adapter], now: datetime) -> list[str]:
    warnings = []
    lease = session.get(Lease, f"train:{line.name}")
    if lease is not None and lease.expires_at < now:
        warnings.append(
            f"a training lease expired {_seconds(now, lease.expires_at):.0f} s ago, left by {lease.holder} "
            f"(a job that died; the next `adapterctl train` takes it over)"
        )
    decided = [a for a in adapters if a.status not in ("training", "evaluating")]
    in_a_row = next((i for i, a in enumerate(reversed(decided)) if a.status != "gate_failed"), len(decided))
    if in_a_row >= GATE_FAILURES_WARNED:
        warnings.append(f"the last {in_a_row} candidates failed the gate (`adapterctl review show ID` says why)")
    revoked = [f"v{a.version}" for a in adapters if a.status == "revoked" and a.version is not None]
    if revoked:
        warnings.append(f"revoked (trained on forgotten feedback): {', '.join(revoked)}")
    for adapter in adapters:
        if adapter.status in SERVABLE:
            try:
                store.verify(adapter.artifact_path, adapter.sha256)
            except AdapterctlError as exc:
                warnings.append(f"{registry.version_name(adapter)}: {exc}")
    return warnings


def _seconds(now: datetime, then: datetime) -> float:
    return round((now - then).total_seconds(), 1)
