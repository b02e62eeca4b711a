"""`adapterctl doctor`: it finds what a crash or a hand left wrong, and `--repair` removes only what is
provably orphaned, each removal an audit event."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import func, select

from adapterctl import audit, doctor, leases
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import AuditEvent, Lease
from adapterctl.db.types import utcnow
from tests.test_activations import version
from tests.test_artifacts import fake_adapter


def findings(cli, *args: str) -> tuple[int, dict]:
    import json

    result = cli("doctor", "--json", *args)
    return result.returncode, json.loads(result.stdout)


def plant_crash_leftovers(ws, line) -> None:
    """What a run killed between the artifact's rename and its commit leaves, a staging folder of a run
    that died, and the lease of a job that died."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    store.commit(fake_adapter(store.staging_dir(line, "run-98")), line, 99)  # committed to disk, never to the database
    fake_adapter(store.staging_dir(line, "run-97"))
    with ws.transaction() as session:
        session.add(
            Lease(
                name=f"train:{line}",
                holder="cron@elsewhere:4242",
                acquired_at=utcnow() - timedelta(hours=2),
                expires_at=utcnow() - timedelta(hours=1),
            )
        )


def test_a_healthy_home_passes(ws, line, cli):
    version(ws, line)
    code, report = findings(cli)
    assert code == 0 and report["ok"] and {f["check"] for f in report["findings"]} == {"schema", "artifacts", "orphans", "leases", "audit"}


def test_repair_removes_what_a_crash_left_and_leaves_what_needs_a_person(ws, line, cli):
    number = version(ws, line)
    plant_crash_leftovers(ws, line)
    store = ArtifactStore(ws.settings.artifacts_dir)
    (store.root / line / "1" / "adapter_model.safetensors").write_bytes(b"tampered")  # v1, approved: needs a person
    code, report = findings(cli)
    problems = {(f["check"], f["severity"], f["repair"]) for f in report["findings"] if f["severity"] != "ok"}
    assert code == 1 and problems == {
        ("orphans", "warning", f"remove {line}/99"),
        ("orphans", "warning", f"remove {line}/.staging-run-97"),
        ("leases", "warning", f"release train:{line}"),
        ("artifacts", "error", None),
    }
    assert any(f"v{number}" in f["detail"] and "modified" in f["detail"] for f in report["findings"])

    code, report = findings(cli, "--repair")
    assert sorted(report["repaired"]) == sorted([f"remove {line}/99", f"remove {line}/.staging-run-97", f"release train:{line}"])
    assert code == 1 and [f["check"] for f in report["findings"] if f["severity"] != "ok"] == ["artifacts"]  # left for a person
    assert not (store.root / line / "99").exists() and not (store.root / line / ".staging-run-97").exists()
    assert (store.root / line / "1").is_dir()  # a named artifact is never removed, modified or not
    with ws.reading() as session:
        assert session.scalar(select(func.count()).select_from(Lease)) == 0
        assert session.scalar(select(func.count()).where(AuditEvent.action == "doctor.repair")) == 3
        assert audit.verify(session).ok


def test_nothing_is_removed_while_a_live_run_trains_the_line(ws, line, cli):
    plant_crash_leftovers(ws, line)
    with ws.transaction() as session:
        session.query(Lease).delete()
        leases.acquire(session, f"train:{line}", leases.new_holder())  # this process: alive
    _, report = findings(cli, "--repair")
    orphans = [f for f in report["findings"] if f["check"] == "orphans"]
    assert report["repaired"] == [] and len(orphans) == 2 and all(f["repair"] is None and "left alone" in f["detail"] for f in orphans)
    assert (ArtifactStore(ws.settings.artifacts_dir).root / line / "99").is_dir()


def test_a_lease_whose_holder_died_on_this_host_is_found_and_released_before_it_expires(ws, line, cli):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    with ws.transaction() as session:
        leases.acquire(session, f"train:{line}", f"{socket.gethostname()}:{gone}:0badcafe")  # expires in a minute
        leases.acquire(session, "train:other", leases.new_holder())  # this process: alive, never touched
    code, report = findings(cli)
    [found] = [f for f in report["findings"] if f["check"] == "leases"]
    assert code == 1 and found["repair"] == f"release train:{line}" and "a process of this host that is gone" in found["detail"]
    code, report = findings(cli, "--repair")
    assert code == 0 and report["repaired"] == [f"release train:{line}"]
    with ws.reading() as session:
        assert list(session.scalars(select(Lease.name))) == ["train:other"]


def test_the_text_report_names_each_check(ws, line, cli):
    plant_crash_leftovers(ws, line)
    shown = cli("doctor")
    assert shown.returncode == 1
    assert f"WARN  orphans: {line}/99: no candidate names it" in shown.stdout and "--repair` fixes it" in shown.stdout
    assert "ok    audit: no problem found" in shown.stdout


def test_a_lease_taken_over_between_the_check_and_the_repair_stays_and_no_repair_is_recorded(ws, line):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    with ws.transaction() as session:
        leases.acquire(session, f"train:{line}", f"{socket.gethostname()}:{gone}:0badcafe")
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.reading() as session:
        [found] = [f for f in doctor.examine(session, store) if f.check == "leases"]
    live = leases.new_holder()
    with ws.transaction() as session:  # a new train takes the dead holder's lease over
        session.query(Lease).delete()
        leases.acquire(session, f"train:{line}", live)
    with ws.transaction() as session:
        assert doctor.repair(session, store, [found], actor="ops") == []
    with ws.reading() as session:
        assert session.scalar(select(Lease.holder).where(Lease.name == f"train:{line}")) == live
        assert session.scalar(select(func.count()).where(AuditEvent.action == "doctor.repair")) == 0
