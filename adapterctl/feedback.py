"""Feedback capture: validate, deduplicate, store, list, export and forget feedback records.

A record is one piece of feedback about one model answer (see docs/feedback-format.md).
Exact duplicates (same line and content hash) are stored once and counted in `times_seen`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, TextIO

from sqlalchemy import case, func, select, text, update
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.db.models import Feedback, Line
from adapterctl.db.types import utcnow
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.lines import get_line

ROLES = ("system", "user", "assistant", "tool")
CONTENT_FIELDS = ("prompt", "response", "rating", "correction", "chosen", "rejected")
RECORD_FIELDS = ("line", *CONTENT_FIELDS, "source", "tags", "adapter_version", "request_id", "created_at")
DEFAULT_MAX_FIELD_BYTES = 32 * 1024
MAX_TAGS = 32
_SHORT_LIMITS = {"source": 256, "adapter_version": 64, "request_id": 128}
_ACTIVE_ONLY = text("status = 'active'")


@dataclass(frozen=True)
class FeedbackRecord:
    """A validated feedback record, ready to store."""

    prompt: list[dict[str, str]]
    response: str
    rating: float | None = None
    correction: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    source: str | None = None
    tags: list[str] = field(default_factory=list)
    adapter_version: str | None = None
    request_id: str | None = None
    created_at: datetime | None = None

    @property
    def content_hash(self) -> str:
        content = {name: getattr(self, name) for name in CONTENT_FIELDS}
        return hashlib.sha256(audit.canonical_json(content).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- validation


def parse_record(raw: Any, *, max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES) -> FeedbackRecord:
    """Validate one record as found in a JSONL file or given to `log_feedback`; raise InvalidInput naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput("record must be a JSON object")
    unknown = [key for key in raw if key not in RECORD_FIELDS]
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} (known: {', '.join(RECORD_FIELDS)})")
    text_field = lambda name: _text(raw.get(name), name, max_field_bytes)  # noqa: E731
    record = FeedbackRecord(
        prompt=_prompt(raw.get("prompt"), max_field_bytes),
        response=_required(text_field("response"), "response"),
        rating=_rating(raw.get("rating")),
        correction=text_field("correction"),
        chosen=text_field("chosen"),
        rejected=text_field("rejected"),
        source=_short_text(raw.get("source"), "source"),
        tags=_tags(raw.get("tags")),
        adapter_version=_short_text(raw.get("adapter_version"), "adapter_version"),
        request_id=_short_text(raw.get("request_id"), "request_id"),
        created_at=_timestamp(raw.get("created_at")),
    )
    if (record.chosen is None) != (record.rejected is None):
        raise InvalidInput("chosen and rejected must be given together")
    if record.chosen is not None and record.chosen == record.rejected:
        raise InvalidInput("chosen and rejected must differ")
    if record.rating is None and record.correction is None and record.chosen is None:
        raise InvalidInput("feedback needs at least one of rating, correction, or chosen+rejected")
    return record


def _check_string(value: str, name: str, max_bytes: int) -> str:
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
    return value


