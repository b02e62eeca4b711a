"""`adapterctl train` as cron runs it, in real processes: the lease, kill -9 and --resume, two-process DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from adapterctl.db.models import Adapter, Lease, TrainingRun
from tests.test_training import log_facts

pytestmark = pytest.mark.slow

TRAIN = [
    "train",
    "--line",
    "facts",
    "--learning-rate",
    "3e-3",
    "--batch-size",
    "8",
    "--scheduler",
    "constant",
    "--holdout-fraction",
    "0",
    "--target-learned",
    "0",
]  # a fixed length: these tests time kills and leases against it


def start(cli, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "adapterctl", *TRAIN, *args], env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def rows(ws, model):
    with ws.reading() as session:
        return list(session.scalars(select(model)))


def test_a_second_job_on_the_same_line_exits_75(ws, tiny_line, cli):
    log_facts(ws, tiny_line)
    first = start(cli, "--max-steps", "150")
    try:
        wait_for(lambda: rows(ws, Lease), what="the first job's lease")
        second = cli(*TRAIN, "--max-steps", "5")
        assert second.returncode == 75, second.stderr
        assert "train:facts is held by" in second.stderr and "try again later" in second.stderr
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert len(rows(ws, Adapter)) == 1 and len(rows(ws, TrainingRun)) == 1
    idle = cli(*TRAIN)  # cron again: nothing new
    assert idle.returncode == 0 and idle.stdout.startswith("nothing to do for facts: 0 new eligible examples")


def complete_checkpoints(runs) -> list:
    """Checkpoint folders whose trainer state parses, oldest first."""
    complete = []
    for state in runs.glob("*/checkpoints/checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        complete.append(state.parent)
    return sorted(complete, key=lambda folder: int(folder.name.split("-")[1]))


def test_kill_9_during_training_then_resume(ws, tiny_line, cli, settings):
    log_facts(ws, tiny_line)
    job = start(cli, "--max-steps", "60", "--checkpoint-steps", "10")
    checkpoints = settings.home / "runs" / "facts"
    wait_for(lambda: complete_checkpoints(checkpoints), what="a checkpoint")
    os.kill(job.pid, signal.SIGKILL)
    job.communicate(timeout=60)
    [run] = rows(ws, TrainingRun)
    assert run.status == "running" and rows(ws, Adapter) == []  # nothing points at a half-written artifact

    # what a kill in the middle of the next save leaves: a newer checkpoint without its trainer state
    last = complete_checkpoints(checkpoints)[-1]
    half_written = last.with_name(f"checkpoint-{int(last.name.split('-')[1]) + 10}")
    shutil.rmtree(half_written, ignore_errors=True)
    shutil.copytree(last, half_written)
    (half_written / "trainer_state.json").unlink()

    resumed = cli(*TRAIN, "--max-steps", "60", "--checkpoint-steps", "10", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    outcome = json.loads(resumed.stdout)
    assert (outcome["status"], outcome["resumed"], outcome["run_id"]) == ("trained", True, run.id)
    assert outcome["metrics"]["steps"] == 60
    assert outcome["metrics"]["resumed_from_step"] == int(last.name.split("-")[1])
    [adapter] = rows(ws, Adapter)
    [run] = rows(ws, TrainingRun)
    assert (adapter.id, run.status) == (run.id, "succeeded")
    assert rows(ws, Lease) == []


def test_two_training_processes_make_one_candidate(ws, tiny_line, cli):
    log_facts(ws, tiny_line)
    result = cli(*TRAIN, "--max-steps", "6", "--processes", "2", "--json")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "trained" and outcome["metrics"]["world_size"] == 2
    assert [a.id for a in rows(ws, Adapter)] == [outcome["candidate_id"]]


def test_sigterm_interrupts_and_a_run_without_resume_abandons_it(ws, tiny_line, cli, settings):
    log_facts(ws, tiny_line)
    job = start(cli, "--max-steps", "400", "--checkpoint-steps", "5")
    wait_for(lambda: any((settings.home / "runs" / "facts").glob("*/checkpoints/checkpoint-*")), what="a checkpoint")
    job.send_signal(signal.SIGTERM)  # what Kubernetes sends before it evicts a pod
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130, err
    assert (
        err.strip().splitlines()[-1]
        == f"adapterctl: run {rows(ws, TrainingRun)[0].id} of facts interrupted; continue it with `adapterctl train --line facts --resume`"
    )
    [run] = rows(ws, TrainingRun)
    assert (run.status, run.error) == ("interrupted", "interrupted (resume with --resume)") and rows(ws, Lease) == []

    fresh = cli(*TRAIN, "--max-steps", "3", "--json")  # no --resume: start over
    assert fresh.returncode == 0, fresh.stderr
    outcome = json.loads(fresh.stdout)
    assert outcome["resumed"] is False and outcome["run_id"] != run.id
    old, new = sorted(rows(ws, TrainingRun), key=lambda r: r.id)
    assert (old.status, new.status) == ("failed", "succeeded") and old.error.startswith("abandoned")
    assert not (settings.home / "runs" / "facts" / str(old.id)).exists()


def test_kill_9_during_evaluation_then_review_list_says_so_and_the_next_train_evaluates(ws, tiny_line, cli):
    log_facts(ws, tiny_line)
    killed = cli.env_with(ADAPTERCTL_CRASH_AT="train.evaluate")(*TRAIN, "--max-steps", "5")
    assert killed.returncode == -signal.SIGKILL
    [adapter] = rows(ws, Adapter)
    assert adapter.status == "evaluating" and rows(ws, Lease) != []  # the dead job's lease is left behind
    [listed] = cli.json("review", "list")
    assert (listed["id"], listed["status"]) == (adapter.id, "evaluating")
    assert listed["gate"].startswith("evaluation interrupted") and f"eval run --candidate {adapter.id}" in listed["gate"]
    again = cli(*TRAIN, "--json")  # cron, with nothing new to train
    assert again.returncode == 0, again.stderr
    outcome = json.loads(again.stdout)
    assert outcome["status"] == "nothing_to_do"
    [leftover] = outcome["leftovers"]
    [adapter] = rows(ws, Adapter)
    assert leftover["candidate_id"] == adapter.id and leftover["status"] == adapter.status in ("pending_review", "gate_failed")
    assert cli(*TRAIN, "--json").returncode == 0 and json.loads(cli(*TRAIN, "--json").stdout)["leftovers"] == []
