"""Activations: which version each line serves, from when, set by whom and why.

An activation is an append-only row "from now on, line L serves adapter A (or the base model)", and
while a canary runs, "… and version C to a share S of its end users". The active version of a line is
its newest activation; history is never rewritten, so a rollback (or a canary's start, share change
or abort) is a new activation too. Every change locks the line's row first, so a promote racing a rollback (or a
forget) is serialised: each sees the other's outcome, and adapter states stay in step with the
newest activation (the served adapter `active`, the one it replaced `inactive`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from adapterctl import audit, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.canary import percent
from adapterctl.db.models import Activation, Adapter, Line
from adapterctl.errors import InvalidInput, InvalidTransition
from adapterctl.faults import crash_point
from adapterctl.lines import get_line, lock_line

BASE = "base"
CHANNEL = "adapterctl_activations"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :line)")
ACTIVATABLE = ("approved", "inactive")
KINDS = ("promote", "rollback", "fallback", "canary", "canary_set", "canary_abort")
"""canary: a canary starts; canary_set: its share changes; canary_abort: everyone back on the active
version. Completing a canary is a promote of its version."""


def current(session: Session, line_id: int) -> Activation | None:
    """The line's newest activation; None when it never had one (it serves the base model)."""
    return session.scalar(select(Activation).where(Activation.line_id == line_id).order_by(Activation.id.desc()).limit(1))


def promote(
    session: Session,
    store: ArtifactStore,
    *,
    line: str,
    version: int,
    actor: str,
    reason: str | None = None,
    evidence: dict[str, Any] | None = None,
) -> Activation:
    """Serve an approved version: its artifact is verified first; the version it replaces becomes inactive."""
    line_row = _locked_line(session, line)
    adapter = registry.get_version(session, line_row.id, version)
    if adapter.status == "active":
        raise InvalidTransition(f"{line} v{version} is already active")
    if adapter.status not in ACTIVATABLE:
        raise InvalidTransition(f"{line} v{version} is {adapter.status}; only approved versions can be promoted")
    store.verify(adapter.artifact_path, adapter.sha256)  # a tampered file never goes live
    return _activate(session, line_row, adapter, kind="promote", actor=actor, reason=reason, evidence=evidence)


def rollback(
    session: Session, store: ArtifactStore, *, line: str, to: str | None = None, actor: str, reason: str | None = None
) -> Activation:
    """Serve the version active before the current one (skipping revoked ones), a named version, or `base`."""
    line_row = _locked_line(session, line)
    now = current(session, line_row.id)
    now_id = now.adapter_id if now else None
    if to == BASE:
        target = None
    elif to is not None:
        target = registry.get_version(session, line_row.id, registry.parse_version(to))
        if target.status not in ACTIVATABLE + ("active",):
            raise InvalidTransition(f"{line} {registry.version_name(target)} is {target.status}; it cannot be served")
    else:
        target = _previous(session, line_row.id, now_id)
    if (target.id if target else None) == now_id:
        raise InvalidInput(
            f"{line} already serves {describe(target)}; nothing to roll back to"
            if to is None
            else f"{line} already serves {describe(target)}"
        )
    if target is not None:
        store.verify(target.artifact_path, target.sha256)
    return _activate(session, line_row, target, kind="rollback", actor=actor, reason=reason)


def fall_back(session: Session, line_id: int, *, actor: str, reason: str) -> Activation | None:
    """If the line serves a revoked version, serve its newest clean approved version (or the base model)
    now; if its canary was revoked, the canary ends (everyone on the active version)."""
    lock_line(session, line_id)
    line_row = session.get_one(Line, line_id)
    now = current(session, line_id)
    if now is None:
        return None
    if now.adapter is not None and now.adapter.status == "revoked":
        clean = session.scalar(
            select(Adapter).where(Adapter.line_id == line_id, Adapter.status.in_(ACTIVATABLE)).order_by(Adapter.version.desc()).limit(1)
        )
        return _activate(session, line_row, clean, kind="fallback", actor=actor, reason=reason)
    if now.canary_adapter is not None and now.canary_adapter.status == "revoked":
        return _record(
            session, line_row, now.adapter, kind="fallback", actor=actor, reason=f"canary {describe(now.canary_adapter)} revoked: {reason}"
        )
    return None


