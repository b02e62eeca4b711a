"""Feedback files: import JSONL in one all-or-nothing transaction, export in the same format.

Large imports parse in worker processes while this process writes: on a 2-core machine parsing,
validating and hashing a line costs about as much as inserting it, and threads would share one core.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit, json_input
from adapterctl.db.models import Feedback, Line
from adapterctl.db.types import utcnow
from adapterctl.errors import InvalidInput
from adapterctl.feedback import (
    CONTENT_FIELDS,
    DEFAULT_MAX_FIELD_BYTES,
    FeedbackQuery,
    apply_filters,
    upsert_statement,
    parse_record,
)
from adapterctl.lines import get_line

MAX_REPORTED_ERRORS = 20
BATCH_LINES = 2000
PARALLEL_FROM_BYTES = 8 << 20  # below this, starting worker processes costs more than it saves
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Columns of a stored row, in the order the import builds them.
_COLUMNS = (
    "line_id", "status", "created_at", "content_hash", "times_seen", "prompt", "response", "rating", "correction",
    "chosen", "rejected", "source", "tags", "adapter_version", "request_id", "logged_by",
)
_TIMES_SEEN = _COLUMNS.index("times_seen")


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
    workers: int | None = None,
) -> ImportReport:
    """Import a JSONL file in the caller's transaction: all of it, or nothing when any line is invalid.

    Every invalid line is reported (the first MAX_REPORTED_ERRORS by number and reason) by raising
    InvalidInput, unless `skip_invalid`: then they are left out and listed in the report.
    `progress` is called with the bytes read; `workers` parse processes (default: by file size and cores).
    """
    report = ImportReport()
    line_ids = _LineIds(session, default=line)
    error_count = 0
    chunk: dict[tuple[int, str], list[Any]] = {}
    stamp = _Timestamps(session, default=utcnow())
    with _open_binary(path) as handle, _parser(path, workers) as parse:
        for batch in parse((batch, max_field_bytes) for batch in _batches(handle, progress)):
            for number, line_name, parsed in batch:
                report.lines_read += 1
                try:
                    if isinstance(parsed, str):
                        raise InvalidInput(parsed)
                    line_id = line_ids.resolve(line_name)
                except InvalidInput as exc:
                    error_count += 1
                    if len(report.errors) < MAX_REPORTED_ERRORS:
                        report.errors.append(f"{path}:{number}: {exc}")
                    continue
                if error_count and not skip_invalid:
                    continue  # keep validating to report every bad line, but store nothing
                created_at, *content = parsed
                key = (line_id, content[0])
                if key in chunk:
                    chunk[key][_TIMES_SEEN] += 1
                else:
                    chunk[key] = [line_id, "active", stamp(created_at), content[0], 1, *content[1:], actor]
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


def _batches(handle: BinaryIO, progress: Callable[[int], None] | None) -> Iterator[list[tuple[int, bytes]]]:
    """Non-blank lines with their line numbers, BATCH_LINES at a time."""
    numbered = enumerate(handle, start=1)
    while batch := list(islice(numbered, BATCH_LINES)):
        if progress:
            progress(sum(len(raw) for _, raw in batch))
        yield [(number, raw) for number, raw in batch if raw.strip()]


def _parse_batch(job: tuple[list[tuple[int, bytes]], int]) -> list[tuple[int, Any, tuple | str]]:
    """Parse and validate raw lines: (number, line name, stored values or an error message) for each.

    Runs in worker processes, so it returns plain tuples: the values are already encoded for storage.
    """
    batch, max_field_bytes = job
    parsed = []
    for number, raw_line in batch:
        line_name = None
        try:
            raw = json_input.loads(raw_line)
            line_name = raw.pop("line", None) if isinstance(raw, dict) else None
            r = parse_record(raw, max_field_bytes=max_field_bytes)
        except InvalidInput as exc:
            parsed.append((number, line_name, str(exc)))
            continue
        values = (r.created_at, r.content_hash, _JSON.encode(r.prompt), r.response, r.rating, r.correction,
                  r.chosen, r.rejected, r.source, _JSON.encode(r.tags), r.adapter_version, r.request_id)
        parsed.append((number, line_name, values))
    return parsed


class _parser:
    """A map over batches: in worker processes for large files, in this process otherwise."""

    def __init__(self, path: Path, workers: int | None) -> None:
        if workers is None:
            large = path.is_file() and path.stat().st_size >= PARALLEL_FROM_BYTES
            workers = max(1, (os.cpu_count() or 1) - 1) if large else 0
        self._workers = workers
        self._pool = None

    def __enter__(self) -> Callable[[Iterable], Iterator]:
        if not self._workers:
            return lambda jobs: map(_parse_batch, jobs)
        # fork where there is one: spawn would re-run the caller's main module. The workers only parse,
        # never touching the database connections or locks they inherit.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self._pool = multiprocessing.get_context(method).Pool(self._workers)
        return lambda jobs: self._pool.imap(_parse_batch, jobs)

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


class _Timestamps:
    """Timestamps as the database driver takes them, converted once per distinct value."""

    def __init__(self, session: Session, default: datetime) -> None:
        dialect = session.get_bind().dialect
        column_type = Feedback.__table__.c.created_at.type.dialect_impl(dialect)
        self._convert = column_type.bind_processor(dialect) or (lambda value: value)
        self._default = self._convert(default)

    def __call__(self, value: datetime | None) -> Any:
        return self._default if value is None else self._convert(value)


def _store_chunk(session: Session, chunk: dict[tuple[int, str], list[Any]], report: ImportReport) -> None:
    if not chunk:
        return
    hashes = [content_hash for _, content_hash in chunk]
    existing = set()
    for start in range(0, len(hashes), 1000):
        # Only the hash in the WHERE clause: SQLite then searches the content-hash index, while with
        # line and status it would rather scan the whole line through the (line_id, status, ...) index.
        query = select(Feedback.line_id, Feedback.content_hash, Feedback.status).where(
            Feedback.content_hash.in_(hashes[start : start + 1000])
        )
        existing.update((row.line_id, row.content_hash) for row in session.execute(query) if row.status == "active")
    _bulk_upsert(session, list(chunk.values()))
    new = len(chunk) - len(existing & chunk.keys())
    report.imported += new
    report.duplicates += sum(row[_TIMES_SEEN] for row in chunk.values()) - new


def _bulk_upsert(session: Session, rows: list[list[Any]]) -> None:
    """The upsert of `log_feedback`, sent through the driver's executemany with values encoded already.

    SQLAlchemy's per-value processing (JSON columns, timestamps) costs more than the insert itself
    on a large import.
    """
    connection = session.connection()
    sql, order = _bulk_statement(connection.dialect)
    if order is None:
        connection.exec_driver_sql(sql, [dict(zip(_COLUMNS, row)) for row in rows])
    elif order == _COLUMNS:
        connection.exec_driver_sql(sql, [tuple(row) for row in rows])
    else:
        positions = [_COLUMNS.index(key) for key in order]
        connection.exec_driver_sql(sql, [tuple(row[i] for i in positions) for row in rows])


@cache
def _bulk_statement(dialect) -> tuple[str, tuple[str, ...] | None]:
    """The upsert as SQL text for `dialect`, with the column order of positional parameters."""
    compiled = upsert_statement(dialect.name).compile(dialect=dialect, column_keys=list(_COLUMNS))
    return compiled.string, tuple(compiled.positiontup) if compiled.positional else None


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
        if not isinstance(name, str):
            raise InvalidInput(f"line must be a string, got {type(name).__name__}")
        if name not in self._ids:
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def export_feedback(session: Session, out: TextIO, filters: FeedbackQuery) -> int:
    """Write active records as JSONL in the import format; return how many were written."""
    if filters.status not in (None, "active"):
        raise InvalidInput("only active feedback can be exported; forgotten records have no content")
    query = apply_filters(session, select(Feedback, Line.name).join(Feedback.line), replace(filters, status="active"))
    count = 0
    for row, line_name in session.execute(query.order_by(Feedback.id).execution_options(yield_per=2000)):
        out.write(json.dumps(export_record(row, line_name), ensure_ascii=False) + "\n")
        count += 1
    return count


def export_record(row: Feedback, line_name: str) -> dict[str, Any]:
    record = {"line": line_name}
    for name in (*CONTENT_FIELDS, "source", "tags", "adapter_version", "request_id"):
        value = getattr(row, name)
        if value not in (None, []):
            record[name] = value
    record["created_at"] = row.created_at.isoformat()
    return record