def _text(value: Any, name: str, max_bytes: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{name} is empty")
    return _check_string(value, name, max_bytes)


def _required(value: str | None, name: str) -> str:
    if value is None:
        raise InvalidInput(f"{name} is required")
    return value


def _short_text(value: Any, name: str) -> str | None:
    text_value = _text(value, name, _SHORT_LIMITS[name])
    if text_value is not None and not text_value.isprintable():
        raise InvalidInput(f"{name} contains control characters")
    return text_value


def _prompt(value: Any, max_bytes: int) -> list[dict[str, str]]:
    if value is None:
        raise InvalidInput("prompt is required")
    if isinstance(value, str):
        return [{"role": "user", "content": _required(_text(value, "prompt", max_bytes), "prompt")}]
    if not isinstance(value, list) or not value:
        raise InvalidInput("prompt must be a non-empty string or a non-empty list of chat messages {role, content}")
    messages = []
    for index, message in enumerate(value):
        where = f"prompt[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InvalidInput(f"{where} must be an object with exactly the keys 'role' and 'content'")
        if message["role"] not in ROLES:
            raise InvalidInput(f"{where}.role {message['role']!r} is not one of {', '.join(ROLES)}")
        content = _required(_text(message["content"], f"{where}.content", max_bytes), f"{where}.content")
        messages.append({"role": message["role"], "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise InvalidInput("prompt has no message with role 'user'")
    return messages


def _rating(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"rating must be a number between -1 and 1, got {value!r}")
    if not -1.0 <= value <= 1.0:
        raise InvalidInput(f"rating {value!r} is out of range [-1, 1]")
    return float(value)


def _tags(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) and tag.strip() for tag in value):
        raise InvalidInput("tags must be a list of non-empty strings")
    if len(value) > MAX_TAGS:
        raise InvalidInput(f"tags has {len(value)} entries, more than the limit of {MAX_TAGS}")
    for tag in value:
        _check_string(tag, "tags", 64)
    return list(dict.fromkeys(value))


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("created_at must be an ISO 8601 timestamp string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"created_at {value!r} is not an ISO 8601 timestamp") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


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


def _upsert(session: Session):
    """INSERT that, for a live duplicate (same line and content hash), adds to its `times_seen` instead."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(Feedback)
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
        "prompt": prompt, "response": response, "rating": rating, "correction": correction, "chosen": chosen,
        "rejected": rejected, "source": source, "tags": list(tags) if tags is not None else None,
        "adapter_version": adapter_version, "request_id": request_id,
    }
    record = parse_record(raw, max_field_bytes=max_field_bytes)
    line_row = get_line(session, line)
    statement = _upsert(session).returning(Feedback.id, Feedback.times_seen)
    feedback_id, times_seen = session.execute(statement, _row(record, line_row.id, actor, utcnow())).one()
    audit.record(session, actor=actor, action="feedback.log", subject=f"feedback:{feedback_id}",
                 payload={"line": line, "content_hash": record.content_hash, "duplicate": times_seen > 1})
    return feedback_id


@dataclass
class ImportReport:
    lines_read: int = 0
    imported: int = 0
    """New records stored."""
    duplicates: int = 0
    """Records that matched a stored record or an earlier line of the file; counted, not stored again."""
    skipped: int = 0
    """Invalid lines left out with `skip_invalid`."""
    errors: list[str] = field(default_factory=list)
    """The first invalid lines, as 'FILE:LINE: reason'."""


MAX_REPORTED_ERRORS = 20


def import_feedback(
    session: Session,
    path: Path,
    *,
    actor: str,
    line: str | None = None,
    skip_invalid: bool = False,
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = 5000,
) -> ImportReport:
    """Import a JSONL file in the caller's transaction: all of it, or nothing when any line is invalid.

    Invalid lines are all reported (up to MAX_REPORTED_ERRORS) by raising InvalidInput, unless
    `skip_invalid` is set; then they are left out and listed in the report. `progress` gets bytes read.
    """
    report = ImportReport()
    line_ids = _LineIds(session, default=line)
    now = utcnow()
    chunk: dict[tuple[int, str], dict[str, Any]] = {}
    error_count = 0
    with _open_binary(path) as handle:
        for number, raw_line in enumerate(handle, start=1):
            if progress:
                progress(len(raw_line))
            if not raw_line.strip():
                continue
            report.lines_read += 1
            try:
                raw = _json_line(raw_line)
                line_id = line_ids.resolve(raw.pop("line", None) if isinstance(raw, dict) else None)
                record = parse_record(raw, max_field_bytes=max_field_bytes)
            except InvalidInput as exc:
                error_count += 1
                if len(report.errors) < MAX_REPORTED_ERRORS:
                    report.errors.append(f"{path}:{number}: {exc}")
                continue
            if error_count and not skip_invalid:
                continue  # keep validating to report every bad line, but store nothing
            key = (line_id, record.content_hash)
            if key in chunk:
                chunk[key]["times_seen"] += 1
            else:
                chunk[key] = _row(record, line_id, actor, now)
            if len(chunk) >= chunk_size:
                _store_chunk(session, chunk, report)
                chunk = {}
    if error_count and not skip_invalid:
        more = f"\n... and {error_count - len(report.errors)} more" if error_count > len(report.errors) else ""
        raise InvalidInput(f"{error_count} invalid line(s), nothing imported:\n" + "\n".join(report.errors) + more)
    _store_chunk(session, chunk, report)
    report.skipped = error_count
    audit.record(session, actor=actor, action="feedback.import", subject=line_ids.subject(),
                 payload={"file": path.name, "sha256": _file_sha256(path), "lines_read": report.lines_read,
                          "imported": report.imported, "duplicates": report.duplicates, "skipped": report.skipped})
    return report


def _store_chunk(session: Session, chunk: dict[tuple[int, str], dict[str, Any]], report: ImportReport) -> None:
    if not chunk:
        return
    existing = set()
    for line_id in {line_id for line_id, _ in chunk}:
        hashes = [h for lid, h in chunk if lid == line_id]
        for start in range(0, len(hashes), 1000):
            query = select(Feedback.content_hash).where(
                Feedback.line_id == line_id, Feedback.status == "active", Feedback.content_hash.in_(hashes[start : start + 1000])
            )
            existing.update((line_id, h) for h in session.scalars(query))
    session.execute(_upsert(session), list(chunk.values()))
    total = sum(row["times_seen"] for row in chunk.values())
    new = len(chunk) - len(existing)
    report.imported += new
    report.duplicates += total - new


class _LineIds:
    """Line names of an import, resolved to ids once each."""

    def __init__(self, session: Session, default: str | None) -> None:
        self._session = session
        self._default = default
        self._ids: dict[str, int] = {}
        if default is not None:
            self._ids[default] = get_line(session, default).id

    def resolve(self, name: Any) -> int:
        name = name if name is not None else self._default
        if name is None:
            raise InvalidInput("line is missing (give --line or a 'line' field)")
        if self._default is not None and name != self._default:
            raise InvalidInput(f"line {name!r} differs from --line {self._default!r}")
        if name not in self._ids:
            if not isinstance(name, str):
                raise InvalidInput("line must be a string")
            line_id = self._session.scalar(select(Line.id).where(Line.name == name))
            if line_id is None:
                raise InvalidInput(f"line {name!r} does not exist (create it with `adapterctl line create`)")
            self._ids[name] = line_id
        return self._ids[name]

    def subject(self) -> str:
        return f"line:{next(iter(self._ids))}" if len(self._ids) == 1 else "feedback"


def _open_binary(path: Path) -> BinaryIO:
    """Bytes, so that each line is checked for UTF-8 on its own and errors name the line."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def _json_line(raw_line: bytes) -> Any:
    try:
        decoded = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not valid JSON: {exc.msg} at column {exc.colno}") from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


def _filtered(session: Session, query, filters: FeedbackQuery):
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
    total = session.scalar(_filtered(session, select(func.count(Feedback.id)).join(Feedback.line), filters))
    query = _filtered(session, select(Feedback).join(Feedback.line), filters)
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


def export_feedback(session: Session, out: TextIO, filters: FeedbackQuery) -> int:
    """Write active records as JSONL in the import format; return how many were written."""
    if filters.status not in (None, "active"):
        raise InvalidInput("only active feedback can be exported; forgotten records have no content")
    count = 0
    query = _filtered(session, select(Feedback, Line.name).join(Feedback.line), replace(filters, status="active"))
    for row, line_name in session.execute(query.order_by(Feedback.id).execution_options(yield_per=2000)):
        out.write(json.dumps(export_record(row, line_name), ensure_ascii=False) + "\n")
        count += 1
    return count


def export_record(row: Feedback, line_name: str) -> dict[str, Any]:
    record = {"line": line_name}
    for name in ("prompt", *CONTENT_FIELDS[1:], "source", "tags", "adapter_version", "request_id"):
        value = getattr(row, name)
        if value not in (None, []):
            record[name] = value
    record["created_at"] = row.created_at.isoformat()
    return record


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
    """Erase the content of feedback records, keeping a tombstone: id, line, content hash, time and who."""
    ids = sorted(set(ids))
    if bool(ids) == (source is not None):
        raise InvalidInput("give either feedback ids or a source to forget")
    query = select(Feedback.id, Feedback.status, Line.name).join(Line, Line.id == Feedback.line_id)
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
    targets = [row.id for row in rows if row.status == "active"]
    report = ForgetReport(
        forgotten=targets,
        already_forgotten=[row.id for row in rows if row.status != "active"],
        lines=sorted({row.name for row in rows if row.status == "active"}),
    )
    if dry_run or not targets:
        return report
    erased = {name: None for name in ("prompt", "response", "rating", "correction", "chosen", "rejected", "source", "tags")}
    for start in range(0, len(targets), 1000):
        session.execute(
            update(Feedback)
            .where(Feedback.id.in_(targets[start : start + 1000]))
            .values(**erased, status="forgotten", forgotten_at=utcnow(), forgotten_by=actor, forget_reason=reason)
        )
    payload = {"count": len(targets), "ids": targets[:1000], "lines": report.lines, "reason": reason}
    if source is not None:
        payload["source_sha256"] = hashlib.sha256(source.encode("utf-8")).hexdigest()  # never the identifier itself
    audit.record(session, actor=actor, action="feedback.forget",
                 subject=f"line:{report.lines[0]}" if len(report.lines) == 1 else "feedback", payload=payload)
    return report
