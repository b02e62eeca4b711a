"""What physical erasure costs after `feedback forget`: VACUUM and a truncated WAL against a checkpoint alone.

    .venv/bin/python bench/erasure.py [--records 100000]
    .venv/bin/python bench/erasure.py --db-url postgresql://postgres@127.0.0.1:5432/postgres

Each measurement starts from a fresh database holding `--records` feedback records (the ingest
benchmark's records) and 33 records of one source that carry a marker string, then forgets that
source. On SQLite it times `Database.reclaim_sqlite` (VACUUM, then a TRUNCATE checkpoint) against a
TRUNCATE checkpoint alone on an identical database, and counts the marker's copies left in the
database file and its WAL. On PostgreSQL it times the `VACUUM FULL` that docs/security.md tells
operators to run against a plain VACUUM, and with `--pg-data-dir` (a local server whose files this
user can read) counts the copies left in the database's table files and in the server's WAL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event

from adapterctl import feedback, feedback_io
from bench.ingest import fresh_workspace, make_records

VICTIMS = 33


def planted(ws, records_file: Path, marker: str) -> str:
    """Import the records, log the victim's; return the victim's source."""
    with ws.transaction() as session:
        feedback_io.import_feedback(session, records_file, actor="bench", line="bench")
    source = f"victim-{marker}"
    for i in range(VICTIMS):
        ws.log_feedback(
            line="bench", prompt=f"{marker} my account number is {i}", response="noted", correction=f"{marker} answer {i}", source=source
        )
    if ws.db.backend == "sqlite":
        sqlite_checkpoint_only(ws)  # as SQLite's automatic checkpoints do: the records reach the database file
    return source


def forget_timed(ws, source: str) -> float:
    start = time.perf_counter()
    with ws.transaction() as session:
        feedback.forget_feedback(session, actor="bench", source=source)
    return time.perf_counter() - start


def _counter(ws, marker: str, pg_data_dir: str | None):
    """A function counting the marker's copies in the database's files: {file kind: copies}."""
    needle = marker.encode()
    if ws.db.backend == "sqlite":
        database = ws.settings.home / "adapterctl.db"
        kinds = {"db": [database], "WAL": [database.with_name(database.name + "-wal")], "shm": [database.with_name(database.name + "-shm")]}
    elif pg_data_dir:
        with ws.db.engine.connect() as connection:
            oid = connection.exec_driver_sql("SELECT oid FROM pg_database WHERE datname = current_database()").scalar()
        kinds = {"tables": Path(pg_data_dir, "base", str(oid)), "WAL": Path(pg_data_dir, "pg_wal")}
    else:
        return lambda: None

    def count() -> dict[str, int]:
        if ws.db.backend == "postgresql":  # flush shared buffers to the files first
            with ws.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("CHECKPOINT")
        files = {kind: paths if isinstance(paths, list) else [p for p in paths.iterdir() if p.is_file()] for kind, paths in kinds.items()}
        return {kind: sum(p.read_bytes().count(needle) for p in paths if p.exists()) for kind, paths in files.items()}

    return count


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sqlite_checkpoint_only(ws) -> None:
    connection = ws.db.engine.raw_connection()
    try:
        connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        connection.close()


def pg_vacuum(ws, full: bool) -> None:
    with ws.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"VACUUM {'(FULL) ' if full else ''}feedback, evaluations, training_runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--db-url", help="PostgreSQL admin URL; each measurement creates and drops a database")
    parser.add_argument("--pg-data-dir", help="the PostgreSQL server's data directory, when this machine can read it: count copies there")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        records_file = root / "feedback.jsonl"
        records_file.write_text("".join(json.dumps(r) + "\n" for r in make_records(args.records)))
        rows = []
        for name, secure_delete, reclaim in _measurements(args.db_url):
            with fresh_workspace(args.db_url, root) as ws:
                if not secure_delete:
                    event.listen(ws.db.engine, "connect", lambda connection, _: connection.execute("PRAGMA secure_delete=OFF"))
                    ws.db.engine.dispose()
                marker = uuid.uuid4().hex
                source = planted(ws, records_file, marker)
                forget_s = forget_timed(ws, source)
                count = _counter(ws, marker, args.pg_data_dir)
                before = count()
                seconds = timed(lambda: reclaim(ws))  # noqa: B023 (called at once)
                database = ws.settings.home / "adapterctl.db"
                rows.append((name, forget_s, seconds, before, count(), database.stat().st_size if database.exists() else None))
    _print(rows, args)


def _measurements(db_url: str | None):
    """(name, secure_delete, what runs after the forget); without secure_delete the database behaves as one
    written by a build whose default is off, or by adapterctl before it turned it on."""
    if db_url is None:
        return [
            ("TRUNCATE checkpoint alone (baseline)", True, sqlite_checkpoint_only),
            ("VACUUM + TRUNCATE checkpoint", True, lambda ws: ws.db.reclaim_sqlite()),
            ("checkpoint alone, secure_delete off", False, sqlite_checkpoint_only),
            ("VACUUM + checkpoint, secure_delete off", False, lambda ws: ws.db.reclaim_sqlite()),
        ]
    return [("plain VACUUM (baseline)", True, lambda ws: pg_vacuum(ws, False)), ("VACUUM (FULL)", True, lambda ws: pg_vacuum(ws, True))]


def _print(rows, args) -> None:
    print(f"erasure after forgetting {VICTIMS} records among {args.records:,} on {'PostgreSQL' if args.db_url else 'SQLite'}")
    baseline = rows[0][2]
    for name, forget_s, seconds, before, after, size in rows:
        line = f"{name:<40} forget {forget_s:6.3f} s, then {seconds:6.3f} s ({seconds / baseline:5.1f}x)"
        if before is not None:
            line += f"; marker copies before {before}, after {after}"
        if size is not None:
            line += f"; file {size / 1e6:.1f} MB"
        print(line)


if __name__ == "__main__":
    main()
