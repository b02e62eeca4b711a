"""Feedback ingest speed: `feedback import` and the Python API against plain SQLAlchemy Core inserts.

    .venv/bin/python bench/ingest.py [--records 100000] [--filled N] [--api-records 3000] [--db-url postgresql://...]

Each measurement starts from a fresh, migrated database. The baselines insert the very same rows
(already validated and hashed, outside the timer) with `insert(Feedback)` in one transaction
(for import) or one transaction per row (for the API loop), so the ratio is what validation,
hashing, deduplication, staging and the audit event cost on top of writing.

The import runs twice: into a fresh database, and into one already holding `--filled` other records
(default: as many as `--records`), whose planner statistics are current. Meanwhile another writer
commits every 10 ms and the longest it waited is printed: on SQLite it waits for the write lock, on
PostgreSQL for the line's row lock that `promote` takes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, insert
from sqlalchemy.exc import OperationalError

from adapterctl import base_models, feedback, feedback_io, lines
from adapterctl.config import Settings
from adapterctl.db import migrate
from adapterctl.db.models import Feedback
from adapterctl.db.types import utcnow
from adapterctl.workspace import Workspace
from tests.conftest import write_model_dir

WORDS = [
    "account",
    "billing",
    "refund",
    "password",
    "order",
    "shipping",
    "invoice",
    "plan",
    "upgrade",
    "cancel",
    "login",
    "error",
    "screen",
    "phone",
    "email",
]


def make_records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 25)))
        record = {
            "prompt": [{"role": "user", "content": f"#{i} {question}?"}],
            "response": " ".join(rng.choices(WORDS, k=rng.randint(10, 60))),
            "source": f"user-{rng.randint(1, 2000)}",
            "tags": rng.sample(WORDS, k=2),
        }
        kind = rng.random()
        if kind < 0.5:
            record["rating"] = rng.choice([-1, 0, 1])
        elif kind < 0.85:
            record["correction"] = " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))
        else:
            record["chosen"], record["rejected"] = "yes " + question, "no " + question
        records.append(record)
    return records


@contextmanager
def fresh_workspace(base_url: str | None, root: Path):
    """A migrated database with one line; SQLite in `root` unless a PostgreSQL admin URL is given."""
    home = root / uuid.uuid4().hex[:8]
    home.mkdir()
    if base_url is None:
        url, drop = f"sqlite:///{home / 'adapterctl.db'}", None
    else:
        url, drop = _pg_database(base_url)
    try:
        migrate.upgrade(url)
        ws = Workspace(Settings(home=home, db_url=url, user="bench"))
        with ws.transaction() as session:
            base_models.register_base_model(session, name="tiny", source=str(write_model_dir(home / "model")), actor="bench")
            lines.create_line(session, name="bench", base="tiny", actor="bench")
        yield ws
        ws.close()
    finally:
        if drop:
            drop()


def _pg_database(admin_url: str):
    from sqlalchemy.engine import make_url

    name = f"adapterctl_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop():
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def rows_for_core(ws: Workspace, records: list[dict]) -> list[dict]:
    with ws.transaction() as session:
        line_id = lines.get_line(session, "bench").id
    now = utcnow()
    return [feedback._row(feedback.parse_record(r), line_id, "bench", now) for r in records]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@contextmanager
def other_writer(ws: Workspace):
    """Another writer committing every 10 ms while the block runs; yields the list of its waits (seconds)."""
    waits: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                with ws.transaction() as session:
                    lines.lock_line(session, lines.line_id_of(session, "bench"))
            except OperationalError as exc:  # SQLite's busy timeout ran out
                failures.append(str(exc.orig))
            waits.append(time.perf_counter() - start)
            stop.wait(0.01)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        yield waits, failures
    finally:
        stop.set()
        thread.join()


def timed_import(ws: Workspace, jsonl: Path, count: int) -> tuple[float, float, list[str]]:
    """Seconds the import took, the longest wait of another writer meanwhile, and that writer's failures."""
    with other_writer(ws) as (waits, failures):
        report = None

        def run_import():
            nonlocal report
            report = feedback_io.import_feedback(ws.db, jsonl, actor="bench", line="bench")

        seconds = timed(run_import)
    assert report.imported == count, report
    return seconds, max(waits), failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--filled", type=int, help="records already stored for the second import (default: --records)")
    parser.add_argument("--api-records", type=int, default=3_000)
    parser.add_argument("--db-url", help="PostgreSQL admin URL; each measurement creates and drops a database")
    args = parser.parse_args()
    filled = args.records if args.filled is None else args.filled

    records = make_records(args.records)
    others = make_records(filled, seed=1)
    for i, record in enumerate(others):  # never a duplicate of an imported record
        record["prompt"][0]["content"] = f"stored {i} {record['prompt'][0]['content']}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jsonl = root / "feedback.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))

        with fresh_workspace(args.db_url, root) as ws:
            rows = rows_for_core(ws, records)
            with ws.db.engine.begin() as connection:
                core_bulk = timed(lambda: connection.execute(insert(Feedback.__table__), rows))
        with fresh_workspace(args.db_url, root) as ws:
            fresh = timed_import(ws, jsonl, len(records))
        with fresh_workspace(args.db_url, root) as ws:
            stored = rows_for_core(ws, others)
            with ws.db.engine.begin() as connection:
                connection.execute(insert(Feedback.__table__), stored)
            if ws.db.backend == "postgresql":  # what autovacuum does soon after a large load
                with ws.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                    connection.exec_driver_sql("ANALYZE feedback")
            into_filled = timed_import(ws, jsonl, len(records))

        api_records = records[: args.api_records]
        with fresh_workspace(args.db_url, root) as ws:
            rows = rows_for_core(ws, api_records)

            def core_loop():
                for row in rows:
                    with ws.db.engine.begin() as connection:
                        connection.execute(insert(Feedback.__table__), row)

            core_single = timed(core_loop)
        with fresh_workspace(args.db_url, root) as ws:
            api_loop = timed(lambda: [ws.log_feedback(line="bench", **r) for r in api_records])

    backend = "PostgreSQL" if args.db_url else "SQLite"
    print(f"feedback ingest on {backend}")
    print(f"{'measurement':<50}{'rows':>9}{'rows/s':>11}{'vs Core':>9}")
    for name, count, seconds, baseline in [
        ("Core insert(), one transaction (baseline)", len(records), core_bulk, core_bulk),
        ("feedback import FILE.jsonl, fresh database", len(records), fresh[0], core_bulk),
        (f"feedback import FILE.jsonl, {filled:,} records stored", len(records), into_filled[0], core_bulk),
        ("Core insert(), one transaction per row (baseline)", len(api_records), core_single, core_single),
        ("log_feedback() per record (+ audit event)", len(api_records), api_loop, core_single),
    ]:
        print(f"{name:<50}{count:>9}{count / seconds:>11,.0f}{baseline / seconds:>8.2f}x")
    print("longest wait of another writer during the import (share of the import's time):")
    for name, (seconds, wait, failures) in [("fresh database", fresh), (f"{filled:,} records stored", into_filled)]:
        failed = f"; {len(failures)} writes failed: {failures[0]}" if failures else ""
        print(f"  {name:<30}{wait:>8.2f} s of {seconds:.2f} s ({wait / seconds:.0%}){failed}")


if __name__ == "__main__":
    main()
