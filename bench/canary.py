"""Canary releases: how many ratings the watcher needs to roll back a worse canary or complete a good
one, and how often it rolls back a canary that is no worse.

    .venv/bin/python bench/canary.py                  # 3 scenarios x 200 runs
    .venv/bin/python bench/canary.py --runs 5         # smoke run of the same code

A simulation through the real database and the real watcher, with a synthetic rater. A temporary home
(SQLite, migrated as `adapterctl init` does) holds a tiny model and line `line` with two approved
versions (random LoRA adapters), v1 promoted. Each run makes sure the line serves v1 with no canary,
starts a canary of v2 at `--share`, then simulates requests: each lands on the canary with
probability `--share` and gets a thumbs up (rating 1) with its side's probability, else a thumbs down
(rating -1). They are written as `issued_responses` rows routed by the canary, `--batch` rows per
transaction; after each batch `canary_watch.check(..., auto_complete=True)` looks once, as
`adapterctl canary watch --auto-complete` would. A run ends when the watcher aborts or completes the
canary, or as undecided at `--max-ratings`. Scenarios (thumbs-up rates baseline -> canary):

    worse by 10 points   0.70 -> 0.60   the watcher should roll back
    A/A                  0.70 -> 0.70   a rollback is wrong: the line's alpha bounds how often
    better               0.70 -> 0.75   the watcher should complete

Then `--server-runs` canaries of the worse scenario go through a real `adapterctl serve` on the same
home: rater threads send chat completions over HTTP (each as a new end user, so the server's sticky
routing decides the side), rate each answer through `/v1/feedback` by the side that answered, and
stop when the server's own watcher has rolled the canary back. The ratings counted are those in the
evidence of that rollback (its audit event): what the server judged on.

The baseline, measured on the same streams in the same run (pure Python, no database): a naive
one-sided two-proportion z-test at alpha 0.05, asked after every batch at which the watcher looked
(once each side has the line's `min_feedback` ratings), rolling back at its first "worse": how many
A/A canaries it would have rolled back wrongly. A fixed-sample test looked at repeatedly loses its
error guarantee; the sequential test in adapterctl.canary keeps it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select

from adapterctl import activations, base_models, canary_watch, lines, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.canary import CanarySettings
from adapterctl.config import Settings
from adapterctl.db.models import AuditEvent, IssuedResponse
from adapterctl.tiny_model import create_tiny_model
from adapterctl.workspace import Workspace, upgrade_database
from tests.test_runtime import approved_version  # a random real LoRA, registered and approved

LINE = "line"
ACTOR = "bench"
Z_ALPHA = 0.05
Z_CRITICAL = 1.6448536269514722  # one-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    baseline: float
    """Thumbs-up probability of v1 (the active version)."""
    canary: float
    """Thumbs-up probability of v2 (the canary)."""


SCENARIOS = [
    Scenario("worse", "canary worse by 10 points (0.70 → 0.60)", 0.70, 0.60),
    Scenario("aa", "A/A (0.70 → 0.70)", 0.70, 0.70),
    Scenario("better", "canary better (0.70 → 0.75)", 0.70, 0.75),
]


@dataclass
class Run:
    decision: str
    """aborted, completed or undecided."""
    ratings: int
    """Ratings (both sides) when the watcher acted, or at --max-ratings."""
    canary_ratings: int
    z_test_rollback: bool
    """Whether the naive repeated z-test said "worse" at one of the watcher's looks."""


@dataclass
class Result:
    scenario: Scenario
    runs: list[Run] = field(default_factory=list)

    def count(self, decision: str) -> int:
        return sum(run.decision == decision for run in self.runs)


# ---------------------------------------------------------------- the home: a line with v1 and v2


def open_workspace(home: Path) -> Workspace:
    """A fresh adapterctl home on SQLite, migrated as `adapterctl init` does."""
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'adapterctl.db'}", user=ACTOR)
    upgrade_database(settings)
    return Workspace(settings)


@dataclass(frozen=True)
class Line:
    id: int
    adapters: dict[str, int]
    """The adapter id of each arm: v1 for the baseline, v2 for the canary."""
    test: CanarySettings
    """The line's canary settings (the defaults)."""


