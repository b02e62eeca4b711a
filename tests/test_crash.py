"""Crash safety: the real CLI killed by SIGKILL at each named step of its work (adapterctl/faults.py), on
SQLite and PostgreSQL. Afterwards the database holds all of a change or none of it, every candidate has a
complete, hash-verified artifact, `doctor` names exactly what the crash left and `--repair` removes only
that, the next job takes the dead job's lease over, and a running server keeps answering and follows
what was committed."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from adapterctl import activations, base_models, leases, lines
from adapterctl.artifacts import ArtifactStore
from adapterctl.config import Settings
from adapterctl.db import migrate
from adapterctl.db.models import Adapter, AuditEvent, Lease, TrainingRun
from adapterctl.lines import get_line
from adapterctl.workspace import Workspace
from tests.conftest import BACKENDS, Cli, require_backend, temporary_pg_database
from tests.test_feedback_io import counts, record, write_jsonl
from tests.test_runtime import approved_version
from tests.test_server import Server
from tests.test_training import log_facts

pytestmark = pytest.mark.slow

LINE = "facts"
KILLED = -signal.SIGKILL
TRAIN = [
    "train",
    "--line",
    LINE,
    "--max-steps",
    "4",
    "--checkpoint-steps",
    "2",
    "--target-learned",
    "0",
    "--holdout-fraction",
    "0",
    "--batch-size",
    "8",
    "--scheduler",
    "constant",
    "--json",
]


@dataclass
class Home:
    ws: Workspace
    cli: Cli
    token: str
    """A generate token of the home's database."""

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.ws.settings.artifacts_dir)


@pytest.fixture(scope="module", params=BACKENDS)
def prepared(request, tmp_path_factory, tiny_model) -> Iterator[tuple[str, Path, str, str]]:
    """Per backend, once: line `facts` on the tiny model with feedback to train on, v1 active and v2, v3 approved
    (real PEFT adapters) and a generate token. Tests work on copies of it."""
    backend = request.param
    require_backend(backend)
    home = tmp_path_factory.mktemp(f"prepared-{backend}") / "home"
    home.mkdir()
    with _database(backend, home) as url:
        migrate.upgrade(url)
        settings = Settings(home=home, db_url=url, user="tester")
        ws = Workspace(settings)
        with ws.transaction() as session:
            base_models.register_base_model(session, name="tiny", source=str(tiny_model), actor="tester")
            lines.create_line(
                session,
                name=LINE,
                base="tiny",
                actor="tester",
                settings=lines.LineSettings(min_examples=2, max_source_share=1.0, reference_size=0),
            )
        log_facts(ws, LINE)
        for seed in (1, 2, 3):
            approved_version(ws, LINE, tiny_model, seed=seed)
        with ws.transaction() as session:
            activations.promote(session, ArtifactStore(settings.artifacts_dir), line=LINE, version=1, actor="ops")
        ws.close()  # PostgreSQL copies a database only while nobody is connected to it
        token = Cli(settings)("token", "create", "--scope", "generate").stdout.strip()
        yield backend, home, url, token