# ---------------------------------------------------------------- canaries


def start_canary(
    session: Session, store: ArtifactStore, *, line: str, version: int, share: float, actor: str, reason: str | None = None
) -> Activation:
    """Serve an approved version to `share` of the line's end users, the active version to the rest."""
    line_row = _locked_line(session, line)
    now = current(session, line_row.id)
    if now is not None and now.canary_adapter is not None:
        raise InvalidTransition(
            f"{line} already runs a canary of {describe(now.canary_adapter)}; `adapterctl canary complete|abort {line}` ends it"
        )
    adapter = registry.get_version(session, line_row.id, version)
    if adapter.status == "active":
        raise InvalidTransition(f"{line} v{version} is already active")
    if adapter.status not in ACTIVATABLE:
        raise InvalidTransition(f"{line} v{version} is {adapter.status}; only approved versions can be a canary")
    store.verify(adapter.artifact_path, adapter.sha256)
    return _record(session, line_row, now.adapter if now else None, kind="canary", actor=actor, reason=reason, canary=adapter, share=share)


def set_canary_share(session: Session, *, line: str, share: float, actor: str, reason: str | None = None) -> Activation:
    """Serve the running canary to another share of end users (raising it keeps everyone who had it)."""
    line_row, now = _running_canary(session, line)
    if now.canary_share == share:
        raise InvalidInput(f"{line}'s canary {describe(now.canary_adapter)} already has {percent(share)} of its end users")
    return _record(session, line_row, now.adapter, kind="canary_set", actor=actor, reason=reason, canary=now.canary_adapter, share=share)


def abort_canary(
    session: Session, *, line: str, actor: str, reason: str | None = None, evidence: dict[str, Any] | None = None
) -> Activation:
    """Everyone back on the active version; `evidence` (the live comparison) goes to the audit event."""
    line_row, now = _running_canary(session, line)
    return _record(
        session, line_row, now.adapter, kind="canary_abort", actor=actor, reason=reason, evidence=evidence, ended=now.canary_adapter
    )


def complete_canary(
    session: Session, store: ArtifactStore, *, line: str, actor: str, reason: str | None = None, evidence: dict[str, Any] | None = None
) -> Activation:
    """Everyone on the canary's version: an ordinary promote."""
    _, now = _running_canary(session, line)
    assert now.canary_adapter is not None and now.canary_adapter.version is not None  # a running canary has a version
    return promote(
        session,
        store,
        line=line,
        version=now.canary_adapter.version,
        actor=actor,
        reason=f"canary complete: {reason}" if reason else "canary complete",
        evidence=evidence,
    )


def canary_start(session: Session, line_id: int) -> Activation | None:
    """The activation that started the line's running canary; None when none runs (the newest activation
    without a canary is then newer than every canary start)."""
    ended = select(func.max(Activation.id)).where(Activation.line_id == line_id, Activation.canary_adapter_id.is_(None)).scalar_subquery()
    return session.scalar(
        select(Activation)
        .where(Activation.line_id == line_id, Activation.kind == "canary", Activation.id > func.coalesce(ended, 0))
        .order_by(Activation.id.desc())
        .limit(1)
    )


def _running_canary(session: Session, line: str) -> tuple[Line, Activation]:
    line_row = _locked_line(session, line)
    now = current(session, line_row.id)
    if now is None or now.canary_adapter is None:
        raise InvalidTransition(f"{line} runs no canary; start one with `adapterctl promote {line} vN --canary 10%`")
    return line_row, now


def _previous(session: Session, line_id: int, now_id: int | None) -> Adapter | None:
    """The newest earlier activation's target that differs from the current one and can still be served."""
    for activation in session.scalars(select(Activation).where(Activation.line_id == line_id).order_by(Activation.id.desc())):
        if activation.adapter_id == now_id:
            continue
        if activation.adapter is None or activation.adapter.status in ACTIVATABLE:
            return activation.adapter
    return None