def set_up_line(ws: Workspace, root: Path) -> Line:
    """Line `line` on a tiny model, with approved v1 and v2; v1 is promoted."""
    model = root / "model"
    create_tiny_model(model, layers=2, hidden=128, vocab=1024, seed=0)
    with ws.transaction() as session:
        base_models.register_base_model(session, name="tiny", source=str(model), actor=ACTOR)
        lines.create_line(session, name=LINE, base="tiny", actor=ACTOR)
    approved_version(ws, LINE, model, seed=1)
    approved_version(ws, LINE, model, seed=2)
    with ws.transaction() as session:
        activations.promote(session, ArtifactStore(ws.settings.artifacts_dir), line=LINE, version=1, actor=ACTOR)
        line = lines.get_line(session, LINE)
        return Line(
            line.id,
            {"baseline": registry.get_version(session, line.id, 1).id, "canary": registry.get_version(session, line.id, 2).id},
            lines.settings_of(line).canary,
        )


# ---------------------------------------------------------------- one run


def start_canary(ws: Workspace, share: float) -> int:
    """Serve v1 with no canary (ending what the previous run left), then start a canary of v2; its activation id."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        line_id = lines.get_line(session, LINE).id
        now = activations.current(session, line_id)
        if now.canary_adapter is not None:  # an undecided run left its canary running
            activations.abort_canary(session, line=LINE, actor=ACTOR, reason="bench: next run")
        if now.adapter.version != 1:  # the previous canary was completed
            activations.promote(session, store, line=LINE, version=1, actor=ACTOR, reason="bench: next run")
        return activations.start_canary(session, store, line=LINE, version=2, share=share, actor=ACTOR, reason="bench").id


def rated_batch(rng: random.Random, scenario: Scenario, share: float, size: int) -> list[tuple[str, bool]]:
    """`size` rated requests: (arm, thumbs up)."""
    batch = []
    for _ in range(size):
        arm = "canary" if rng.random() < share else "baseline"
        batch.append((arm, rng.random() < (scenario.canary if arm == "canary" else scenario.baseline)))
    return batch


def write_batch(ws: Workspace, line: Line, batch: list[tuple[str, bool]], first: int, run_key: str, canary_id: int) -> None:
    """The batch as issued responses routed by the canary, rated, in one transaction (one executemany insert)."""
    rows = [
        {
            "id": f"chatcmpl-{run_key}-{first + i}",
            "line_id": line.id,
            "adapter_id": line.adapters[arm],
            "served_by": f"{LINE}@v{1 if arm == 'baseline' else 2}",
            "prompt": "[]",
            "prompt_hash": "0" * 64,
            "answers": "[]",
            "canary_id": canary_id,
            "arm": arm,
            "latency_ms": 20.0,
            "rating": 1.0 if up else -1.0,
            "corrected": False,
        }
        for i, (arm, up) in enumerate(batch)
    ]
    with ws.transaction() as session:
        session.execute(insert(IssuedResponse), rows)


def z_test_says_worse(counts: dict[str, list[int]], min_feedback: int) -> bool:
    """The naive baseline: a one-sided pooled two-proportion z-test at Z_ALPHA, as if this were the only look."""
    (n_b, up_b), (n_c, up_c) = counts["baseline"], counts["canary"]
    if min(n_b, n_c) < min_feedback:
        return False
    pooled = (up_b + up_c) / (n_b + n_c)
    if pooled in (0, 1):
        return False
    z = (up_c / n_c - up_b / n_b) / math.sqrt(pooled * (1 - pooled) * (1 / n_b + 1 / n_c))
    return z < -Z_CRITICAL


def simulate(ws: Workspace, line: Line, scenario: Scenario, run: int, args, timing: dict[str, float]) -> Run:
    """One canary from start to the watcher's decision (or --max-ratings), rated by the synthetic rater."""
    rng = random.Random(f"{args.seed}-{scenario.key}-{run}")
    canary_id = start_canary(ws, args.share)
    counts = {"baseline": [0, 0], "canary": [0, 0]}  # ratings, ups
    z_rollback = False
    rated = 0
    while rated < args.max_ratings:
        batch = rated_batch(rng, scenario, args.share, min(args.batch, args.max_ratings - rated))
        started = time.perf_counter()
        write_batch(ws, line, batch, rated, f"{scenario.key}-{run}", canary_id)
        timing["insert"] += time.perf_counter() - started
        for arm, up in batch:
            counts[arm][0] += 1
            counts[arm][1] += up
        rated += len(batch)
        z_rollback = z_rollback or z_test_says_worse(counts, line.test.min_feedback)
        started = time.perf_counter()
        outcome = canary_watch.check(ws, LINE, auto_complete=True)
        timing["check"] += time.perf_counter() - started
        timing["checks"] += 1
        if outcome.action in ("aborted", "completed"):
            return Run(outcome.action, rated, counts["canary"][0], z_rollback)
    return Run("undecided", rated, counts["canary"][0], z_rollback)


