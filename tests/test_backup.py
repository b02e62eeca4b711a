"""`adapterctl backup` and `adapterctl restore`: a backup taken while a server serves and feedback is posted to
it restores into an empty home and database that doctor, `audit verify` and a new server find whole; a
refused restore or backup writes nothing, and a backup killed midway leaves no backup folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, inspect, select, table

from adapterctl.config import Settings, default_db_url
from adapterctl.db.models import AuditEvent
from adapterctl.workspace import Workspace, upgrade_database
from tests.conftest import BACKENDS, Cli, empty_database, require_backend, temporary_pg_database
from tests.test_activations import promote, version
from tests.test_runtime import approved_version


@contextmanager
def empty_target(backend: str, tmp_path: Path, name: str = "restored") -> Iterator[Settings]:
    """An empty home, with an empty database of the backend (the home's SQLite file, or a new PostgreSQL database)."""
    home = tmp_path / name
    if backend == "sqlite":
        yield Settings(home=home, db_url=default_db_url(home), user="restorer")
    else:
        with temporary_pg_database() as url:
            yield Settings(home=home, db_url=url, user="restorer")


def backend_of(settings: Settings) -> str:
    return "sqlite" if settings.db_url.startswith("sqlite") else "postgresql"


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def row_counts(settings: Settings, tables) -> dict[str, int]:
    with Workspace(settings) as ws, ws.reading() as session:
        return {name: session.scalar(select(func.count()).select_from(table(name))) for name in tables}


def untouched(settings: Settings) -> bool:
    """Nothing was written: no file in the home, no table in the database."""
    if settings.home.exists() and any(p.is_file() for p in settings.home.rglob("*")):
        return False
    if backend_of(settings) == "sqlite":
        return not Path(settings.db_url.removeprefix("sqlite:///")).exists()
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as connection:
            return inspect(connection).get_table_names() == []
    finally:
        engine.dispose()


def one_line_error(result, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("adapterctl: ") and all(f in lines[-1] for f in fragments), result.stderr
    assert not any("Traceback" in line for line in lines)


# --- a backup under load, restored ---------------------------------------------------------------------------------------


WRITTEN = ("feedback", "issued_responses", "audit_events")
"""What a server writes while it serves and takes feedback."""


class FeedbackWriter(threading.Thread):
    """Asks the server and posts feedback on each answer until stopped, as users would during a backup."""

    def __init__(self, server, token: str) -> None:
        super().__init__(daemon=True)
        self.server, self.token = server, token
        self.posted, self.failures = 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            question = [{"role": "user", "content": f"What is the code for room {self.posted + 100}?"}]  # distinct: never a duplicate
            status, body, _ = self.server.call(
                "POST", "/v1/chat/completions", {"model": "facts", "messages": question, "max_tokens": 4}, self.token
            )
            if status == 200:
                status, body, _ = self.server.call(
                    "POST", "/v1/feedback", {"response_id": body["id"], "rating": 1, "source": "load"}, self.token
                )
            if status == 200:
                self.posted += 1
            else:
                self.failures.append((status, body))

    def wait_for(self, posts: int) -> None:
        while self.posted < posts and self.is_alive() and not self.failures:
            self.stop.wait(0.05)
        assert not self.failures and self.posted >= posts, self.failures


@pytest.mark.slow
def test_a_backup_taken_while_serving_and_taking_feedback_restores_whole(ws, tiny_line, tiny_model, cli, tmp_path):
    from tests.test_server import Server

    for i in range(3):
        ws.log_feedback(
            line=tiny_line,
            prompt=f"What is the code for room {i}?",
            response="I do not know.",
            correction=f"The code for room {i} is {1000 + 37 * i}.",
            source=f"user-{i}",
        )
    approved_version(ws, tiny_line, tiny_model, seed=1)
    assert cli("promote", tiny_line, "v1", "--reason", "first").returncode == 0
    token = cli("token", "create", "--scope", "admin").stdout.strip()
    server = Server(cli)
    writer = FeedbackWriter(server, token)
    writer.start()
    try:
        writer.wait_for(2)
        before = row_counts(ws.settings, WRITTEN)
        backup_dir = tmp_path / "backups" / "monday"
        manifest = cli.json("backup", str(backup_dir))
        after = row_counts(ws.settings, WRITTEN)
        writer.wait_for(writer.posted + 2)  # the server kept taking feedback after the backup too
    finally:
        writer.stop.set()
        writer.join(timeout=60)
        server.stop()
    assert not writer.failures
    assert manifest["backend"] == backend_of(ws.settings) and manifest["schema_revision"] == "0010" and manifest["adapterctl_version"]
    assert all(before[t] <= manifest["counts"][t] <= after[t] for t in WRITTEN) and manifest["counts"]["adapters"] == 1
    on_disk = json.loads((backup_dir / "manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in on_disk["files"]} == {p: h for p, h in tree_hashes(backup_dir).items() if p != "manifest.json"}
    assert not list(backup_dir.parent.glob(".monday.partial-*"))

    with empty_target(backend_of(ws.settings), tmp_path) as target:
        restored_cli = Cli(target)
        restored = restored_cli.json("restore", str(backup_dir))
        assert restored["schema_revision"] == {"backup": "0010", "now": "0010"}
        doctor = restored_cli("doctor", "--json")
        assert doctor.returncode == 0 and json.loads(doctor.stdout)["ok"], doctor.stdout
        chain = restored_cli.json("audit", "verify", "--anchor", manifest["audit_head"])
        assert chain["ok"] and chain["events"] == manifest["counts"]["audit_events"] + 1
        assert restored_cli.json("audit", "log", "--limit", "1")[0]["action"] == "home.restore"
        counts = row_counts(target, manifest["counts"])
        assert counts == {**manifest["counts"], "audit_events": manifest["counts"]["audit_events"] + 1}  # the snapshot, exactly
        assert restored_cli.json("history", tiny_line) == cli.json("history", tiny_line)
        assert tree_hashes(target.artifacts_dir) == tree_hashes(ws.settings.artifacts_dir) != {}
        again = Server(restored_cli)
        try:
            status, body, headers = again.chat(token)  # the token, stored hashed, came along
            assert status == 200 and body["model"] == headers["x-adapter-version"] == f"{tiny_line}@v1"
        finally:
            again.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backup_of_an_older_schema_is_upgraded_when_restored(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        old = Settings(home=tmp_path / "old", db_url=url, user="op")
        upgrade_database(old, "0009")
        manifest = Cli(old).json("backup", str(tmp_path / "backup"))
    assert manifest["schema_revision"] == "0009"
    with empty_target(backend, tmp_path) as target:
        restored = Cli(target).json("restore", str(tmp_path / "backup"))
        assert restored["schema_revision"] == {"backup": "0009", "now": "0010"}
        assert Cli(target)("doctor").returncode == 0
        assert [e["action"] for e in reversed(Cli(target).json("audit", "log"))] == ["db.upgrade", "db.upgrade", "home.restore"]


# --- refusals -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def backed_up(ws, line, cli, tmp_path) -> Path:
    """A home with feedback and a promoted version, backed up to tmp_path/backup."""
    ws.log_feedback(line=line, prompt="Where is my order?", response="Soon.", correction="It ships on Monday.", source="user-1")
    version(ws, line)
    promote(ws, line, 1)
    assert cli("backup", str(tmp_path / "backup")).returncode == 0
    return tmp_path / "backup"


def audit_events(settings: Settings) -> int:
    with Workspace(settings) as ws, ws.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent))


def test_backup_refuses_a_folder_that_is_not_empty_and_takes_an_empty_one(ws, line, cli, tmp_path):
    version(ws, line)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    one_line_error(cli("backup", str(occupied)), 2, f"backup folder {occupied} exists and is not empty")
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    one_line_error(cli("backup", str(occupied / "notes.txt")), 2, "exists and is not empty")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("backup", str(empty)).returncode == 0 and (empty / "manifest.json").is_file()


def test_restore_refuses_a_home_or_database_in_use_writing_nothing(ws, cli, backed_up, tmp_path):
    events = audit_events(ws.settings)
    one_line_error(cli("restore", str(backed_up)), 2, "is not empty", "restore only into an empty home")
    other_home = Settings(home=tmp_path / "elsewhere", db_url=ws.settings.db_url, user="restorer")  # an empty home, the database in use
    one_line_error(Cli(other_home)("restore", str(backed_up)), 2, "restore only into an empty")
    assert audit_events(ws.settings) == events and not (tmp_path / "elsewhere" / "artifacts").exists()
    with empty_target(backend_of(ws.settings), tmp_path) as target:
        target.home.mkdir()
        (target.home / "adapterctl.toml").write_text('user = "restorer"\n')  # a config file alone does not make a home in use
        (target.home / "runs").mkdir()
        (target.home / "runs" / "left.log").write_text("x")
        one_line_error(Cli(target)("restore", str(backed_up)), 2, "holds runs/left.log")
        (target.home / "runs" / "left.log").unlink()
        assert Cli(target)("restore", str(backed_up)).returncode == 0


@pytest.mark.parametrize("damaged", ["database", "artifact", "added", "newer schema"])
def test_a_damaged_or_newer_backup_is_refused_with_nothing_written(ws, backed_up, tmp_path, damaged):
    copy = tmp_path / "copy"
    shutil.copytree(backed_up, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    if damaged == "newer schema":
        (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_revision": "0099"}))
    elif damaged == "added":
        (copy / "artifacts" / "support-bot" / "1" / "extra.safetensors").write_bytes(b"planted")
    else:
        name = manifest["database"] if damaged == "database" else "artifacts/support-bot/1/adapter_model.safetensors"
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
    expected = {"newer schema": "newer than this adapterctl knows", "added": "holds file(s) its manifest does not list"}
    with empty_target(backend_of(ws.settings), tmp_path) as target:
        one_line_error(Cli(target)("restore", str(copy)), 1, expected.get(damaged, "does not match its sha256"))
        assert untouched(target)


def test_restore_refuses_a_backup_of_the_other_backend(ws, backed_up, tmp_path):
    other = "postgresql" if backend_of(ws.settings) == "sqlite" else "sqlite"
    require_backend(other)
    with empty_target(other, tmp_path) as target:
        one_line_error(Cli(target)("restore", str(backed_up)), 2, f"holds a {backend_of(ws.settings)} database, the target is {other}")
        assert untouched(target)


def test_backup_refuses_an_artifact_that_does_not_match_the_database(ws, line, cli, tmp_path):
    version(ws, line)
    promote(ws, line, 1)
    (ws.settings.artifacts_dir / line / "1" / "adapter_model.safetensors").write_bytes(b"tampered")
    one_line_error(cli("backup", str(tmp_path / "backup")), 1, f"artifact of {line} v1 (active)", "does not match its recorded sha256")
    assert sorted(p.name for p in tmp_path.iterdir() if "backup" in p.name) == []  # neither the folder nor a partial one


def test_a_missing_artifact_of_a_revoked_version_is_named_in_the_backup_not_fatal(ws, line, cli, tmp_path):
    version(ws, line)
    promote(ws, line, 1)
    version(ws, line, status="revoked", fill=0.7)
    shutil.rmtree(ws.settings.artifacts_dir / line / "2")  # security.md lets an operator delete revoked weights
    result = cli("backup", str(tmp_path / "backup"), "--json")
    assert result.returncode == 0 and f"not in the backup: artifact of {line} v2 (revoked)" in result.stderr
    assert [s["artifact_path"] for s in json.loads(result.stdout)["skipped_artifacts"]] == [f"{line}/2"]
    with empty_target(backend_of(ws.settings), tmp_path) as target:
        assert Cli(target)("restore", str(tmp_path / "backup")).returncode == 0
        doctor = Cli(target)("doctor", "--json")
        problems = [f for f in json.loads(doctor.stdout)["findings"] if f["severity"] != "ok"]
        assert doctor.returncode == 1 and [(f["check"], f["severity"]) for f in problems] == [("artifacts", "warning")]  # as on the source
        assert f"{line} v2 (revoked)" in problems[0]["detail"] and "missing" in problems[0]["detail"]
        assert tree_hashes(target.artifacts_dir) == tree_hashes(ws.settings.artifacts_dir)


@pytest.mark.parametrize("step", ["backup.database_copied", "backup.artifacts_copied"])
def test_a_backup_killed_midway_leaves_no_backup_folder(ws, line, cli, tmp_path, step):
    version(ws, line)
    target = tmp_path / "backup"
    killed = cli.env_with(ADAPTERCTL_CRASH_AT=step)("backup", str(target))
    assert killed.returncode == -signal.SIGKILL
    assert not target.exists() and len(list(tmp_path.glob(".backup.partial-*"))) == 1  # the hidden partial folder the kill left
    assert cli("backup", str(target)).returncode == 0 and (target / "manifest.json").is_file()
