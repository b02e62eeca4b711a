"""`adapterctl doctor`: whether the database and the artifact store agree, and the repair of what a
crash provably left behind.

    schema     the database is at the newest migration
    artifacts  every candidate's artifact is there and matches its sha256 (an error for a version that
               may be served, a warning for the others)
    orphans    artifact folders no candidate names (a process died between the folder's rename and its
               database commit) and staging folders of training runs no longer running
    leases     leases past their expiry, or held by a process of this host that is gone (a job that died;
               the next run would take them over)
    audit      the audit log's hash chain is unbroken

`repair` removes orphan folders and expired leases, and only where no live training lease covers the
line: a run between its rename and its commit is never touched. Each removal is an audit event.
Nothing else is ever changed: a missing or modified artifact, or a broken audit chain, needs a person.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit, leases, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.migrate import SCHEMA_REVISION, current_revision
from adapterctl.db.models import Adapter, Lease, Line
from adapterctl.db.types import utcnow
from adapterctl.errors import AdapterctlError
from adapterctl.serving.runtime import SERVABLE

_CANDIDATE_FOLDER = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class Finding:
    check: str
    """schema, artifacts, orphans, leases or audit."""
    severity: str
    """ok, warning or error."""
    detail: str
    repair: str | None = None
    """What `--repair` does about it: `remove <path>` or `release <lease>`; None when it needs a person."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def examine(session: Session, store: ArtifactStore) -> list[Finding]:
    """Every check, in order; a check that finds nothing wrong says so once."""
    findings = []
    for check in (_schema, _artifacts, _orphans, _leases, _audit):
        found = check(session, store)
        findings += found or [Finding(check.__name__.strip("_"), "ok", "no problem found")]
    return findings


def repair(session: Session, store: ArtifactStore, findings: list[Finding], *, actor: str) -> list[str]:
    """Carry out the findings' repairs (call in a transaction); what was done, each an audit event."""
    done = []
    for finding in findings:
        if finding.repair is None:
            continue
        action, _, target = finding.repair.partition(" ")
        if action == "remove":
            store.remove(store.root / target if target.split("/")[-1].startswith(".staging-") else target)
        elif not leases.release_abandoned(session, target):
            continue  # taken over since the check: a live holder's lease stays, and nothing was repaired
        audit.record(
            session,
            actor=actor,
            action="doctor.repair",
            subject=f"doctor:{finding.check}",
            payload={"repair": finding.repair, "finding": finding.detail},
        )
        done.append(finding.repair)
    return done


def _schema(session: Session, store: ArtifactStore) -> list[Finding]:
    current = current_revision(session.get_bind().engine)
    if current != SCHEMA_REVISION:
        return [
            Finding(
                "schema", "error", f"the database is at {current}, this adapterctl needs {SCHEMA_REVISION}: run `adapterctl db upgrade`"
            )
        ]
    return []


def _artifacts(session: Session, store: ArtifactStore) -> list[Finding]:
    findings = []
    for adapter in session.scalars(select(Adapter).order_by(Adapter.id)):
        try:
            store.verify(adapter.artifact_path, adapter.sha256)
        except AdapterctlError as exc:
            name = f"{adapter.line.name} {registry.version_name(adapter)}" if adapter.version else f"candidate {adapter.id}"
            severity = "error" if adapter.status in SERVABLE else "warning"
            findings.append(Finding("artifacts", severity, f"{name} ({adapter.status}): {exc}"))
    return findings


def _orphans(session: Session, store: ArtifactStore) -> list[Finding]:
    if not store.root.is_dir():
        return []
    named = set(session.scalars(select(Adapter.artifact_path)))
    lines = {line.id: line.name for line in session.scalars(select(Line))}
    findings = []
    for line_folder in sorted(p for p in store.root.iterdir() if p.is_dir() and p.name in lines.values()):
        training = leases.live_holder(session, f"train:{line_folder.name}")
        for folder in sorted(line_folder.iterdir()):
            relative = f"{line_folder.name}/{folder.name}"
            orphan = folder.name.startswith(".staging-") or (_CANDIDATE_FOLDER.fullmatch(folder.name) and relative not in named)
            if not orphan or not folder.is_dir():
                continue
            if training:
                findings.append(
                    Finding(
                        "orphans",
                        "warning",
                        f"{relative}: no candidate names it, but {training} is training {line_folder.name} now; left alone",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "orphans", "warning", f"{relative}: no candidate names it (left by a run that died)", repair=f"remove {relative}"
                    )
                )
    return findings


def _leases(session: Session, store: ArtifactStore) -> list[Finding]:
    now, findings = utcnow(), []
    for lease in session.scalars(select(Lease).order_by(Lease.name)):
        if lease.expires_at < now:
            detail = f"lease {lease.name} expired at {lease.expires_at.isoformat()}, left by {lease.holder}"
        elif leases.live_holder(session, lease.name) is None:
            detail = f"lease {lease.name} is held by {lease.holder}, a process of this host that is gone"
        else:
            continue
        findings.append(Finding("leases", "warning", detail, repair=f"release {lease.name}"))
    return findings


def _audit(session: Session, store: ArtifactStore) -> list[Finding]:
    chain = audit.verify(session)
    if not chain.ok:
        return [Finding("audit", "error", f"the audit chain is broken at event {chain.broken_seq}: {chain.reason}")]
    return []