# ---------------------------------------------------------------- through a real server


class Server:
    """`adapterctl serve` on the bench's home, on a free loopback port, without tokens."""

    def __init__(self, ws: Workspace, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        env = {**os.environ, "ADAPTERCTL_HOME": str(ws.settings.home), "ADAPTERCTL_DB_URL": ws.settings.db_url, "ADAPTERCTL_USER": ACTOR}
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adapterctl", "serve", "--port", self.url.rsplit(":", 1)[1], "--no-auth", "--poll", "0.2"],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not come up; see {log}") from None
                time.sleep(0.2)

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def rate_through(server: Server, scenario: Scenario, seed: str, stop: threading.Event) -> None:
    """One rater thread: new end users ask and rate by the side that answered, until `stop`."""
    rng = random.Random(seed)
    rates = {f"{LINE}@v1": scenario.baseline, f"{LINE}@v2": scenario.canary}
    while not stop.is_set():
        answer = server.post(
            "/v1/chat/completions",
            {
                "model": LINE,
                "max_tokens": 1,
                "user": f"user-{rng.getrandbits(64)}",
                "messages": [{"role": "user", "content": "Where is my order?"}],
            },
        )
        server.post("/v1/feedback", {"response_id": answer["id"], "rating": 1 if rng.random() < rates[answer["model"]] else -1})


def through_server(ws: Workspace, server: Server, scenario: Scenario, run: int, args) -> Run:
    """One canary, rated over HTTP until the server's watcher acts (or --server-timeout)."""
    canary_id = start_canary(ws, args.share)
    stop = threading.Event()
    raters = [
        threading.Thread(target=rate_through, args=(server, scenario, f"{args.seed}-server-{run}-{i}", stop), daemon=True)
        for i in range(args.raters)
    ]
    for rater in raters:
        rater.start()
    deadline = time.monotonic() + args.server_timeout
    while canary_running(ws, canary_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for rater in raters:
        rater.join()
    evidence = acted_on(ws, canary_id)
    if evidence is None:
        return Run("undecided", 0, 0, False)
    action, baseline, canary = evidence
    return Run(action, baseline["rated"] + canary["rated"], canary["rated"], False)


def canary_running(ws: Workspace, canary_id: int) -> bool:
    with ws.reading() as session:
        start = activations.canary_start(session, lines.get_line(session, LINE).id)
        return start is not None and start.id == canary_id


def acted_on(ws: Workspace, canary_id: int) -> tuple[str, dict, dict] | None:
    """What the server's watcher did with the canary, and the counts of each side it judged on."""
    with ws.reading() as session:
        for event in session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(("line.canary_abort", "line.promote"))).order_by(AuditEvent.seq.desc()).limit(5)
        ):
            evidence = json.loads(event.payload).get("evidence")
            if evidence and evidence["canary_id"] == canary_id:
                action = "aborted" if event.action == "line.canary_abort" else "completed"
                return action, evidence["baseline"], evidence["canary"]
    return None


# ---------------------------------------------------------------- report


