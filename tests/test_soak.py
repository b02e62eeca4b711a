"""The soak's CI variant: `bench/soak.py` for 30 s of flips against a real server, on PostgreSQL.

A real `adapterctl serve` on loopback, 4 clients sending chat completions (half streamed) and rating
every answer, while the bench promotes v2 and rolls back to v1 every 5 s; its JSON must show no 5xx,
every acknowledged feedback stored once, every flip's version answering, and the server's memory flat.

One database only: a run takes about a minute here (setup, server start, 44 s of traffic), and both would
double it. PostgreSQL, as production runs it: the server follows flips through LISTEN/NOTIFY and its
writers share the database with the flipping process. The full 10-minute soak runs on SQLite
(docs/benchmarks.md#soak); `bench/soak.py --duration 30` runs either by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, require_backend

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
CI_VARIANT = ["--duration", "30", "--warmup", "6", "--baseline", "8", "--flip-every", "5", "--json"]


@pytest.fixture(scope="module")
def soaked() -> tuple[subprocess.CompletedProcess, dict]:
    require_backend("postgresql")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the server and the bench share the CPUs
    result = subprocess.run(
        [sys.executable, str(SOAK), *CI_VARIANT, "--db-url", PG_ADMIN_URL], capture_output=True, text=True, env=env, timeout=240
    )
    assert result.stdout, result.stderr[-3000:]
    return result, json.loads(result.stdout)


def test_no_request_failed(soaked):
    _, report = soaked
    assert report["server_errors"] == 0, report["statuses"]
    assert report["unanswered_503"] == 0, report["statuses"]
    assert report["failed"] == 0, report["failed_examples"]
    assert report["phases"]["soak"]["chats"] > 0 and report["phases"]["baseline"]["chats"] > 0


def test_every_acknowledged_feedback_is_stored_once(soaked):
    _, report = soaked
    feedback = report["feedback"]
    assert feedback["acknowledged"] > 0
    assert feedback["unanswered"] == 0
    assert feedback["stored"] == feedback["acknowledged"] == feedback["answered_200"]
    assert feedback["times_seen"] == feedback["stored"]  # a request sent again after a 503 was not counted twice


def test_every_flip_is_served(soaked):
    _, report = soaked
    soak_flips = [flip for flip in report["flips"] if flip["phase"] == "soak"]
    assert len(soak_flips) >= 3
    assert {flip["version"] for flip in soak_flips} == {"soak@v1", "soak@v2"}
    assert [flip for flip in report["flips"] if flip["reached_s"] is None] == []
    assert set(report["phases"]["soak"]["served"]) == {"soak@v1", "soak@v2"}


def test_server_memory_stays_within_bound(soaked):
    _, report = soaked
    assert abs(report["rss"]["change"]) <= 0.10, report["rss"]


def test_the_bench_passes(soaked):
    result, report = soaked
    assert report["passed"], report["bounds"]
    assert result.returncode == 0, result.stderr[-3000:]
