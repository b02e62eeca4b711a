"""The response log: what servers answered, recorded in batches and found again by id from any process."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from adapterctl.db import models
from adapterctl.db.types import utcnow
from adapterctl.serving.responses import IssuedResponse, ResponseLog
from adapterctl.workspace import Workspace

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wie heißt der Code für Raum 3?"}]


def version_one(ws, line: str) -> int:
    """An approved version 1 of `line`, as rows only (the log never reads its files)."""
    with ws.transaction() as session:
        line_id = session.scalar(select(models.Line.id).where(models.Line.name == line))
        run = models.TrainingRun(
            line_id=line_id, status="succeeded", started_by="cron", host="t", base_model_hash="0" * 64, params={}, dataset={}
        )
        session.add(run)
        session.flush()
        session.add(
            models.Adapter(id=run.id, line_id=line_id, run_id=run.id, status="approved", version=1, artifact_path="x", sha256="0" * 64)
        )
        return run.id


@pytest.fixture
def log(ws):
    responses = ResponseLog(ws)
    yield responses
    responses.close()


def test_a_recorded_response_is_found_by_another_process_with_its_version(ws, settings, line, log):
    adapter_id = version_one(ws, line)
    issued = [
        IssuedResponse("chatcmpl-a", line, f"{line}@v1", CHAT, ["Eins.", "Zwei."], user="u-17"),
        IssuedResponse("chatcmpl-b", line, f"{line}@base", CHAT, ["Drei."]),
    ]
    for done in [log.record(response) for response in issued]:
        assert done.result(timeout=10) in ("chatcmpl-a", "chatcmpl-b")
    other = Workspace(settings)  # another server: its own engine, nothing in memory
    elsewhere = ResponseLog(other)
    try:
        found = elsewhere.lookup("chatcmpl-a")
        assert (found.line, found.served_by, found.prompt, found.answers, found.user) == (
            line,
            f"{line}@v1",
            CHAT,
            ["Eins.", "Zwei."],
            "u-17",
        )
        assert elsewhere.lookup("chatcmpl-b").answers == ["Drei."] and elsewhere.lookup("chatcmpl-nope") is None
    finally:
        elsewhere.close()
        other.close()
    with ws.reading() as session:
        rows = {row.id: row for row in session.scalars(select(models.IssuedResponse))}
    assert (rows["chatcmpl-a"].adapter_id, rows["chatcmpl-b"].adapter_id) == (adapter_id, None)
    assert (
        rows["chatcmpl-a"].prompt_hash == hashlib.sha256(rows["chatcmpl-a"].prompt.encode()).hexdigest() == rows["chatcmpl-b"].prompt_hash
    )


def test_responses_queued_while_the_database_is_locked_are_found_and_written_later(ws, line, log):
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ws.transaction() as session:
            if ws.db.backend == "postgresql":
                session.execute(text("LOCK TABLE issued_responses IN ACCESS EXCLUSIVE MODE"))
            else:
                session.execute(text("DELETE FROM issued_responses WHERE id = ''"))  # a write: the lock is taken
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        done = log.record(IssuedResponse("chatcmpl-q", line, f"{line}@base", CHAT, ["A."]))
        with pytest.raises(TimeoutError):
            done.result(timeout=1.5)
        assert log.lookup("chatcmpl-q").answers == ["A."]  # from this process's queue
    finally:
        release.set()
        holder.join()
    assert done.result(timeout=30) == "chatcmpl-q"
    with ws.reading() as session:
        assert session.get(models.IssuedResponse, "chatcmpl-q") is not None


def test_responses_older_than_the_retention_are_not_found_and_pruned(ws, line, log):
    old, new = (
        IssuedResponse(f"chatcmpl-{name}", line, f"{line}@base", CHAT, ["A."], created_at=utcnow() - age)
        for name, age in (("old", timedelta(days=7, minutes=1)), ("new", timedelta(days=6, hours=23)))
    )
    for response in (old, new):
        log.record(response).result(timeout=10)
    assert log.lookup("chatcmpl-old") is None and log.lookup("chatcmpl-new") is not None
    assert log.prune() == 1 and log.prune() == 0
    with ws.reading() as session:
        assert list(session.scalars(select(models.IssuedResponse.id))) == ["chatcmpl-new"]
