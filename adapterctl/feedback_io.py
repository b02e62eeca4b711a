"""Feedback files: import JSONL all or nothing while others keep writing, export in the same format.

An import stages the valid records of a file in a temporary table of its own connection, in short
transactions that other connections never wait for: on SQLite they begin DEFERRED and write only the
connection's temporary database, so they take no lock on the database file; on PostgreSQL the staged
rows reference nothing, so they lock no line. One last transaction publishes every record at once,
as fast as the database copies rows. A failed or killed import leaves nothing behind: the temporary
table vanishes with its connection, which is never returned to the pool.

Large imports parse in worker processes, one per core: staging a record costs a fraction of parsing,
validating and hashing it, so parsing sets the pace (threads would share one core).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from sqlalchemy import Column, Connection, Integer, MetaData, Table, exists, func, literal, select, true
from sqlalchemy.orm import Session

from adapterctl import audit, json_input
from adapterctl.db.engine import READ_ONLY, Database
from adapterctl.db.models import Feedback, Line
from adapterctl.db.types import BigId, utcnow
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.faults import crash_point
from adapterctl.feedback import (
    CONTENT_FIELDS,
    DEFAULT_MAX_FIELD_BYTES,
    FeedbackQuery,
    LineRoles,
    apply_filters,
    line_roles,
    parse_record,
    upsert_statement,
)

if TYPE_CHECKING:
    from multiprocessing.pool import Pool

    import psycopg

MAX_REPORTED_ERRORS = 20
BATCH_LINES = 2000
PARALLEL_FROM_BYTES = 8 << 20  # below this, starting worker processes costs more than it saves
PUBLISH_CACHE_KIB = 256 << 10
"""SQLite's page cache while an import publishes (64 MiB otherwise): allocated only as pages are read."""
ANALYZE_FROM_ROWS = 10_000
"""On PostgreSQL a publish of this many new records analyzes the feedback table at once: autovacuum
would do it later, and until then queries are planned as if the table still had its old size."""
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Columns of a staged record, in the order the import builds them; `line` (the file's line number)
# orders the records, so that feedback ids follow the file.
_STAGED = (
    "line",
    "times_seen",
    "line_id",
    "created_at",
    "content_hash",
    "prompt",
    "response",
    "rating",
    "correction",
    "chosen",
    "rejected",
    "source",
    "tags",
    "adapter_version",
    "request_id",
)
_STAGING = Table(
    "import_staging",
    MetaData(),
    Column("line", BigId, primary_key=True, autoincrement=False),
    Column("times_seen", Integer, nullable=False),
    *(Column(name, Feedback.__table__.c[name].type) for name in _STAGED[2:]),
    prefixes=["TEMPORARY"],
)
_INSERT_STAGED = f"INSERT INTO import_staging ({', '.join(_STAGED)}) VALUES ({', '.join('?' * len(_STAGED))})"
_COPY_STAGED = f"COPY import_staging ({', '.join(_STAGED)}) FROM STDIN"
# After staging, outside the publish: the key index is built in one sort, cheaper than keeping a
# unique one up while staging.
_INDEX_STAGED = "CREATE INDEX import_staging_key ON import_staging (line_id, content_hash)"
# A record the file holds more than once keeps the line and metadata of its first occurrence and
# counts every occurrence.
_MERGE_REPEATS = (
    "CREATE TEMPORARY TABLE import_repeats AS SELECT line_id, content_hash, min(line) AS first_line, count(*) AS seen "
    "FROM import_staging GROUP BY line_id, content_hash HAVING count(*) > 1",
    "UPDATE import_staging SET times_seen = r.seen FROM import_repeats r WHERE r.first_line = import_staging.line",
    "DELETE FROM import_staging WHERE line IN (SELECT s.line FROM import_repeats r JOIN import_staging s "
    "ON s.line_id = r.line_id AND s.content_hash = r.content_hash AND s.line > r.first_line)",
)


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
    db: Database,
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
    """Import a JSONL file: all of it, or nothing when any line is invalid.

    Unlike other domain functions it takes the database, not a session: it runs its own transactions
    on one connection (see the module's docstring), `chunk_size` staged records each.
    Every invalid line is reported (the first MAX_REPORTED_ERRORS by number and reason) by raising
    InvalidInput, unless `skip_invalid`: then they are left out and listed in the report.
    `progress` is called with the bytes read; `workers` parse processes (default: by file size and cores).
    """
    report = ImportReport()
    digest = hashlib.sha256()
    error_count = staged = 0
    chunk: list[tuple] = []
    with _open_binary(path) as handle, _parser(path, workers) as parse, _staging_connection(db) as connection:
        with connection.begin():
            _STAGING.create(connection)
            lines = _Lines(connection, default=line)
        stamp = _Timestamps(connection, default=utcnow())
        for batch in parse((batch, max_field_bytes) for batch in _batches(handle, progress, digest)):
            for number, line_name, parsed in batch:
                report.lines_read += 1
                try:
                    if isinstance(parsed, str):
                        raise InvalidInput(parsed)
                    roles, created_at, *content = parsed
                    target = lines.resolve(line_name)
                    target.check(roles)
                except InvalidInput as exc:
                    error_count += 1
                    if len(report.errors) < MAX_REPORTED_ERRORS:
                        report.errors.append(f"{path}:{number}: {exc}")
                    continue
                if error_count and not skip_invalid:
                    continue  # keep validating to report every bad line, but stage nothing more
                chunk.append((number, 1, target.line_id, stamp(created_at), *content))
                if len(chunk) >= chunk_size:
                    staged += _stage(connection, chunk)
                    chunk = []
        if error_count and not skip_invalid:
            more = f"\n... and {error_count - len(report.errors)} more" if error_count > len(report.errors) else ""
            raise InvalidInput(f"{error_count} invalid line(s), nothing imported:\n" + "\n".join(report.errors) + more)
        staged += _stage(connection, chunk)
        report.skipped = error_count
        _prepare(connection)
        report.imported = _publish(
            connection,
            actor=actor,
            subject=lines.subject(),
            payload={
                "file": path.name,
                "sha256": digest.hexdigest(),
                "lines_read": report.lines_read,
                "skipped": report.skipped,
            },
            staged=staged,
        )
        report.duplicates = staged - report.imported
    return report


@contextmanager
def _staging_connection(db: Database) -> Iterator[Connection]:
    """A connection of the import's own, whose transactions begin DEFERRED on SQLite until the publish.

    It is closed at the end rather than pooled, which drops its temporary table, also after an error.
    """
    with db.engine.connect() as connection:
        connection.detach()
        yield connection.execution_options(**{READ_ONLY: True})


def _stage(connection: Connection, rows: list[tuple]) -> int:
    """Add records (values of _STAGED, encoded already) to the staging table in one short transaction.

    Straight to the driver: SQLAlchemy's per-value processing costs more than the insert itself, and
    on PostgreSQL COPY is four times as fast as executemany.
    """
    if rows:
        with connection.begin():
            if connection.dialect.name == "postgresql":
                cursor = cast("psycopg.Cursor", connection.connection.cursor())  # the driver's own cursor, for COPY
                with cursor, cursor.copy(_COPY_STAGED) as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                connection.exec_driver_sql(_INSERT_STAGED, rows)
        crash_point("feedback.import.staged")
    return len(rows)


def _prepare(connection: Connection) -> None:
    """Index the staged records and merge repeats, in the staging connection's own tables (no lock on SQLite)."""
    with connection.begin():
        connection.exec_driver_sql(_INDEX_STAGED)
        if connection.dialect.name == "postgresql":  # temporary tables are never analyzed by autovacuum
            connection.exec_driver_sql(f"ANALYZE {_STAGING.name}")
        else:  # fewer pages of the hash indexes read again: others wait for the write lock a third less on large imports
            connection.exec_driver_sql(f"PRAGMA cache_size=-{PUBLISH_CACHE_KIB}")
        for statement in _MERGE_REPEATS:
            connection.exec_driver_sql(statement)


def _publish(connection: Connection, *, actor: str, subject: str, payload: dict[str, Any], staged: int) -> int:
    """Store every staged record in one transaction with the import's audit event; return how many were new."""
    connection.execution_options(**{READ_ONLY: False})  # the publish takes SQLite's write lock up front
    with connection.begin(), Session(bind=connection) as session:
        new = connection.scalar(_NEW_RECORDS) or 0
        connection.execute(_publish_statement(connection.dialect.name, actor))
        audit.record(
            session,
            actor=actor,
            action="feedback.import",
            subject=subject,
            payload={**payload, "imported": new, "duplicates": staged - new},
        )
        crash_point("feedback.import.rows_written")
    crash_point("feedback.import.committed")
    if connection.dialect.name == "postgresql" and new >= ANALYZE_FROM_ROWS:
        with connection.begin():
            connection.exec_driver_sql(f"ANALYZE {Feedback.__tablename__}")
    return new


# Staged records whose line and content hash no live record has; probed through the unique index.
_NEW_RECORDS = (
    select(func.count())
    .select_from(_STAGING)
    .where(
        ~exists().where(
            Feedback.line_id == _STAGING.c.line_id,
            Feedback.content_hash == _STAGING.c.content_hash,
            Feedback.status == literal("active", literal_execute=True),
        )
    )
)


def _publish_statement(dialect: str, actor: str):
    """The upsert of `log_feedback` from the staging table, in file order (the WHERE lets SQLite parse it)."""
    s = _STAGING.c
    columns = ["status", "logged_by", *_STAGED[1:]]
    rows = select(literal("active"), literal(actor), *(s[name] for name in _STAGED[1:])).where(true()).order_by(s.line)
    return upsert_statement(dialect).from_select(columns, rows)


def _batches(handle: BinaryIO, progress: Callable[[int], None] | None, digest) -> Iterator[list[tuple[int, bytes]]]:
    """Non-blank lines with their line numbers, BATCH_LINES at a time; `digest` sees every byte read."""
    numbered = enumerate(handle, start=1)
    while batch := list(islice(numbered, BATCH_LINES)):
        for _, raw in batch:
            digest.update(raw)
        if progress:
            progress(sum(len(raw) for _, raw in batch))
        yield [(number, raw) for number, raw in batch if raw.strip()]


def _parse_batch(job: tuple[list[tuple[int, bytes]], int]) -> list[tuple[int, Any, tuple[Any, ...] | str]]:
    """Parse and validate raw lines: (number, line name, values or an error message) for each.

    Runs in worker processes, so it returns plain tuples: the prompt's roles, which the line decides
    on, then the values already encoded for storage.
    """
    batch, max_field_bytes = job
    parsed: list[tuple[int, Any, tuple[Any, ...] | str]] = []
    for number, raw_line in batch:
        line_name = None
        try:
            raw = json_input.loads(raw_line)
            line_name = raw.pop("line", None) if isinstance(raw, dict) else None
            r = parse_record(raw, max_field_bytes=max_field_bytes)
        except InvalidInput as exc:
            parsed.append((number, line_name, str(exc)))
            continue
        values = (
            tuple(message["role"] for message in r.prompt),
            r.created_at,
            r.content_hash,
            _JSON.encode(r.prompt),
            r.response,
            r.rating,
            r.correction,
            r.chosen,
            r.rejected,
            r.source,
            _JSON.encode(r.tags),
            r.adapter_version,
            r.request_id,
        )
        parsed.append((number, line_name, values))
    return parsed


class _parser:
    """A map over batches: in worker processes for large files, in this process otherwise."""

    def __init__(self, path: Path, workers: int | None) -> None:
        if workers is None:
            large = path.is_file() and path.stat().st_size >= PARALLEL_FROM_BYTES
            workers = (os.cpu_count() or 1) if large else 0
        self._workers = workers
        self._pool: Pool | None = None

    def __enter__(self) -> Callable[[Iterable], Iterator]:
        if not self._workers:
            return lambda jobs: map(_parse_batch, jobs)
        # fork where there is one: spawn would re-run the caller's main module. The workers only parse,
        # and start before the import opens its database connection.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = self._pool = multiprocessing.get_context(method).Pool(self._workers)
        return lambda jobs: pool.imap(_parse_batch, jobs)

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


class _Timestamps:
    """Timestamps as the database driver takes them, converted once per distinct value."""

    def __init__(self, connection: Connection, default: datetime) -> None:
        dialect = connection.dialect
        column_type = Feedback.__table__.c.created_at.type.dialect_impl(dialect)
        self._convert = column_type.bind_processor(dialect) or (lambda value: value)
        self._default = self._convert(default)

    def __call__(self, value: datetime | None) -> Any:
        return self._default if value is None else self._convert(value)


class _Lines:
    """Line names of an import, resolved once each to the line's id and the roles its base model renders."""

    def __init__(self, connection: Connection, default: str | None) -> None:
        self._connection = connection
        self._default = default
        self._lines: dict[str, LineRoles] = {}
        if default is not None:
            self._lines[default] = line_roles(connection, default)

    def resolve(self, name: Any) -> LineRoles:
        name = name if name is not None else self._default
        if name is None:
            raise InvalidInput("line is missing (give --line or a 'line' field)")
        if self._default is not None and name != self._default:
            raise InvalidInput(f"line {name!r} differs from --line {self._default!r}")
        if not isinstance(name, str):
            raise InvalidInput(f"line must be a string, got {type(name).__name__}")
        if name not in self._lines:
            try:
                with self._connection.begin():
                    self._lines[name] = line_roles(self._connection, name)
            except NotFound:
                raise InvalidInput(f"line {name!r} does not exist (create it with `adapterctl line create`)") from None
        return self._lines[name]

    def subject(self) -> str:
        return f"line:{next(iter(self._lines))}" if len(self._lines) == 1 else "feedback"


def _open_binary(path: Path) -> BinaryIO:
    """Bytes, so that each line is checked for UTF-8 on its own and errors name the line."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None


def export_feedback(session: Session, out: IO[str], filters: FeedbackQuery) -> int:
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
