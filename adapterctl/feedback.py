"""Feedback capture: validate, deduplicate, store, list, export and forget feedback records.

A record is one piece of feedback about one model answer (see docs/feedback-format.md).
Exact duplicates (same line and content hash) are stored once and counted in `times_seen`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import Any

from sqlalchemy import Connection, case, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapterctl import activations, audit, erasure, registry
from adapterctl.db.models import BaseModel, Feedback, IssuedResponse, Line
from adapterctl.db.types import rowcount, table_of, utcnow
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.lines import get_line, line_id_of, lock_line

ROLES = ("system", "user", "assistant", "tool")
CONTENT_FIELDS = ("prompt", "response", "rating", "correction", "chosen", "rejected")
RECORD_FIELDS = ("line", *CONTENT_FIELDS, "source", "tags", "adapter_version", "request_id", "created_at")
_RECORD_FIELD_SET = frozenset(RECORD_FIELDS)
DEFAULT_MAX_FIELD_BYTES = 32 * 1024
MAX_TAGS = 32
_SHORT_LIMITS = {"source": 256, "adapter_version": 64, "request_id": 128}
_ACTIVE_ONLY = text("status = 'active'")
# One encoder for every record: json.dumps with options builds a new encoder on each call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class FeedbackRecord:
    """A validated feedback record, ready to store; build it with `parse_record`."""

    prompt: list[dict[str, str]]
    response: str
    rating: float | None
    correction: str | None
    chosen: str | None
    rejected: str | None
    source: str | None
    tags: list[str]
    adapter_version: str | None
    request_id: str | None
    created_at: datetime | None
    content_hash: str
    """sha256 of the content fields; metadata (source, tags, ids, time) does not make a record new."""


def content_hash(
    prompt: list[dict[str, str]], response: str, rating: float | None, correction: str | None, chosen: str | None, rejected: str | None
) -> str:
    """sha256 of the content fields joined by NUL, which validated text never contains.

    Roles are never empty, so the empty string after the last message ends the prompt unambiguously.
    """
    parts = [part for message in prompt for part in (message["role"], message["content"])]
    parts += ["", response, "" if rating is None else repr(rating), correction or "", chosen or "", rejected or ""]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- validation


def parse_record(raw: Any, *, max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES, issued: bool = False) -> FeedbackRecord:
    """Validate one record as found in a JSONL file or given to `log_feedback`; raise InvalidInput naming the field.

    `issued`: the response is one the server itself gave, stored as the model said it (`_issued_response`).
    """
    if not isinstance(raw, dict):
        raise InvalidInput("record must be a JSON object")
    if not _RECORD_FIELD_SET.issuperset(raw):
        unknown = next(key for key in raw if key not in _RECORD_FIELD_SET)
        raise InvalidInput(f"unknown field {unknown!r} (known: {', '.join(RECORD_FIELDS)})")
    get = raw.get
    prompt = parse_prompt(get("prompt"), max_field_bytes)
    given = get("response")
    response = _issued_response(given, max_field_bytes) if issued else _required_text(given, "response", max_field_bytes)
    rating = _rating(get("rating"))
    correction = _text(get("correction"), "correction", max_field_bytes)
    chosen = _text(get("chosen"), "chosen", max_field_bytes)
    rejected = _text(get("rejected"), "rejected", max_field_bytes)
    if (chosen is None) != (rejected is None):
        raise InvalidInput("chosen and rejected must be given together")
    if chosen is not None and chosen == rejected:
        raise InvalidInput("chosen and rejected must differ")
    if rating is None and correction is None and chosen is None:
        raise InvalidInput("feedback needs at least one of rating, correction, or chosen+rejected")
    return FeedbackRecord(
        prompt=prompt,
        response=response,
        rating=rating,
        correction=correction,
        chosen=chosen,
        rejected=rejected,
        source=_short_text(get("source"), "source"),
        tags=_tags(get("tags")),
        adapter_version=_short_text(get("adapter_version"), "adapter_version"),
        request_id=_short_text(get("request_id"), "request_id"),
        created_at=_timestamp(get("created_at")),
        content_hash=content_hash(prompt, response, rating, correction, chosen, rejected),
    )


def _issued_response(value: Any, max_bytes: int) -> str:
    """An answer the server gave, as it can be stored: empty when the model said nothing, and a NUL (byte-level
    tokenizers have a token for it; PostgreSQL text cannot hold it) as U+FFFD."""
    if isinstance(value, str):
        value = value.replace("\x00", "\ufffd")
        if value == "":
            return value
    return _required_text(value, "response", max_bytes)


def _required_text(value: Any, name: str, max_bytes: int) -> str:
    if value is None:
        raise InvalidInput(f"{name} is required")
    return _text(value, name, max_bytes) or ""


def _text(value: Any, name: str, max_bytes: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInput(f"{name} is not valid UTF-8 text") from None
    if size > max_bytes:
        raise InvalidInput(f"{name} is {size} bytes, more than the limit of {max_bytes} bytes")
    if "\x00" in value:
        raise InvalidInput(f"{name} contains a NUL character")
    if value.isspace() or not value:
        raise InvalidInput(f"{name} is empty")
    return value


def _short_text(value: Any, name: str) -> str | None:
    text_value = _text(value, name, _SHORT_LIMITS[name])
    if text_value is not None and not text_value.isprintable():
        raise InvalidInput(f"{name} contains control characters")
    return text_value


def parse_prompt(value: Any, max_bytes: int, field: str = "prompt") -> list[dict[str, str]]:
    """Chat messages from a string (one user message) or a list of {role, content}; errors name `field`."""
    if isinstance(value, str) or value is None:
        return [{"role": "user", "content": _required_text(value, field, max_bytes)}]
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field} must be a non-empty string or a non-empty list of chat messages {{role, content}}")
    has_user = False
    for index, message in enumerate(value):
        if not isinstance(message, dict) or len(message) != 2 or "role" not in message or "content" not in message:
            raise InvalidInput(f"{field}[{index}] must be an object with exactly the keys 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise InvalidInput(f"{field}[{index}].role {role!r} is not one of {', '.join(ROLES)}")
        _required_text(message["content"], f"{field}[{index}].content", max_bytes)
        has_user = has_user or role == "user"
    if not has_user:
        raise InvalidInput(f"{field} has no message with role 'user'")
    return [{"role": message["role"], "content": message["content"]} for message in value]


def _rating(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidInput(f"rating must be a number between -1 and 1, got {_shown(value)}")
    if not -1 <= value <= 1:  # compared as given: an integer too large for a float must not crash a conversion
        raise InvalidInput(f"rating {_shown(value)} is out of range [-1, 1]")
    return float(value)


def _shown(value: Any) -> str:
    """A value as an error message quotes it: at most 40 characters."""
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"{'-' if value < 0 else ''}(a number of {len(str(abs(value)))} digits)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) and tag.strip() for tag in value):
        raise InvalidInput("tags must be a list of non-empty strings")
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"tags has {len(value)} entries, more than the limit of {MAX_TAGS}")
    for tag in value:
        _text(tag, "tags", 64)
    return list(dict.fromkeys(value))


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("created_at must be an ISO 8601 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"created_at {_shown(value)} is not an ISO 8601 timestamp") from None
    try:
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is past the end of year 9999 in UTC
        raise InvalidInput(f"created_at {_shown(value)} is out of range: in UTC it falls outside the years 1 to 9999") from None


# ---------------------------------------------------------------- storing


def _row(record: FeedbackRecord, line_id: int, actor: str, now: datetime) -> dict[str, Any]:
    return {
        "line_id": line_id,
        "status": "active",
        "created_at": record.created_at or now,
        "content_hash": record.content_hash,
        "times_seen": 1,
        "prompt": record.prompt,
        "response": record.response,
        "rating": record.rating,
        "correction": record.correction,
        "chosen": record.chosen,
        "rejected": record.rejected,
        "source": record.source,
        "tags": record.tags,
        "adapter_version": record.adapter_version,
        "request_id": record.request_id,
        "logged_by": actor,
    }


@dataclass(frozen=True)
class LineRoles:
    """A line, and the message roles its base model's chat template renders."""

    line_id: int
    base_model: str
    rendered: frozenset[str] | None
    """None: not known (the tokenizer did not load at registration), so every role of ROLES is taken."""

    def check(self, roles: Sequence[str]) -> None:
        """Refuse a prompt (given by its roles, in order) that the chat template cannot render.

        Refused here rather than when training renders it, where one such record would stop every run.
        """
        if self.rendered is None or self.rendered.issuperset(roles):
            return
        index, role = next((index, role) for index, role in enumerate(roles) if role not in self.rendered)
        renders = ", ".join(r for r in ROLES if r in self.rendered) or "no role"
        raise InvalidInput(
            f"prompt[{index}].role {role!r} is not rendered by base model {self.base_model}'s chat template (it renders {renders})",
            param=f"prompt[{index}].role",
        )


