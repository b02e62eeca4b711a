"""Soak: chat completions and feedback against a real server while promote/rollback flip its version.

    .venv/bin/python bench/soak.py                      # 30 s warm-up, 60 s baseline, 10 minutes of flips; SQLite
    .venv/bin/python bench/soak.py --db-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/soak.py --duration 30 --warmup 6 --baseline 8 --flip-every 5 --json    # tests/test_soak.py

Bounded and on loopback only. A temporary home holds the tiny model (`create_tiny_model` with the
defaults of `adapterctl base create-tiny`, called in this process) and line `soak` with two approved
versions (random rank-4 LoRA adapters registered as `bench/canary.py` does: no training, no gate), v1
promoted, and a generate and a feedback token. `adapterctl serve` runs as its own process on
127.0.0.1. `--clients` threads, each with one keep-alive connection, send chat completions (8 new
tokens; `--stream-share` of them streamed) and rate every answer through `POST /v1/feedback` with a
correction of its own (each a new record). A 503 with Retry-After is sent again after that many
seconds and counts once. This process flips the line between v2 and v1 every `--flip-every` seconds by
calling `activations.promote` / `activations.rollback` itself, as `adapterctl promote` and `adapterctl
rollback` do (the CLI would spend seconds starting per flip).

Phases, in one run: warm-up (traffic and flips, so that every path has run once), baseline (traffic,
no flips), soak (traffic and flips). The ratio printed is the soak's throughput over the baseline's.
Bounds (exit status 1 when one fails): no 5xx apart from 503s that were retried until answered; no
failed request (a connection error, a final status other than 200, a stream without [DONE] or with an
error event, an answer whose version differs from its X-Adapter-Version header); every acknowledged
feedback is stored, once (rows counted in the database after the server stopped); every flip's
version answered a request sent after the flip; the server's RSS (with its children) at the end
within 10% of its RSS after the warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select

from adapterctl import activations, base_models, lines, tokens
from adapterctl.artifacts import ArtifactStore
from adapterctl.config import Settings
from adapterctl.db.models import Feedback
from adapterctl.workspace import Workspace, upgrade_database
from tests.test_runtime import approved_version  # a random real LoRA, registered and approved

LINE = "soak"
ACTOR = "bench"
RSS_BOUND = 0.10
RETRY_FOR_S = 60.0
"""How long a client keeps sending a request again that was answered 503 with Retry-After."""
PHASES = ("warm-up", "baseline", "soak")
STARTED = time.perf_counter()


# ---------------------------------------------------------------- the home: line `soak` with v1 and v2


def set_up(ws: Workspace, home: Path) -> dict[str, str]:
    """The tiny model, line `soak` with approved v1 and v2 (v1 promoted); the tokens' secrets by scope."""
    from adapterctl.tiny_model import create_tiny_model

    create_tiny_model(home / "model")
    with ws.transaction() as session:
        base_models.register_base_model(session, name="tiny", source=str(home / "model"), actor=ACTOR)
        lines.create_line(session, name=LINE, base="tiny", actor=ACTOR)
    for seed in (1, 2):
        approved_version(ws, LINE, home / "model", seed)
    with ws.transaction() as session:
        activations.promote(session, ArtifactStore(ws.settings.artifacts_dir), line=LINE, version=1, actor=ACTOR)
        return {
            scope: tokens.create_token(session, scope=scope, actor=ACTOR, name=f"soak-{scope}")[1] for scope in ("generate", "feedback")
        }


def flip(ws: Workspace, to_v2: bool) -> None:
    """Promote v2, or roll back to the version before it (v1); again, up to 5 times, while the database is busy."""
    from sqlalchemy.exc import OperationalError

    store = ArtifactStore(ws.settings.artifacts_dir)
    for attempt in range(5):
        try:
            with ws.transaction() as session:
                if to_v2:
                    activations.promote(session, store, line=LINE, version=2, actor=ACTOR, reason="soak")
                else:
                    activations.rollback(session, store, line=LINE, actor=ACTOR, reason="soak")
            return
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(1)


# ---------------------------------------------------------------- the server


