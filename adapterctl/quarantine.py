"""Quarantined sources: feedback from them is kept out of training (new and replayed) until released.

A quarantine names a source on one line, or on every line. Its feedback stays stored (it can be read,
exported or forgotten) but no run trains on it, and each run's dataset report counts what it kept
out. Quarantining and releasing are each one audit event, on the subject `quarantine:ID`: the audit
log never holds a source's name (see adapterctl.audit), the quarantine row does.

Who may: reviewers and admins (adapterctl.access; anyone while no admin is registered). A reviewer who
reads a flag in a candidate's report can keep its source out at once, without waiting for an admin.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from adapterctl import access, audit
from adapterctl.db.models import Feedback, Line, Quarantine
from adapterctl.db.types import utcnow
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.lines import get_line

EVERY_LINE = "(every line)"
MAX_SOURCE_CHARS = 256
MAX_REASON_CHARS = 4000
_LOCK = text("SELECT pg_advisory_xact_lock(7296117012)")  # serialises quarantine changes on PostgreSQL


@dataclass
class Change:
    """What a quarantine or release did: the rows it wrote, or why it wrote none."""

    rows: list[Quarantine]
    note: str | None = None
    """Why nothing changed, or what still holds the source after a release."""


def quarantine_source(session: Session, *, source: str, actor: str, line: str | None = None, reason: str | None = None) -> Change:
    """Keep `source`'s feedback out of training on `line` (None: every line) until released.
    Quarantining a source that is already quarantined there changes nothing."""
    source, reason = _source(source), _reason(reason)
    line_row = get_line(session, line) if line is not None else None
    access.require(session, actor, "feedback.quarantine")
    _lock(session)
    if existing := _holding(session, source, line_row.id if line_row else None):
        return Change(
            [],
            f"{source!r} is already quarantined on {_where(session, existing)} "
            f"(since {existing.created_at:%Y-%m-%d %H:%M} UTC, by {existing.created_by})",
        )
    row = Quarantine(source=source, line_id=line_row.id if line_row else None, reason=reason, created_by=actor)
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="feedback.quarantine",
        subject=f"quarantine:{row.id}",
        payload={"line": line_row.name if line_row else None, "reason": reason},
    )
    return Change([row])


def release_source(session: Session, *, source: str, actor: str, line: str | None = None) -> Change:
    """Let `source`'s feedback train again: on `line` its quarantine there; without a line, every quarantine of it."""
    source = _source(source)
    line_row = get_line(session, line) if line is not None else None
    access.require(session, actor, "feedback.release")
    _lock(session)
    active = list(
        session.scalars(select(Quarantine).where(Quarantine.source == source, Quarantine.released_at.is_(None)).order_by(Quarantine.id))
    )
    rows = [q for q in active if line_row is None or q.line_id == line_row.id]
    if not rows:
        if line_row is not None and any(q.line_id is None for q in active):
            raise InvalidInput(
                f"{source!r} is quarantined on every line, not on {line_row.name} alone; "
                f"release it everywhere with `adapterctl feedback release --source {shlex.quote(source)}`",
                param="line",
            )
        raise NotFound(f"{source!r} is not quarantined{' on ' + line_row.name if line_row else ''}; see `adapterctl feedback quarantines`")
    now = utcnow()
    for row in rows:
        row.released_at, row.released_by = now, actor
        audit.record(
            session,
            actor=actor,
            action="feedback.release",
            subject=f"quarantine:{row.id}",
            payload={"line": _line_name(session, row.line_id)},
        )
    still = next((q for q in active if q.line_id is None and q not in rows), None)
    return Change(rows, f"{source!r} stays quarantined on every line (quarantine {still.id})" if still else None)


def active_sources(session: Session, line_id: int) -> set[str]:
    """The sources whose feedback the line's runs keep out now."""
    return set(
        session.scalars(
            select(Quarantine.source).where(
                Quarantine.released_at.is_(None), or_(Quarantine.line_id.is_(None), Quarantine.line_id == line_id)
            )
        )
    )


def list_quarantines(session: Session, *, line: str | None = None, include_released: bool = False) -> list[dict[str, Any]]:
    """Quarantines, newest first, each with the active feedback records it keeps out; with a line, those
    that hold on it (its own and every-line ones)."""
    query = select(Quarantine).order_by(Quarantine.id.desc())
    if not include_released:
        query = query.where(Quarantine.released_at.is_(None))
    if line is not None:
        query = query.where(or_(Quarantine.line_id.is_(None), Quarantine.line_id == get_line(session, line).id))
    return [as_dict(session, row) for row in session.scalars(query)]


def as_dict(session: Session, row: Quarantine) -> dict[str, Any]:
    records = select(func.count()).select_from(Feedback).where(Feedback.source == row.source, Feedback.status == "active")
    if row.line_id is not None:
        records = records.where(Feedback.line_id == row.line_id)
    return {
        "id": row.id,
        "source": row.source,
        "line": _line_name(session, row.line_id),
        "reason": row.reason,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "released_at": row.released_at.isoformat() if row.released_at else None,
        "released_by": row.released_by,
        "records": session.scalar(records),
    }


def _holding(session: Session, source: str, line_id: int | None) -> Quarantine | None:
    """The active quarantine that already keeps `source` out where a new one would (every line covers each line)."""
    where = Quarantine.line_id.is_(None) if line_id is None else or_(Quarantine.line_id.is_(None), Quarantine.line_id == line_id)
    return session.scalar(
        select(Quarantine)
        .where(Quarantine.source == source, Quarantine.released_at.is_(None), where)
        .order_by(Quarantine.line_id.is_(None).desc(), Quarantine.id)
        .limit(1)
    )


def _where(session: Session, row: Quarantine) -> str:
    return "every line" if row.line_id is None else f"line {_line_name(session, row.line_id)}"


def _line_name(session: Session, line_id: int | None) -> str | None:
    return None if line_id is None else session.scalar(select(Line.name).where(Line.id == line_id))


def _source(source: str | None) -> str:
    if source is None or not source.strip():
        raise InvalidInput("--source is empty; name the feedback source to quarantine or release", param="source")
    if len(source) > MAX_SOURCE_CHARS or not source.isprintable():
        raise InvalidInput(f"--source must be at most {MAX_SOURCE_CHARS} printable characters, as feedback sources are", param="source")
    return source


def _reason(reason: str | None) -> str | None:
    if reason is not None and (len(reason) > MAX_REASON_CHARS or "\x00" in reason):
        raise InvalidInput(f"--reason must be at most {MAX_REASON_CHARS} characters without NUL (got {len(reason)})", param="reason")
    return reason or None


def _lock(session: Session) -> None:
    """Two people quarantining one source at once on PostgreSQL must not both insert (SQLite's write
    transaction already excludes other writers)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_LOCK)