def line_roles(connection: Session | Connection, name: str) -> LineRoles:
    """The line named `name`, with the roles its base model renders: what logging or importing a record checks."""
    query = select(Line.id, BaseModel.name, BaseModel.chat_roles).join(BaseModel, BaseModel.id == Line.base_model_id)
    row = connection.execute(query.where(Line.name == name)).first()
    if row is None:
        raise NotFound(f"line {name!r} does not exist; see `adapterctl line list` or create it with `adapterctl line create`")
    return LineRoles(row.id, row.name, None if row.chat_roles is None else frozenset(row.chat_roles))


@cache
def upsert_statement(dialect: str):
    """INSERT that, for a live duplicate (same line and content hash), adds to its `times_seen` instead."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table_of(Feedback))
    return statement.on_conflict_do_update(
        index_elements=[Feedback.line_id, Feedback.content_hash],
        index_where=_ACTIVE_ONLY,
        set_={"times_seen": Feedback.times_seen + statement.excluded.times_seen},
    )


def log_feedback(
    session: Session,
    *,
    line: str,
    prompt: str | list[dict[str, str]],
    response: str,
    actor: str,
    rating: float | None = None,
    correction: str | None = None,
    chosen: str | None = None,
    rejected: str | None = None,
    source: str | None = None,
    tags: Iterable[str] | None = None,
    adapter_version: str | None = None,
    request_id: str | None = None,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
) -> int:
    """Validate and store one feedback record; return its id (the existing id for a duplicate)."""
    raw = {
        "prompt": prompt,
        "response": response,
        "rating": rating,
        "correction": correction,
        "chosen": chosen,
        "rejected": rejected,
        "source": source,
        "tags": list(tags) if tags is not None else None,
        "adapter_version": adapter_version,
        "request_id": request_id,
    }
    record = parse_record(raw, max_field_bytes=max_field_bytes)
    target = line_roles(session, line)
    target.check([message["role"] for message in record.prompt])
    statement = upsert_statement(session.get_bind().dialect.name).returning(Feedback.id, Feedback.times_seen)
    feedback_id, times_seen = session.execute(statement, _row(record, target.line_id, actor, utcnow())).one()
    audit.record(
        session,
        actor=actor,
        action="feedback.log",
        subject=f"feedback:{feedback_id}",
        payload={"line": line, "content_hash": record.content_hash, "duplicate": times_seen > 1},
    )
    return feedback_id


def log_records(session: Session, records: list[tuple[str, FeedbackRecord]], *, actor: str) -> list[int]:
    """Store validated (line, record) pairs in one transaction with one audit event; return their ids in order.

    What a server does with feedback arriving from many requests at once: one commit for the batch.
    """
    statement = upsert_statement(session.get_bind().dialect.name).returning(Feedback.id)
    now = utcnow()
    ids = [session.execute(statement, _row(record, line_id_of(session, line), actor, now)).scalar_one() for line, record in records]
    lines = sorted({line for line, _ in records})
    audit.record(
        session,
        actor=actor,
        action="feedback.log",
        subject=f"line:{lines[0]}" if len(lines) == 1 else "feedback",
        payload={"count": len(ids), "ids": ids[:1000], "lines": lines},
    )
    return ids


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class FeedbackQuery:
    line: str | None = None
    source: str | None = None
    rating: str | None = None
    """'positive', 'negative', 'neutral', 'none', or a number."""
    since: datetime | None = None
    status: str | None = "active"
    """'active', 'forgotten', or None for both."""


def apply_filters(session: Session, query, filters: FeedbackQuery):
    """`query` with the filters applied; it must select from Feedback joined to Line."""
    if filters.line is not None:
        get_line(session, filters.line)  # an unknown line is an error, not an empty list
        query = query.where(Line.name == filters.line)
    if filters.source is not None:
        query = query.where(Feedback.source == filters.source)
    if filters.since is not None:
        query = query.where(Feedback.created_at >= filters.since)
    if filters.status is not None:
        if filters.status not in ("active", "forgotten"):
            raise InvalidInput(f"status must be 'active' or 'forgotten', got {filters.status!r}")
        query = query.where(Feedback.status == filters.status)
    if filters.rating is not None:
        query = query.where(_rating_condition(filters.rating))
    return query


def _rating_condition(rating: str):
    named = {
        "positive": Feedback.rating > 0,
        "negative": Feedback.rating < 0,
        "neutral": Feedback.rating == 0,
        "none": Feedback.rating.is_(None),
    }
    if rating in named:
        return named[rating]
    try:
        return Feedback.rating == _rating(float(rating))
    except ValueError:
        raise InvalidInput(f"rating filter must be positive, negative, neutral, none or a number, got {rating!r}") from None


def list_feedback(session: Session, filters: FeedbackQuery, *, limit: int = 50, offset: int = 0) -> tuple[list[Feedback], int]:
    """One page of feedback, newest first, and the number of records matching the filters."""
    if limit < 1 or offset < 0:
        raise InvalidInput("limit must be at least 1 and offset at least 0")
    total = session.scalar(apply_filters(session, select(func.count(Feedback.id)).join(Feedback.line), filters))
    query = apply_filters(session, select(Feedback).join(Feedback.line), filters)
    rows = session.scalars(query.order_by(Feedback.id.desc()).limit(limit).offset(offset))
    return list(rows), total


def get_feedback(session: Session, feedback_id: int) -> Feedback:
    row = session.get(Feedback, feedback_id)
    if row is None:
        raise NotFound(f"feedback #{feedback_id} does not exist")
    return row


def feedback_stats(session: Session, *, line: str | None = None, by_source: bool = False) -> list[dict[str, Any]]:
    """Counts per line (and per source with `by_source`): records, duplicates seen, ratings, corrections, pairs."""
    keys = [Line.name.label("line")] + ([Feedback.source.label("source")] if by_source else [])
    active = Feedback.status == "active"

    def count_if(condition):
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    query = (
        select(
            *keys,
            func.count(Feedback.id).label("records"),
            count_if(active).label("active"),
            count_if(Feedback.status == "forgotten").label("forgotten"),
            func.coalesce(func.sum(Feedback.times_seen), 0).label("times_seen"),
            count_if(Feedback.rating > 0).label("positive"),
            count_if(Feedback.rating == 0).label("neutral"),
            count_if(Feedback.rating < 0).label("negative"),
            count_if(Feedback.correction.is_not(None)).label("corrections"),
            count_if(Feedback.chosen.is_not(None)).label("pairs"),
        )
        .join(Line, Line.id == Feedback.line_id)
        .group_by(*keys)
        .order_by(*keys)
    )
    if line is not None:
        get_line(session, line)
        query = query.where(Line.name == line)
    return [dict(row._mapping) for row in session.execute(query)]


def as_dict(row: Feedback) -> dict[str, Any]:
    return {
        "id": row.id,
        "line": row.line.name,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "content_hash": row.content_hash,
        "times_seen": row.times_seen,
        "prompt": row.prompt,
        "response": row.response,
        "rating": row.rating,
        "correction": row.correction,
        "chosen": row.chosen,
        "rejected": row.rejected,
        "source": row.source,
        "tags": row.tags or [],
        "adapter_version": row.adapter_version,
        "request_id": row.request_id,
        "logged_by": row.logged_by,
        "forgotten_at": row.forgotten_at.isoformat() if row.forgotten_at else None,
        "forgotten_by": row.forgotten_by,
        "forget_reason": row.forget_reason,
    }


# ---------------------------------------------------------------- forgetting


@dataclass
class ForgetReport:
    forgotten: list[int]
    """Ids whose content was erased now."""
    already_forgotten: list[int]
    lines: list[str]
    revoked: list[int] = field(default_factory=list)
    """Adapters revoked because they were trained on the forgotten records."""
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    """Lines that served a revoked version and what they serve now."""
    responses_deleted: int = 0
    """Issued responses the records were given on (their request_id), deleted so no feedback can name them again."""
    redacted: erasure.Redacted = field(default_factory=erasure.Redacted)
    """The other copies erased in the database: evaluation samples, source names of runs, unfinished runs."""


def forget_feedback(
    session: Session,
    *,
    actor: str,
    ids: Iterable[int] = (),
    source: str | None = None,
    line: str | None = None,
    reason: str | None = None,
    dry_run: bool = False,
) -> ForgetReport:
    """Erase the content of feedback records, keeping a tombstone: id, line, content hash, time and who.

    Every other copy in the database goes in the same transaction (see `adapterctl.erasure`); after
    the commit, call `erasure.scrub` for the copies in files. The issued responses the records were
    given on are deleted too, so that no server accepts feedback on them again, and with a source, its
    quarantines (on `line` alone when given), even when none of its records is left to forget.
    """
    ids = sorted(set(ids))
    if bool(ids) == (source is not None):
        raise InvalidInput("give either feedback ids or a source to forget")
    query = select(Feedback.id, Feedback.status, Feedback.line_id, Feedback.prompt, Feedback.source, Feedback.request_id, Line.name).join(
        Line, Line.id == Feedback.line_id
    )
    if ids:
        found = {row.id: row for row in session.execute(query.where(Feedback.id.in_(ids)))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"feedback #{missing[0]} does not exist; nothing was forgotten")
        rows = list(found.values())
    else:
        query = query.where(Feedback.source == source)
        if line is not None:
            get_line(session, line)
            query = query.where(Line.name == line)
        rows = list(session.execute(query))
    live = [row for row in rows if row.status == "active"]
    targets = [row.id for row in live]
    report = ForgetReport(
        forgotten=targets,
        already_forgotten=[row.id for row in rows if row.status != "active"],
        lines=sorted({row.name for row in rows if row.status == "active"}),
    )
    if dry_run:
        return report
    quarantines = erasure.forget_quarantines(session, source, line) if source is not None else 0
    if not targets and not quarantines:
        return report
    for line_id in sorted({row.line_id for row in live}):  # first, as every change to a line does (a run storing its reference set)
        lock_line(session, line_id)
    erased = {name: None for name in ("prompt", "response", "rating", "correction", "chosen", "rejected", "source", "tags")}
    for start in range(0, len(targets), 1000):
        session.execute(
            update(Feedback)
            .where(Feedback.id.in_(targets[start : start + 1000]))
            .values(**erased, status="forgotten", forgotten_at=utcnow(), forgotten_by=actor, forget_reason=reason)
        )
    request_ids = sorted({row.request_id for row in live if row.request_id is not None})
    for start in range(0, len(request_ids), 1000):
        report.responses_deleted += rowcount(
            session.execute(delete(IssuedResponse).where(IssuedResponse.id.in_(request_ids[start : start + 1000])))
        )
    # No trace of the source, not even a hash: a guessed identifier could be confirmed against it.
    payload = {
        "count": len(targets),
        "ids": targets[:1000],
        "lines": report.lines,
        "reason": reason,
        "by": "source" if source else "id",
        "responses_deleted": report.responses_deleted,
        "quarantines_deleted": quarantines,
    }
    audit.record(
        session,
        actor=actor,
        action="feedback.forget",
        subject=f"line:{report.lines[0]}" if len(report.lines) == 1 else "feedback",
        payload=payload,
    )
    report.redacted = erasure.redact(session, live, actor=actor)
    report.redacted.quarantines_deleted = quarantines
    revoked = registry.revoke_trained_on(session, targets, actor=actor)
    report.revoked = [adapter.id for adapter in revoked]
    for line_id in sorted({adapter.line_id for adapter in revoked}):  # a line serving a revoked version falls back now
        name = session.get_one(Line, line_id).name
        if fallback := activations.fall_back(session, line_id, actor=actor, reason="the served version was trained on forgotten feedback"):
            report.fallbacks.append({"line": name, "to": activations.describe(fallback.adapter)})
        else:  # servers holding the revoked version unload it at once
            activations.notify(session, name)
    return report