class Server:
    """`adapterctl serve` on the home, on a free loopback port; its log in the home."""

    def __init__(self, ws: Workspace, poll_s: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "ADAPTERCTL_HOME": str(ws.settings.home), "ADAPTERCTL_DB_URL": ws.settings.db_url, "ADAPTERCTL_USER": ACTOR}
        self.log_path = ws.settings.home / "serve.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "adapterctl",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--poll",
                str(poll_s),
                "--device",
                "cpu",
            ],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not come up:\n{self.log_tail()}")
            time.sleep(0.2)

    def rss_bytes(self) -> int:
        """Resident memory of the server process and its children."""
        import psutil

        process = psutil.Process(self.process.pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        return total

    def stop(self) -> None:
        """SIGTERM: uvicorn finishes what it holds and the feedback writer writes what is queued."""
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def log_tail(self, lines_: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines_:])


# ---------------------------------------------------------------- the clients


@dataclass
class Call:
    """One request as the client saw it, retries included."""

    phase: str
    kind: str
    """chat, stream or feedback."""
    started: float
    ended: float
    status: int
    """The final answer's HTTP status; 0 when the connection failed."""
    served_by: str | None = None
    retries: int = 0
    failed: str | None = None
    """Why the request failed: no connection, a status other than 200, or an answer that is not whole."""


