"""Activations: which version each line serves, from when, set by whom and why.

An activation is an append-only row "from now on, line L serves adapter A (or the base model)". The
active version of a line is its newest activation; history is never rewritten, so a rollback is a
new activation too. Every change locks the line's row first, so a promote racing a rollback (or a
forget) is serialised: each sees the other's outcome, and adapter states stay in step with the
newest activation (the served adapter `active`, the one it replaced `inactive`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from adapterctl import audit, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import Activation, Adapter, Line
from adapterctl.errors import InvalidInput, InvalidTransition
from adapterctl.lines import get_line, lock_line

BASE = "base"
CHANNEL = "adapterctl_activations"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', :line)")
ACTIVATABLE = ("approved", "inactive")


def current(session: Session, line_id: int) -> Activation | None:
    """The line's newest activation; None when it never had one (it serves the base model)."""
    return session.scalar(select(Activation).where(Activation.line_id == line_id).order_by(Activation.id.desc()).limit(1))


def promote(session: Session, store: ArtifactStore, *, line: str, version: int, actor: str, reason: str | None = None) -> Activation:
    """Serve an approved version: its artifact is verified first; the version it replaces becomes inactive."""
    line_row = _locked_line(session, line)
    adapter = registry.get_version(session, line_row.id, version)
    if adapter.status == "active":
        raise InvalidTransition(f"{line} v{version} is already active")
    if adapter.status not in ACTIVATABLE:
        raise InvalidTransition(f"{line} v{version} is {adapter.status}; only approved versions can be promoted")
    store.verify(adapter.artifact_path, adapter.sha256)  # a tampered file never goes live
    return _activate(session, line_row, adapter, kind="promote", actor=actor, reason=reason)


def rollback(session: Session, store: ArtifactStore, *, line: str, to: str | None = None, actor: str,
             reason: str | None = None) -> Activation:
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
        raise InvalidInput(f"{line} already serves {describe(target)}; nothing to roll back to" if to is None
                           else f"{line} already serves {describe(target)}")
    if target is not None:
        store.verify(target.artifact_path, target.sha256)
    return _activate(session, line_row, target, kind="rollback", actor=actor, reason=reason)


def fall_back(session: Session, line_id: int, *, actor: str, reason: str) -> Activation | None:
    """If the line serves a revoked version, serve its newest clean approved version (or the base model) now."""
    lock_line(session, line_id)
    line_row = session.get(Line, line_id)
    now = current(session, line_id)
    if now is None or now.adapter is None or now.adapter.status != "revoked":
        return None
    clean = session.scalar(select(Adapter).where(Adapter.line_id == line_id, Adapter.status.in_(ACTIVATABLE))
                           .order_by(Adapter.version.desc()).limit(1))
    return _activate(session, line_row, clean, kind="fallback", actor=actor, reason=reason)


def _previous(session: Session, line_id: int, now_id: int | None) -> Adapter | None:
    """The newest earlier activation's target that differs from the current one and can still be served."""
    for activation in session.scalars(select(Activation).where(Activation.line_id == line_id).order_by(Activation.id.desc())):
        if activation.adapter_id == now_id:
            continue
        if activation.adapter is None or activation.adapter.status in ACTIVATABLE:
            return activation.adapter
    return None


def _activate(session: Session, line: Line, adapter: Adapter | None, *, kind: str, actor: str, reason: str | None) -> Activation:
    now = current(session, line.id)
    previous = now.adapter if now else None
    if previous is not None and previous.status == "active":
        registry.transition(session, previous.id, "inactive", actor=actor, reason=f"{kind}: replaced by {describe(adapter)}")
    if adapter is not None:
        registry.transition(session, adapter.id, "active", actor=actor, reason=f"{kind}: {reason}" if reason else kind)
    activation = Activation(line_id=line.id, adapter_id=adapter.id if adapter else None, kind=kind, reason=reason, created_by=actor)
    session.add(activation)
    session.flush()
    audit.record(session, actor=actor, action=f"line.{kind}", subject=f"line:{line.name}",
                 payload={"from": describe(previous), "to": describe(adapter), "adapter": adapter.id if adapter else None,
                          "sha256": adapter.sha256 if adapter else None, "reason": reason, "activation": activation.id})
    notify(session, line.name)
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
    return registry.version_name(adapter) if adapter is not None else BASE


def history(session: Session, line: str) -> list[dict[str, Any]]:
    """Every activation of the line, oldest first: from what to what, who, when, why."""
    line_row = get_line(session, line)
    entries, served = [], BASE
    for activation in session.scalars(select(Activation).where(Activation.line_id == line_row.id).order_by(Activation.id)):
        target = describe(activation.adapter)
        entries.append({"id": activation.id, "at": activation.created_at.isoformat(), "kind": activation.kind, "from": served,
                        "to": target, "adapter_id": activation.adapter_id, "by": activation.created_by, "reason": activation.reason})
        served = target
    return entries
