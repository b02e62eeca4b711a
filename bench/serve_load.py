"""Server load: requests/s and latency of POST /v1/feedback and of generation, over loopback HTTP.

    .venv/bin/python bench/serve_load.py                                  # SQLite
    .venv/bin/python bench/serve_load.py --db-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

`adapterctl serve` runs as its own process on the default tiny model, in a temporary home. The load
generator (this process) is bounded and stops by itself: `--clients` threads, each with one keep-alive
connection, send `--requests` requests in all. Feedback requests name responses the server issued
(ratings and corrections vary, so most are new records); every one is committed before its answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def adapterctl(env, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "adapterctl", *args], env=env, check=True, capture_output=True, text=True).stdout.strip()


def load(port: int, token: str, bodies: list[tuple[str, dict]], clients: int) -> tuple[float, list[float], int]:
    """Send every (path, body) with `clients` keep-alive connections; return seconds, latencies, failures."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    chunks = [bodies[i::clients] for i in range(clients)]

    def client(chunk):
        nonlocal failures
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        mine, failed = [], 0
        for path, body in chunk:
            started = time.perf_counter()
            connection.request("POST", path, json.dumps(body), headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            failed += response.status != 200
        connection.close()
        with lock:
            latencies.extend(mine)
            failures += failed

    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def report(name: str, seconds: float, latencies: list[float], failures: int) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"{name:<28}{len(latencies) / seconds:>10,.0f}{statistics.median(ordered) * 1000:>10.1f}{p99 * 1000:>10.1f}{failures:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--db-url", help="default: SQLite in the temporary home")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="adapterctl-serve-load-") as tmp:
        home = Path(tmp)
        database = None
        db_url = args.db_url
        if db_url:
            from tests.conftest import temporary_pg_database  # a database of its own, dropped afterwards

            database = temporary_pg_database()
            db_url = database.__enter__()
        env = {
            **os.environ,
            "ADAPTERCTL_HOME": str(home),
            "ADAPTERCTL_USER": "bench",
            "ADAPTERCTL_DB_URL": db_url or f"sqlite:///{home / 'adapterctl.db'}",
        }
        adapterctl(env, "init")
        adapterctl(env, "base", "create-tiny", str(home / "model"))
        adapterctl(env, "base", "register", "tiny", str(home / "model"))
        adapterctl(env, "line", "create", "bench", "--base", "tiny")
        generate, give = (
            adapterctl(env, "token", "create", "--scope", "generate"),
            adapterctl(env, "token", "create", "--scope", "feedback"),
        )
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "adapterctl", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(600):
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/healthz")
                    break
                except OSError:
                    time.sleep(0.1)
            chats = [
                (
                    "/v1/chat/completions",
                    {"model": "bench", "max_tokens": 8, "messages": [{"role": "user", "content": f"Question {i}: where is my order?"}]},
                )
                for i in range(args.generations)
            ]
            gen_seconds, gen_latencies, gen_failures = load(port, generate, chats, 4)
            ids = []
            for path, body in chats[:50]:
                connection = http.client.HTTPConnection("127.0.0.1", port)
                connection.request(
                    "POST", path, json.dumps(body), {"Content-Type": "application/json", "Authorization": f"Bearer {generate}"}
                )
                ids.append(json.loads(connection.getresponse().read())["id"])
            notes = [
                (
                    "/v1/feedback",
                    {
                        "response_id": ids[i % len(ids)],
                        "rating": -1,
                        "correction": f"Your order {i} ships tomorrow.",
                        "source": f"user-{i % 997}",
                    },
                )
                for i in range(args.requests)
            ]
            seconds, latencies, failures = load(port, give, notes, args.clients)
        finally:
            server.terminate()
            server.wait(timeout=30)
            if database is not None:
                database.__exit__(None, None, None)
    print(
        f"adapterctl serve on loopback, {env['ADAPTERCTL_DB_URL'].split(':')[0]}, tiny model, {os.cpu_count()} CPUs "
        f"(server and load generator share them)"
    )
    print(f"{'':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'failed':>9}")
    report(f"POST /v1/feedback ({args.clients} clients)", seconds, latencies, failures)
    report("POST /v1/chat/completions (4)", gen_seconds, gen_latencies, gen_failures)


if __name__ == "__main__":
    main()
