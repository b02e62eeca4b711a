"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from adapterctl.errors import ConfigError

SQLITE_BUSY_TIMEOUT_S = 30
READ_ONLY = "adapterctl_read_only"
"""Execution option of connections whose transactions write nothing other connections see (they read,
or write temporary tables): on SQLite they begin DEFERRED."""


def normalize_url(url: str) -> str:
    """Accept the usual spellings of a PostgreSQL URL and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str, *, foreign_keys: bool = True) -> Engine:
    url = normalize_url(url)
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"invalid database URL {url!r}; expected e.g. sqlite:///path/to.db or postgresql://user@host/db") from None
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _configure_sqlite(engine, foreign_keys=foreign_keys)
        return engine
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise ConfigError(f"unsupported database {backend!r} in {url!r}; adapterctl supports SQLite and PostgreSQL")


def _configure_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun by _on_begin below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        # Deleted and overwritten content is zeroed in the pages, so forgotten text leaves no stray
        # bytes behind; builds differ in their default (Debian's is on, SQLite's own is off).
        cursor.execute("PRAGMA secure_delete=ON")
        # A 64 MiB page cache (default 2 MiB) keeps index pages in memory during large imports.
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # A transaction that may write takes the write lock up front: a deferred one that reads and then
        # writes fails at once with "database is locked" when another writer committed in between,
        # whatever the busy timeout. Reads take no lock at all (WAL), so writers never hold them up.
        reading = connection.get_execution_options().get(READ_ONLY)
        connection.exec_driver_sql("BEGIN DEFERRED" if reading else "BEGIN IMMEDIATE")


@dataclass(frozen=True)
class Reclaimed:
    """What `Database.reclaim_sqlite` managed to do."""

    vacuumed: bool
    wal_truncated: bool
    problem: str | None = None


class Database:
    """One database: its engine and a factory of transactions."""

    def __init__(self, url: str, *, foreign_keys: bool = True) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, foreign_keys=foreign_keys)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed when the block ends, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session inside a transaction that only reads: on SQLite it never waits for, nor holds up, a writer."""
        with self._readers.begin() as session:
            yield session

    def reclaim_sqlite(self, *, vacuum: bool = True, wait_s: float = SQLITE_BUSY_TIMEOUT_S) -> Reclaimed:
        """VACUUM an SQLite database, then checkpoint its WAL and truncate it to zero bytes.

        Old versions of pages live on in the WAL until a checkpoint copies the new ones back. With
        secure_delete on, those new pages hold no deleted bytes; VACUUM also clears free space left
        by writers that had it off, and shrinks the file, but holds the write lock while it rebuilds.
        A reader that holds an old snapshot for longer than `wait_s` keeps the WAL from being
        truncated; that is reported, not hidden.
        """
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
            vacuumed, problems = False, []
            try:
                if vacuum:
                    cursor.execute("VACUUM")
                    vacuumed = True
            except sqlite3.OperationalError as exc:
                problems.append(f"VACUUM failed ({exc})")
            truncated = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            if not truncated:
                problems.append(f"another connection held an old snapshot for more than {wait_s:g} s, so the WAL was not truncated")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        finally:
            connection.close()
        return Reclaimed(vacuumed, truncated, "; ".join(problems) or None)

    def dispose(self) -> None:
        self.engine.dispose()