def _activate(
    session: Session,
    line: Line,
    adapter: Adapter | None,
    *,
    kind: str,
    actor: str,
    reason: str | None,
    evidence: dict[str, Any] | None = None,
) -> Activation:
    """Serve `adapter` to everyone: the adapter states follow (the served one active, the replaced one inactive)."""
    now = current(session, line.id)
    previous = now.adapter if now else None
    if previous is not None and previous.status == "active":
        registry.transition(session, previous.id, "inactive", actor=actor, reason=f"{kind}: replaced by {describe(adapter)}")
    if adapter is not None:
        registry.transition(session, adapter.id, "active", actor=actor, reason=f"{kind}: {reason}" if reason else kind)
    return _record(
        session, line, adapter, kind=kind, actor=actor, reason=reason, evidence=evidence, ended=now.canary_adapter if now else None
    )


def _record(
    session: Session,
    line: Line,
    adapter: Adapter | None,
    *,
    kind: str,
    actor: str,
    reason: str | None,
    canary: Adapter | None = None,
    share: float | None = None,
    evidence: dict[str, Any] | None = None,
    ended: Adapter | None = None,
) -> Activation:
    """The activation row, its audit event and the NOTIFY that wakes the servers."""
    now = current(session, line.id)
    activation = Activation(
        line_id=line.id,
        adapter_id=adapter.id if adapter else None,
        kind=kind,
        reason=reason,
        created_by=actor,
        canary_adapter_id=canary.id if canary else None,
        canary_share=share,
    )
    session.add(activation)
    session.flush()
    payload: dict[str, Any] = {
        "from": describe(now.adapter if now else None),
        "to": describe(adapter),
        "adapter": adapter.id if adapter else None,
        "sha256": adapter.sha256 if adapter else None,
        "reason": reason,
        "activation": activation.id,
    }
    if canary is not None:
        payload.update(canary=describe(canary), canary_adapter=canary.id, canary_sha256=canary.sha256, share=share)
    if ended is not None and ended is not canary:
        payload["canary_ended"] = describe(ended)
    if evidence is not None:
        payload["evidence"] = evidence
    audit.record(session, actor=actor, action=f"line.{kind}", subject=f"line:{line.name}", payload=payload)
    notify(session, line.name)
    crash_point("activation.added")
    return activation


def notify(session: Session, line: str) -> None:
    """Tell listening servers (and `vllm sync`) that what the line may serve changed: they hear of it at
    commit, before their next poll (PostgreSQL; on SQLite they poll)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NOTIFY, {"line": line})


def _locked_line(session: Session, name: str) -> Line:
    line = get_line(session, name)
    lock_line(session, line.id)
    return line


def describe(adapter: Adapter | None) -> str:
    """An activated adapter is always a version."""
    return f"v{adapter.version}" if adapter is not None else BASE


def canary_history(session: Session, adapter: Adapter) -> list[dict[str, Any]]:
    """The activations of the version's canaries: each start and share change, and what ended it (an
    abort, with its evidence, or a completion); what its reviewers see in `review show`."""
    entries, running = [], False
    for entry in history(session, adapter.line.name):
        if entry["canary_adapter_id"] == adapter.id or running:
            entries.append(entry)
        running = entry["canary_adapter_id"] == adapter.id
    return entries


def history(session: Session, line: str) -> list[dict[str, Any]]:
    """Every activation of the line, oldest first: from what to what, who, when, why."""
    line_row = get_line(session, line)
    entries, served = [], BASE
    for activation in session.scalars(select(Activation).where(Activation.line_id == line_row.id).order_by(Activation.id)):
        target = describe(activation.adapter)
        canary = f"{describe(activation.canary_adapter)} to {percent(activation.canary_share or 0)}" if activation.canary_adapter else None
        entries.append(
            {
                "id": activation.id,
                "at": activation.created_at.isoformat(),
                "kind": activation.kind,
                "from": served,
                "to": target,
                "adapter_id": activation.adapter_id,
                "canary": canary,
                "canary_adapter_id": activation.canary_adapter_id,
                "canary_share": activation.canary_share,
                "by": activation.created_by,
                "reason": activation.reason,
            }
        )
        served = target
    return entries