class Traffic:
    """The client threads and what they saw."""

    def __init__(self, port: int, secrets: dict[str, str], args) -> None:
        self.port, self.secrets, self.args = port, secrets, args
        self.phase = PHASES[0]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.statuses: Counter[str] = Counter()
        """Every HTTP answer, retried ones included, as `kind status`."""
        self.feedback_ids: set[int] = set()
        self.threads = [
            threading.Thread(target=self.client, args=(index,), name=f"soak-client-{index}", daemon=True) for index in range(args.clients)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=RETRY_FOR_S + 60)

    def client(self, index: int) -> None:
        rng = random.Random(index)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)  # after a failure, the next request reconnects
        number = 0
        while not self.stop.is_set():
            number += 1
            answer = self.chat(connection, rng.random() < self.args.stream_share, f"Question {index}-{number}: where is my order?")
            if answer is None:
                continue
            body = {
                "response_id": answer,
                "rating": rng.choice((1, -1)),
                "correction": f"Order {index}-{number} ships tomorrow.",
                "source": f"soak-user-{index}",
            }
            rated = self.send(connection, "feedback", "/v1/feedback", body, self.secrets["feedback"])
            if rated.call.status == 200:
                with self.lock:
                    self.feedback_ids.add(json.loads(rated.body)["id"])

    def chat(self, connection, stream: bool, question: str) -> str | None:
        """One chat completion; its response id, or None unless it was answered whole."""
        body = {"model": LINE, "max_tokens": self.args.max_tokens, "stream": stream, "messages": [{"role": "user", "content": question}]}
        sent = self.send(connection, "stream" if stream else "chat", "/v1/chat/completions", body, self.secrets["generate"])
        if sent.call.failed:
            return None
        response_id, models, broken = read_answer(sent.body, stream)
        header = sent.headers.get("x-adapter-version")
        if not broken and models != {header}:
            broken = f"the answer names {sorted(models)}, its X-Adapter-Version header {header}"
        sent.call.served_by, sent.call.failed = header, broken
        return None if broken else response_id

    def send(self, connection, kind: str, path: str, body: dict, secret: str) -> Sent:
        """POST, sending again after Retry-After seconds while the answer is 503 (for RETRY_FOR_S at most)."""
        phase, started, retries = self.phase, time.monotonic(), 0
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
        while True:
            try:
                connection.request("POST", path, json.dumps(body), headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self.note("connection error")
                return self.keep(
                    Sent(Call(phase, kind, started, time.monotonic(), 0, retries=retries, failed=f"{type(exc).__name__}: {exc}"))
                )
            self.note(f"{kind} {response.status}")
            wait = response.getheader("Retry-After")
            if response.status == 503 and wait and time.monotonic() - started < RETRY_FOR_S:
                retries += 1
                time.sleep(float(wait))
                continue
            failed = None if response.status == 200 else f"{kind} {response.status}: {data[:200].decode(errors='replace')}"
            headers = {name.lower(): value for name, value in response.getheaders()}
            return self.keep(
                Sent(Call(phase, kind, started, time.monotonic(), response.status, retries=retries, failed=failed), data, headers)
            )

    def note(self, status: str) -> None:
        with self.lock:
            self.statuses[status] += 1

    def keep(self, sent: Sent) -> Sent:
        with self.lock:
            self.calls.append(sent.call)
        return sent


@dataclass
class Sent:
    """A request's call and its final answer."""

    call: Call
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case names."""


def read_answer(body: bytes, stream: bool) -> tuple[str | None, set[str], str | None]:
    """The response id, the versions the answer names, and why it is not whole (None when it is)."""
    if not stream:
        answer = json.loads(body)
        return answer["id"], {answer["model"]}, None if answer["choices"] else "no choices"
    events = [block.removeprefix("data: ") for block in body.decode().split("\n\n") if block.strip()]
    if not events or events[-1] != "[DONE]":
        return None, set(), "the stream did not end with [DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    if failed := [chunk for chunk in chunks if "error" in chunk]:
        return None, set(), f"error event: {failed[0]['error']['message']}"
    return chunks[0]["id"], {chunk["model"] for chunk in chunks}, None


# ---------------------------------------------------------------- one run


@dataclass
class Flip:
    """A promote or rollback the bench made, as committed."""

    at: float
    version: str
    """What the line serves after it: soak@v2 or soak@v1."""
    phase: str
    reached_s: float | None = None
    """From the flip's commit to the end of the first answer by its version to a request sent after it."""


def run_phase(ws: Workspace, traffic: Traffic, name: str, seconds: float, flip_every: float | None, flips: list[Flip]) -> None:
    """`seconds` of traffic; with `flip_every`, a flip at the phase's start and every `flip_every` seconds after."""
    traffic.phase = name
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        if flip_every:
            to_v2 = not flips or flips[-1].version == f"{LINE}@v1"
            flip(ws, to_v2)
            flips.append(Flip(time.monotonic(), f"{LINE}@v{2 if to_v2 else 1}", name))
            time.sleep(max(0.0, min(end, now + flip_every) - time.monotonic()))
        else:
            time.sleep(end - now)


def reached(flips: list[Flip], calls: list[Call], traffic_end: float) -> None:
    """Fill in each flip's reached_s: answers by its version to requests sent after it and before the next flip."""
    for flip_, until in zip(flips, [f.at for f in flips[1:]] + [traffic_end]):
        ends = [call.ended for call in calls if call.served_by == flip_.version and not call.failed and flip_.at <= call.started < until]
        flip_.reached_s = min(ends) - flip_.at if ends else None


def stored_feedback(ws: Workspace) -> tuple[int, int]:
    """Feedback rows of the line, and the sum of their times_seen (a duplicate adds to it)."""
    with ws.reading() as session:
        line_id = lines.get_line(session, LINE).id
        rows, seen = session.execute(
            select(func.count(), func.coalesce(func.sum(Feedback.times_seen), 0)).where(Feedback.line_id == line_id)
        ).one()
        return int(rows), int(seen)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else float("nan")


def phase_summary(calls: list[Call], seconds: float, flips: int) -> dict:
    chats = [c for c in calls if c.kind in ("chat", "stream") and not c.failed]
    rated = [c for c in calls if c.kind == "feedback" and not c.failed]
    return {
        "seconds": seconds,
        "flips": flips,
        "chats": len(chats),
        "chat_per_s": len(chats) / seconds,
        "chat_p50_ms": percentile([c.ended - c.started for c in chats], 0.5) * 1000,
        "chat_p99_ms": percentile([c.ended - c.started for c in chats], 0.99) * 1000,
        "feedback": len(rated),
        "feedback_per_s": len(rated) / seconds,
        "feedback_p50_ms": percentile([c.ended - c.started for c in rated], 0.5) * 1000,
        "feedback_p99_ms": percentile([c.ended - c.started for c in rated], 0.99) * 1000,
        "served": dict(sorted(Counter(c.served_by for c in chats).items())),
    }


def progress(what: str) -> None:
    print(f"{time.perf_counter() - STARTED:5.1f} s  {what}", file=sys.stderr, flush=True)


def soak(args) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, while the adapters are made
    with tempfile.TemporaryDirectory(prefix="adapterctl-soak-") as tmp:
        home = Path(tmp)
        database = None
        db_url = f"sqlite:///{home / 'adapterctl.db'}"
        if args.db_url:
            from tests.conftest import temporary_pg_database  # a database of its own, dropped afterwards

            database = temporary_pg_database()
            db_url = database.__enter__()
        try:
            settings = Settings(home=home, db_url=db_url, user=ACTOR)
            upgrade_database(settings)
            ws = Workspace(settings)
            secrets = set_up(ws, home)
            progress("home set up")
            server = Server(ws, args.poll)
            progress("server up")
            try:
                result = drive(ws, server, secrets, args)
            finally:
                server.stop()
                progress("server stopped")
                log_tail = server.log_tail()
            rows, seen = stored_feedback(ws)
            ws.close()
        finally:
            if database is not None:
                database.__exit__(None, None, None)
    result["feedback"].update(stored=rows, times_seen=seen)
    result["server_log_tail"] = log_tail
    return result


def drive(ws: Workspace, server: Server, secrets: dict[str, str], args) -> dict:
    traffic = Traffic(server.port, secrets, args)
    flips: list[Flip] = []
    rss: list[tuple[float, int]] = []
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.wait(args.rss_every):
            rss.append((time.monotonic(), server.rss_bytes()))

    sampler = threading.Thread(target=sample_rss, name="soak-rss", daemon=True)
    traffic.start()
    sampler.start()
    started = time.monotonic()
    run_phase(ws, traffic, "warm-up", args.warmup, args.flip_every, flips)
    after_warmup = server.rss_bytes()
    progress(f"warm-up done, server RSS {after_warmup / 2**20:.0f} MB")
    baseline_start = time.monotonic()
    run_phase(ws, traffic, "baseline", args.baseline, None, flips)
    progress("baseline done")
    soak_start = time.monotonic()
    run_phase(ws, traffic, "soak", args.duration, args.flip_every, flips)
    at_end = server.rss_bytes()
    soak_end = time.monotonic()
    progress(f"soak done, server RSS {at_end / 2**20:.0f} MB")
    traffic.finish()
    sampling.set()
    sampler.join()
    calls = traffic.calls
    reached(flips, calls, max((c.ended for c in calls), default=soak_end))
    seconds = {"warm-up": baseline_start - started, "baseline": soak_start - baseline_start, "soak": soak_end - soak_start}
    phases = {
        name: phase_summary([c for c in calls if c.phase == name], seconds[name], sum(f.phase == name for f in flips)) for name in PHASES
    }
    server_errors = sum(n for status, n in traffic.statuses.items() if status.split()[-1].startswith("5") and not status.endswith(" 503"))
    unanswered_503 = sum(1 for c in calls if c.status == 503)
    failed = [c.failed for c in calls if c.failed]
    acknowledged = len(traffic.feedback_ids)
    rss_change = (at_end - after_warmup) / after_warmup
    bounds = {
        "no_5xx": server_errors == 0 and unanswered_503 == 0,
        "no_failed_requests": not failed,
        "every_flip_served": all(f.reached_s is not None for f in flips),
        "rss_within_10pct": abs(rss_change) <= RSS_BOUND,
    }
    return {
        "args": vars(args),
        "database": ws.db.backend,
        "cpus": os.cpu_count(),
        "phases": phases,
        "throughput_ratio": ratio(phases["soak"]["chat_per_s"], phases["baseline"]["chat_per_s"]),
        "chat_p99_ratio": ratio(phases["soak"]["chat_p99_ms"], phases["baseline"]["chat_p99_ms"]),
        "statuses": dict(sorted(traffic.statuses.items())),
        "server_errors": server_errors,
        "unanswered_503": unanswered_503,
        "retried": sum(c.retries for c in calls),
        "failed": len(failed),
        "failed_examples": sorted(set(failed))[:5],
        "feedback": {
            "acknowledged": acknowledged,
            "answered_200": sum(1 for c in calls if c.kind == "feedback" and c.status == 200),
            "unanswered": sum(1 for c in calls if c.kind == "feedback" and c.status != 200),
        },
        "flips": [
            {
                "phase": f.phase,
                "version": f.version,
                "at_s": round(f.at - started, 3),
                "reached_s": None if f.reached_s is None else round(f.reached_s, 3),
            }
            for f in flips
        ],
        "rss": {
            "after_warmup_mb": after_warmup / 2**20,
            "end_mb": at_end / 2**20,
            "max_mb": max(r for _, r in rss) / 2**20 if rss else None,
            "change": rss_change,
            "samples_mb": [round(r / 2**20, 1) for _, r in rss],
        },
        "bounds": bounds,
    }


def check_feedback(result: dict) -> None:
    """The feedback bound, once the database was counted: every acknowledged record stored, once, and nothing else."""
    feedback = result["feedback"]
    kept = (
        feedback["acknowledged"] == feedback["answered_200"] == feedback["stored"] == feedback["times_seen"] and not feedback["unanswered"]
    )
    result["bounds"]["feedback_stored"] = kept
    result["passed"] = all(result["bounds"].values())


# ---------------------------------------------------------------- report


def print_table(result: dict) -> None:
    args, phases = result["args"], result["phases"]
    print(
        f"soak: adapterctl serve on loopback, {result['database']}, tiny model, {result['cpus']} CPUs shared with {args['clients']} clients "
        f"({args['stream_share']:.0%} streamed, {args['max_tokens']} new tokens, feedback on every answer); "
        f"promote v2 / rollback to v1 every {args['flip_every']:g} s"
    )
    print("| phase | seconds | flips | chat/s | chat p50 / p99 ms | feedback/s | feedback p50 / p99 ms | answers by version |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, label in zip(PHASES, ("warm-up (traffic and flips)", "baseline (no flips)", "soak (flips)")):
        p = phases[name]
        served = ", ".join(f"{version.split('@')[1]} {count:,}" for version, count in p["served"].items())
        print(
            f"| {label} | {p['seconds']:.0f} | {p['flips']} | {p['chat_per_s']:.1f} | {p['chat_p50_ms']:.0f} / {p['chat_p99_ms']:.0f} "
            f"| {p['feedback_per_s']:.1f} | {p['feedback_p50_ms']:.0f} / {p['feedback_p99_ms']:.0f} | {served} |"
        )
    print(f"\nthroughput with flips / without: {result['throughput_ratio']:.2f}x; chat p99 with / without: {result['chat_p99_ratio']:.2f}x")
    statuses = ", ".join(f"{status} x{count:,}" for status, count in result["statuses"].items())
    print(
        f"answers: {statuses}; 5xx other than a retried 503: {result['server_errors']}; failed requests: {result['failed']} "
        f"{result['failed_examples'] or ''}"
    )
    feedback = result["feedback"]
    print(
        f"feedback: {feedback['acknowledged']:,} acknowledged, {feedback['stored']:,} stored (times_seen {feedback['times_seen']:,}), "
        f"{feedback['unanswered']} never acknowledged; requests sent again after a 503: {result['retried']}"
    )
    soaked = [f for f in result["flips"] if f["phase"] == "soak"]
    reach = [f["reached_s"] for f in soaked if f["reached_s"] is not None]
    print(
        f"flips in the soak: {len(reach)} of {len(soaked)} served by a request sent after them; flip -> first such answer "
        f"median {statistics.median(reach) * 1000:.0f} ms, max {max(reach) * 1000:.0f} ms"
        if reach
        else "flips in the soak: none served"
    )
    rss = result["rss"]
    print(
        f"server RSS: {rss['after_warmup_mb']:.0f} MB after the warm-up, {rss['end_mb']:.0f} MB at the end ({rss['change']:+.1%}), "
        f"max {rss['max_mb']:.0f} MB"
    )
    print("bounds: " + ", ".join(f"{name} {'PASS' if ok else 'FAIL'}" for name, ok in result["bounds"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of the soak phase (traffic and flips)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of traffic and flips before the RSS is taken")
    parser.add_argument("--baseline", type=float, default=60, help="seconds of traffic without flips, the throughput's baseline")
    parser.add_argument("--flip-every", type=float, default=10, help="seconds between flips (promote v2 / rollback to v1)")
    parser.add_argument("--clients", type=int, default=4, help="client threads, each with one keep-alive connection")
    parser.add_argument("--stream-share", type=float, default=0.5, help="share of chat completions streamed")
    parser.add_argument("--max-tokens", type=int, default=8, help="new tokens per chat completion")
    parser.add_argument("--poll", type=float, default=0.5, help="the server's --poll")
    parser.add_argument("--rss-every", type=float, default=5, help="seconds between samples of the server's RSS")
    parser.add_argument("--db-url", help="a PostgreSQL server (a database of its own is made and dropped); default: SQLite in the home")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    args = parser.parse_args()
    if min(args.duration, args.warmup, args.baseline, args.flip_every) <= 0 or args.clients < 1 or not 0 <= args.stream_share <= 1:
        parser.error(
            "--duration, --warmup, --baseline and --flip-every must be more than 0, --clients at least 1, --stream-share within 0..1"
        )
    result = soak(args)
    check_feedback(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
        if not result["passed"]:
            print(f"\nthe server's log ends with:\n{result['server_log_tail']}")
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