@contextmanager
def _database(backend: str, home: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{home / 'adapterctl.db'}"
    else:
        with temporary_pg_database() as url:
            yield url


@contextmanager
def copy_of(prepared, folder: Path) -> Iterator[Home]:
    """A copy of the prepared home and its database."""
    backend, source, url, token = prepared
    home = folder / "home"
    shutil.copytree(source, home)
    with _copied_database(backend, url, home) as copy_url:
        settings = Settings(home=home, db_url=copy_url, user="tester")
        ws = Workspace(settings)
        try:
            yield Home(ws, Cli(settings), token)
        finally:
            ws.close()


@contextmanager
def _copied_database(backend: str, url: str, home: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{home / 'adapterctl.db'}"
        return
    with temporary_pg_database(template=make_url(url).database) as copy:
        yield copy


@pytest.fixture
def home(prepared, tmp_path) -> Iterator[Home]:
    with copy_of(prepared, tmp_path) as copy:
        yield copy


def audit_verifies(home: Home) -> bool:
    return home.cli.json("audit", "verify")["ok"]


def doctor(home: Home, *args: str) -> tuple[int, dict]:
    result = home.cli("doctor", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def problems(report: dict) -> set[tuple[str, str | None]]:
    return {(f["check"], f["repair"]) for f in report["findings"] if f["severity"] != "ok"}


# ---------------------------------------------------------------- feedback import

IMPORTED = 6000  # more than one staging chunk (5000), so `feedback.import.staged` comes with records still unread


@pytest.mark.parametrize("point", ["feedback.import.staged", "feedback.import.rows_written", "feedback.import.committed"])
def test_an_import_killed_at_each_step_stores_all_of_its_file_or_nothing(point, home, tmp_path):
    path = tmp_path / "feedback.jsonl"
    write_jsonl(path, [record(i, source=f"importer-{i % 7}") for i in range(IMPORTED)])
    feedback_before, events_before = counts(home.ws)
    killed = home.cli.env_with(ADAPTERCTL_CRASH_AT=point)("feedback", "import", str(path), "--line", LINE)
    assert killed.returncode == KILLED, killed.stderr
    committed = point == "feedback.import.committed"
    assert counts(home.ws) == ((feedback_before + IMPORTED, events_before + 1) if committed else (feedback_before, events_before))
    assert audit_verifies(home) and doctor(home)[0] == 0

    again = home.cli.json("feedback", "import", str(path), "--line", LINE)  # the operator runs it again
    assert (again["imported"], again["duplicates"]) == ((0, IMPORTED) if committed else (IMPORTED, 0))
    assert counts(home.ws) == (feedback_before + IMPORTED, events_before + 2 if committed else events_before + 1)


# ---------------------------------------------------------------- training and artifacts

# point: (the folder the killed run leaves in the store besides its lease, the options of the next run)
TRAINING = {
    "train.checkpoint_saved": ("{line}/.staging-run-{run}", ["--resume"]),
    "train.adapter_saved": ("{line}/.staging-run-{run}", []),
    "artifact.sealed": ("{line}/.staging-run-{run}", []),
    "artifact.renamed": ("{line}/{run}", []),
    "train.candidate_added": ("{line}/{run}", []),
    "train.committed": (None, []),
}


def adapters(home: Home) -> dict[int, str]:
    with home.ws.reading() as session:
        return {a.id: a.status for a in session.scalars(select(Adapter))}


def every_artifact_verifies(home: Home) -> None:
    """No candidate without a complete artifact matching its sha256 (verify raises otherwise)."""
    with home.ws.reading() as session:
        for adapter in session.scalars(select(Adapter)):
            home.store.verify(adapter.artifact_path, adapter.sha256)


def store_folders(home: Home) -> set[str]:
    return {p.name for p in (home.store.root / LINE).iterdir()}


@pytest.mark.parametrize("point", TRAINING)
def test_training_killed_at_each_step_leaves_no_candidate_without_its_artifact_and_the_next_run_recovers(point, home):
    left, rerun_options = TRAINING[point]
    before = adapters(home)
    killed = home.cli.env_with(ADAPTERCTL_CRASH_AT=point)(*TRAIN)
    assert killed.returncode == KILLED, killed.stderr

    with home.ws.reading() as session:
        run = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc())).first()
        lease = session.scalars(select(Lease)).one()
        assert leases.live_holder(session, lease.name) is None  # its holder died on this host: reclaimable now
    committed = point == "train.committed"
    assert run.status == ("succeeded" if committed else "running")
    assert adapters(home) == ({**before, run.id: "evaluating"} if committed else before)
    every_artifact_verifies(home)
    leftover = left.format(line=LINE, run=run.id) if left else None
    orphan = {("orphans", f"remove {leftover}")} if leftover else set()
    code, report = doctor(home)
    assert code == 1 and problems(report) == {("leases", f"release train:{LINE}"), *orphan}
    work_dir = home.ws.settings.home / "runs" / LINE / str(run.id)
    assert work_dir.is_dir()  # checkpoints and the examples' text, until the next run of the line

    again = home.cli(*TRAIN, *rerun_options)  # cron, a minute later: takes the dead job's lease over
    assert again.returncode == 0, again.stderr
    outcome = json.loads(again.stdout)
    if committed:  # nothing new to train; the candidate the killed job registered is evaluated now
        assert outcome["status"] == "nothing_to_do" and [e["candidate_id"] for e in outcome["leftovers"]] == [run.id]
        candidate = run.id
    else:
        assert outcome["status"] == "trained" and outcome["resumed"] == ("--resume" in rerun_options), outcome
        candidate = outcome["candidate_id"]
        if outcome["resumed"]:
            assert (candidate, outcome["metrics"]["resumed_from_step"]) == (run.id, 2)
    assert adapters(home)[candidate] in ("pending_review", "gate_failed")
    assert not work_dir.exists()

    code, report = doctor(home)  # the lease was released by the run that took it over
    if outcome["resumed"] or committed:
        assert code == 0 and problems(report) == set()
    else:
        assert code == 1 and problems(report) == orphan
        code, report = doctor(home, "--repair")
        assert code == 0 and report["repaired"] == [f"remove {leftover}"] and problems(report) == set()
    every_artifact_verifies(home)
    assert store_folders(home) == {str(a) for a in adapters(home)}  # the repair removed the leftover only


# ---------------------------------------------------------------- activations, with a server following them

USERS = [f"user-{i}" for i in range(6)]


@pytest.fixture(scope="module")
def live(prepared, tmp_path_factory) -> Iterator[tuple[Home, Server]]:
    """A copy of the prepared home with `adapterctl serve` following it, shared by the activation tests: each
    brings the line back to v1 without a canary first."""
    with copy_of(prepared, tmp_path_factory.mktemp("live")) as copy:
        server = Server(copy.cli, "--no-canary-watch")
        try:
            yield copy, server
        finally:
            server.stop()


def served(home: Home) -> tuple[str, str | None]:
    """What the database says the line serves: its version, and its canary's."""
    with home.ws.reading() as session:
        now = activations.current(session, get_line(session, LINE).id)
        return activations.describe(now.adapter), now.canary_adapter and activations.describe(now.canary_adapter)


def answers(server: Server, token: str) -> set[str]:
    """The versions the server answers USERS with; every answer must be a success."""
    models = set()
    for user in USERS:
        status, body, headers = server.chat(token, user=user)
        assert status == 200 and headers["x-adapter-version"] == body["model"], body
        models.add(body["model"])
    return models


def follows(server: Server, home: Home, timeout: float = 60.0) -> None:
    """Wait until the server answers as the database says: everyone with the active version, or with a canary
    at 99% running, some (almost all) with the canary's and nobody with a third."""
    version, canary = served(home)
    active, trial = f"{LINE}@{version}", canary and f"{LINE}@{canary}"

    def agrees(seen: set[str]) -> bool:
        return seen == {active} if trial is None else trial in seen and seen <= {active, trial}

    deadline = time.monotonic() + timeout
    while not agrees(seen := answers(server, home.token)):
        assert time.monotonic() < deadline, f"the server answers with {seen}; the database says {version}, canary {canary}"
        time.sleep(0.2)


def reset(home: Home) -> None:
    with home.ws.transaction() as session:
        if activations.current(session, get_line(session, LINE).id).canary_adapter is not None:
            activations.abort_canary(session, line=LINE, actor="ops")
        if activations.describe(activations.current(session, get_line(session, LINE).id).adapter) != "v1":
            activations.rollback(session, home.store, line=LINE, to="v1", actor="ops")


def promote_v2(home: Home) -> None:
    with home.ws.transaction() as session:
        activations.promote(session, home.store, line=LINE, version=2, actor="ops")


def canary_v3(home: Home) -> None:
    with home.ws.transaction() as session:
        activations.start_canary(session, home.store, line=LINE, version=3, share=0.99, actor="ops")


# command: (set-up, its arguments, the activation's kind, what is served before, and after it committed)
ACTIVATIONS = {
    "promote": (None, ["promote", LINE, "v2"], "promote", ("v1", None), ("v2", None)),
    "rollback": (promote_v2, ["rollback", LINE], "rollback", ("v2", None), ("v1", None)),
    "canary start": (None, ["promote", LINE, "v3", "--canary", "99%"], "canary", ("v1", None), ("v1", "v3")),
    "canary abort": (canary_v3, ["canary", "abort", LINE], "canary_abort", ("v1", "v3"), ("v1", None)),
}


def activation_events(home: Home) -> list[dict]:
    with home.ws.reading() as session:
        return [
            {"action": e.action, **json.loads(e.payload or "{}")}
            for e in session.scalars(select(AuditEvent).where(AuditEvent.subject == f"line:{LINE}").order_by(AuditEvent.seq))
        ]


def states_in_step(home: Home) -> bool:
    """The served version is the one adapter `active`; a canary changes no state."""
    version, _ = served(home)
    with home.ws.reading() as session:
        active = {f"v{number}" for number in session.scalars(select(Adapter.version).where(Adapter.status == "active"))}
    return active == ({version} if version != "base" else set())


@pytest.mark.parametrize("point", ["activation.added", "activation.committed"])
@pytest.mark.parametrize("command", ACTIVATIONS)
def test_an_activation_killed_at_each_step_happened_completely_or_not_at_all_and_the_server_follows(command, point, live):
    home, server = live
    set_up, arguments, kind, before, after = ACTIVATIONS[command]
    reset(home)
    if set_up:
        set_up(home)
    assert served(home) == before
    follows(server, home)
    history_before, events_before = home.cli.json("history", LINE), activation_events(home)

    killed = home.cli.env_with(ADAPTERCTL_CRASH_AT=point)(*arguments)
    assert killed.returncode == KILLED, killed.stderr
    history, events = home.cli.json("history", LINE), activation_events(home)
    if point == "activation.committed":
        [new] = history[len(history_before) :]
        [event] = [e for e in events[len(events_before) :] if e["action"] == f"line.{kind}"]
        assert history[:-1] == history_before and (new["kind"], event["activation"]) == (kind, new["id"])
        assert served(home) == after and new["to"] == after[0]
    else:  # nothing of it: no activation, no audit event, the same version served
        assert (history, events, served(home)) == (history_before, events_before, before)
    assert states_in_step(home) and audit_verifies(home)
    follows(server, home)  # it kept answering, with what the database says

    if point == "activation.added":  # nothing of the killed command blocks the line: run again, it commits
        assert home.cli(*arguments).returncode == 0
        assert served(home) == after and home.cli.json("history", LINE)[-1]["kind"] == kind
        follows(server, home)