def p95(values: list[int]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summary(result: Result) -> dict:
    ratings = [run.ratings for run in result.runs]
    return {
        "scenario": result.scenario.name,
        "runs": len(result.runs),
        "rolled_back": result.count("aborted"),
        "completed": result.count("completed"),
        "undecided": result.count("undecided"),
        "ratings_median": statistics.median(ratings),
        "ratings_p95": p95(ratings),
        "canary_ratings_median": statistics.median(run.canary_ratings for run in result.runs),
        "z_test_rollbacks": sum(run.z_test_rollback for run in result.runs),
    }


def print_table(summaries: list[dict]) -> None:
    print(
        "| scenario | runs | rolled back | completed | undecided | ratings to decision, median / p95 (total) | canary-side ratings, median |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in summaries:
        print(
            f"| {s['scenario']} | {s['runs']} | {s['rolled_back']} | {s['completed']} | {s['undecided']} "
            f"| {s['ratings_median']:,.0f} / {s['ratings_p95']:,.0f} | {s['canary_ratings_median']:,.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="simulated canaries per scenario")
    parser.add_argument("--share", type=float, default=0.5, help="the canary's share of requests (0..1)")
    parser.add_argument("--batch", type=int, default=50, help="rated responses written per transaction; the watcher looks after each")
    parser.add_argument("--max-ratings", type=int, default=40_000, help="a run still undecided at this many ratings stops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-runs", type=int, default=5, help="canaries of the worse scenario rated through a real server")
    parser.add_argument("--raters", type=int, default=4, help="rater threads sending requests and feedback to the server")
    parser.add_argument("--server-timeout", type=float, default=600, help="seconds a canary through the server may run undecided")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, while the adapters are made
    wall = time.perf_counter()
    timing = {"insert": 0.0, "check": 0.0, "checks": 0}
    with tempfile.TemporaryDirectory(prefix="adapterctl-canary-") as tmp:
        ws = open_workspace(Path(tmp) / "home")
        line = set_up_line(ws, Path(tmp))
        test = line.test
        results = []
        for scenario in SCENARIOS:
            started = time.perf_counter()
            result = Result(scenario, [simulate(ws, line, scenario, run, args, timing) for run in range(args.runs)])
            results.append(result)
            print(f"{scenario.name}: {args.runs} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        if args.server_runs:
            started = time.perf_counter()
            server = Server(ws, Path(tmp) / "serve.log")
            worse = Scenario("server", f"{SCENARIOS[0].name}, through `adapterctl serve`", SCENARIOS[0].baseline, SCENARIOS[0].canary)
            try:
                results.append(Result(worse, [through_server(ws, server, worse, run, args) for run in range(args.server_runs)]))
            finally:
                server.stop()
            print(f"{worse.name}: {args.server_runs} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        ws.close()
    seconds = time.perf_counter() - wall
    summaries = [summary(result) for result in results]
    aa = next(s for s in summaries if s["scenario"].startswith("A/A"))
    if args.json:
        print(
            json.dumps(
                {
                    "args": vars(args),
                    "settings": asdict(test),
                    "scenarios": summaries,
                    "wall_s": seconds,
                    "checks": timing["checks"],
                    "check_s": timing["check"],
                    "insert_s": timing["insert"],
                },
                indent=2,
            )
        )
        return
    print_table(summaries)
    print(
        f"\nA/A: {aa['rolled_back']} of {aa['runs']} canaries wrongly rolled back ({aa['rolled_back'] / aa['runs']:.1%}; "
        f"the line's alpha is {test.alpha:g})."
    )
    z_share = aa["z_test_rollbacks"] / aa["runs"]
    ratio = (
        f"{aa['z_test_rollbacks'] / aa['rolled_back']:.1f}x the sequential test's"
        if aa["rolled_back"]
        else f"{z_share:.1%}, {z_share / Z_ALPHA:.1f}x its nominal alpha; the sequential test: none"
    )
    print(
        f"wrong rollbacks: sequential {aa['rolled_back']} of {aa['runs']}, repeated z-test {aa['z_test_rollbacks']} of {aa['runs']} "
        f"(one-sided, alpha {Z_ALPHA:g}, asked at the watcher's looks: {ratio})."
    )
    print(
        f"share {args.share:g}, batch {args.batch}, max ratings {args.max_ratings:,}; settings: max_drop {test.max_drop:g}, "
        f"alpha {test.alpha:g}, beta {test.beta:g}, min_feedback {test.min_feedback}, prior_ratings {test.prior_ratings}"
    )
    print(
        f"wall time {seconds:.0f} s; {timing['checks']:,} watcher checks, {1000 * timing['check'] / max(1, timing['checks']):.1f} ms each, "
        f"{1000 * timing['insert'] / max(1, timing['checks']):.1f} ms per batch insert"
    )


if __name__ == "__main__":
    main()
