"""Feedback ingest speed: `feedback import` and the Python API against plain SQLAlchemy Core inserts.

    .venv/bin/python bench/ingest.py [--records 100000] [--api-records 3000] [--db-url postgresql://...]

Each measurement starts from a fresh, migrated database. The baselines insert the very same rows
(already validated and hashed, outside the timer) with `insert(Feedback)` in one transaction
(for import) or one transaction per row (for the API loop), so the ratio is what validation,
hashing, deduplication and the audit event cost on top of writing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, insert  # noqa: E402

from adapterctl import base_models, feedback, feedback_io, lines  # noqa: E402
from adapterctl.config import Settings  # noqa: E402
from adapterctl.db import migrate  # noqa: E402
from adapterctl.db.models import Feedback  # noqa: E402
from adapterctl.db.types import utcnow  # noqa: E402
from adapterctl.workspace import Workspace  # noqa: E402
from tests.conftest import write_model_dir  # noqa: E402

WORDS = "account billing refund password order shipping invoice plan upgrade cancel login error screen phone email".split()


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


def _encoded(row: dict, stamp) -> list:
    """A Core row as the import's write step takes it: JSON encoded, timestamp as the driver takes it."""
    values = {**row, "prompt": json.dumps(row["prompt"]), "tags": json.dumps(row["tags"]), "created_at": stamp(None)}
    return [values[column] for column in feedback_io._COLUMNS]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--api-records", type=int, default=3_000)
    parser.add_argument("--db-url", help="PostgreSQL admin URL; each measurement creates and drops a database")
    args = parser.parse_args()

    records = make_records(args.records)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jsonl = root / "feedback.jsonl"
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))

        with fresh_workspace(args.db_url, root) as ws:
            rows = rows_for_core(ws, records)
            with ws.db.engine.begin() as connection:
                core_bulk = timed(lambda: connection.execute(insert(Feedback.__table__), rows))
        with fresh_workspace(args.db_url, root) as ws:
            with ws.transaction() as session:
                stamp = feedback_io._Timestamps(session, default=rows[0]["created_at"])
                encoded = [_encoded(row, stamp) for row in rows]
                write_only = timed(lambda: feedback_io._bulk_upsert(session, encoded))
        with fresh_workspace(args.db_url, root) as ws:
            with ws.transaction() as session:
                report = None

                def run_import():
                    nonlocal report
                    report = feedback_io.import_feedback(session, jsonl, actor="bench", line="bench")

                import_bulk = timed(run_import)
            assert report.imported == len(records), report

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
    print(f"{'measurement':<44}{'rows':>9}{'rows/s':>11}{'vs Core':>9}")
    for name, count, seconds, baseline in [
        ("Core insert(), one transaction (baseline)", len(records), core_bulk, core_bulk),
        ("feedback import FILE.jsonl", len(records), import_bulk, core_bulk),
        ("  its write step alone (rows pre-encoded)", len(records), write_only, core_bulk),
        ("Core insert(), one transaction per row", len(api_records), core_single, core_single),
        ("log_feedback() per record (+ audit event)", len(api_records), api_loop, core_single),
    ]:
        print(f"{name:<44}{count:>9}{count / seconds:>11,.0f}{baseline / seconds:>8.2f}x")


if __name__ == "__main__":
    main()
