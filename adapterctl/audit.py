"""The audit log: append-only events, each holding the hash of the one before it.

Every state change writes one event in the same transaction as the change. Payloads never hold
feedback text or user identifiers, so that forgetting data never needs to rewrite history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from adapterctl.db.models import AuditEvent
from adapterctl.db.types import table_of, utcnow

GENESIS_HASH = "0" * 64
_CHAIN_LOCK_KEY = 7_296_117_011  # PostgreSQL advisory lock serialising appends to the chain


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(*, seq: int, created_at: datetime, actor: str, action: str, subject: str, payload: str, prev_hash: str) -> str:
    fields = [prev_hash, str(seq), created_at.isoformat(timespec="microseconds"), actor, action, subject, payload]
    return hashlib.sha256("\x1f".join(fields).encode("utf-8")).hexdigest()


_EVENTS = table_of(AuditEvent)
_TAIL = select(_EVENTS.c.seq, _EVENTS.c.hash).order_by(_EVENTS.c.seq.desc()).limit(1)
_LOCK_CHAIN = text(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK_KEY})")


def record(session: Session, *, actor: str, action: str, subject: str, payload: dict[str, Any] | None = None) -> str:
    """Append one event to the chain, inside the caller's transaction; return its hash."""
    if session.get_bind().dialect.name == "postgresql":
        # SQLite transactions already hold the write lock (BEGIN IMMEDIATE); PostgreSQL needs one so
        # that two writers never both extend the same tail.
        session.execute(_LOCK_CHAIN)
    tail = session.execute(_TAIL).first()
    seq, prev_hash = (tail.seq + 1, tail.hash) if tail else (1, GENESIS_HASH)
    created_at, body = utcnow(), canonical_json(payload or {})
    digest = event_hash(seq=seq, created_at=created_at, actor=actor, action=action, subject=subject, payload=body, prev_hash=prev_hash)
    session.execute(
        insert(_EVENTS),
        {
            "seq": seq,
            "created_at": created_at,
            "actor": actor,
            "action": action,
            "subject": subject,
            "payload": body,
            "prev_hash": prev_hash,
            "hash": digest,
        },
    )
    return digest


def _hash_of(event: AuditEvent) -> str:
    return event_hash(
        seq=event.seq,
        created_at=event.created_at,
        actor=event.actor,
        action=event.action,
        subject=event.subject,
        payload=event.payload,
        prev_hash=event.prev_hash,
    )


@dataclass(frozen=True)
class Verification:
    ok: bool
    events: int
    head: str
    """Hash of the newest event; keep it elsewhere to detect a later deletion of the newest events."""
    broken_seq: int | None = None
    reason: str | None = None


def verify(session: Session, *, anchor: str | None = None) -> Verification:
    """Walk the chain from the first event; report the first event that was edited, deleted or reordered."""
    expected_seq, prev_hash, anchor_seen, count = 1, GENESIS_HASH, anchor is None, 0
    for event in _all_events(session):
        problem = None
        if event.seq != expected_seq:
            problem = f"events #{expected_seq}..#{event.seq - 1} are missing (deleted)"
        elif event.prev_hash != prev_hash:
            problem = f"event #{event.seq} does not follow event #{event.seq - 1} (it was edited or replaced)"
        elif _hash_of(event) != event.hash:
            problem = f"event #{event.seq} ({event.action} {event.subject}) was modified after it was written"
        if problem:
            return Verification(False, count, prev_hash, broken_seq=expected_seq, reason=problem)
        anchor_seen = anchor_seen or event.hash == anchor
        expected_seq, prev_hash, count = event.seq + 1, event.hash, count + 1
    if not anchor_seen:
        return Verification(
            False, count, prev_hash, broken_seq=expected_seq, reason=f"anchor {anchor} is not in the chain (newest events deleted?)"
        )
    return Verification(True, count, prev_hash)


def _all_events(session: Session) -> Iterator[AuditEvent]:
    yield from session.scalars(select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000))


def list_events(session: Session, *, limit: int = 50, action: str | None = None, subject: str | None = None) -> list[AuditEvent]:
    """The newest events first, optionally filtered by action (prefix) or subject."""
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
    if action:
        query = query.where(AuditEvent.action.startswith(action))
    if subject:
        query = query.where(AuditEvent.subject == subject)
    return list(session.scalars(query))


def as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
        "payload": json.loads(event.payload),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
