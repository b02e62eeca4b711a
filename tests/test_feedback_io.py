"""`feedback import` is all or nothing, lets other writers in, names bad lines, counts duplicates; export round-trips."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select, text

from adapterctl import audit, feedback, feedback_io, lines
from adapterctl.db import engine
from adapterctl.db.models import AuditEvent, Feedback
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.feedback import FeedbackQuery
from adapterctl.workspace import Workspace


def record(i: int, **extra) -> dict:
    return {"prompt": f"question {i}", "response": f"answer {i}", "rating": 1, **extra}


def write_jsonl(path, items) -> None:
    with path.open("wb") as handle:
        for item in items:
            handle.write(item if isinstance(item, bytes) else (json.dumps(item, ensure_ascii=False) + "\n").encode())


def counts(ws) -> tuple[int, int]:
    with ws.transaction() as session:
        return (
            session.scalar(select(func.count()).select_from(Feedback)),
            session.scalar(select(func.count()).select_from(AuditEvent)),
        )


def run_import(ws, path, **kwargs) -> feedback_io.ImportReport:
    return feedback_io.import_feedback(ws.db, path, actor="tester", **kwargs)


def test_import_stores_every_record_and_one_audit_event(ws, line, tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [record(i, source=f"user-{i % 3}", tags=["t"]) for i in range(12)])
    before = counts(ws)
    report = run_import(ws, path, line=line, chunk_size=5)  # several chunks
    assert (report.lines_read, report.imported, report.duplicates, report.skipped) == (12, 12, 0, 0)
    assert counts(ws) == (before[0] + 12, before[1] + 1)


def test_a_bad_line_in_the_middle_writes_nothing_and_every_bad_line_is_named(ws, line, tmp_path):
    path = tmp_path / "in.jsonl"
    items = [record(i) for i in range(30)]
    items[12] = record(12, rating=7)
    items[20] = b'{"prompt": "unterminated\n'
    items[25] = b'{"prompt": "caf\xe9", "response": "r", "rating": 1}\n'
    write_jsonl(path, items)
    before = counts(ws)
    with pytest.raises(InvalidInput) as caught:
        run_import(ws, path, line=line, chunk_size=4)  # chunks before line 13 were already written
    message = str(caught.value)
    assert message.startswith("3 invalid line(s), nothing imported")
    assert f"{path}:13: rating 7 is out of range [-1, 1]" in message
    assert f"{path}:21: not valid JSON" in message
    assert f"{path}:26: not valid UTF-8" in message
    assert counts(ws) == before


def test_skip_invalid_imports_the_rest_and_reports_the_skipped(ws, line, tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [record(1), {"prompt": "p", "response": "r"}, b"\n", record(2)])
    report = run_import(ws, path, line=line, skip_invalid=True)
    assert (report.imported, report.skipped) == (2, 1)
    assert report.errors == [f"{path}:2: feedback needs at least one of rating, correction, or chosen+rejected"]


def test_duplicates_within_the_file_and_against_stored_records_are_counted(ws, line, tmp_path):
    ws.log_feedback(line=line, **record(0))
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [record(0), record(1), record(1, source="someone-else"), record(2), record(1)])
    report = run_import(ws, path, line=line, chunk_size=2)
    assert (report.imported, report.duplicates) == (2, 3)
    with ws.transaction() as session:
        rows = session.execute(select(Feedback.response, Feedback.times_seen, Feedback.source).order_by(Feedback.id)).all()
    # ids follow the file; a record seen again keeps its first occurrence's metadata
    assert [tuple(row) for row in rows] == [("answer 0", 2, None), ("answer 1", 3, None), ("answer 2", 1, None)]


def test_others_write_while_an_import_stages_and_see_its_records_only_once_published(ws, line, settings, tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [record(i) for i in range(5000)])
    staged, resume, outcome = threading.Event(), threading.Event(), {}
    reads = []

    def progress(done: int) -> None:  # called as each batch of lines is read, so the second call comes after the first is staged
        reads.append(done)
        if len(reads) == 2:
            staged.set()
            resume.wait(120)

    def run() -> None:
        try:
            outcome["report"] = run_import(ws, path, line=line, chunk_size=500, progress=progress)
        except BaseException as exc:
            outcome["error"] = exc

    importer = threading.Thread(target=run)
    importer.start()
    try:
        assert staged.wait(120), outcome
        # An import holding SQLite's write lock fails these writes after 2 s instead of the usual 30.
        monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_S", 2)
        with Workspace(settings) as other:
            other.log_feedback(line=line, prompt="logged during the import", response="r", rating=1)
            with other.transaction() as session:  # what promote does: lock the line, append to the audit chain
                if other.db.backend == "postgresql":
                    session.execute(text("SET LOCAL lock_timeout = '2s'"))
                lines.lock_line(session, lines.line_id_of(session, line))
                audit.record(session, actor="tester", action="adapter.promote", subject=f"line:{line}")
            with other.reading() as session:
                assert session.scalar(select(func.count()).select_from(Feedback)) == 1
    finally:
        resume.set()
        importer.join(120)
    assert "error" not in outcome, outcome
    assert (outcome["report"].imported, outcome["report"].duplicates) == (5000, 0)
    with ws.reading() as session:
        responses = session.scalars(select(Feedback.response).order_by(Feedback.id)).all()
        assert audit.verify(session).ok
    assert responses == ["r"] + [f"answer {i}" for i in range(5000)]  # ids follow the file


def _import_through_a_pipe(command: list[str], env: dict, fifo, data: bytes, *, kill: bool) -> subprocess.CompletedProcess:
    """Run the CLI import reading `fifo`, write `data` into it, then kill the import or let it finish."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while True:  # the write end opens once the import has opened the read end
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or process.poll() is not None:
                    raise AssertionError(f"the import never opened {fifo}: {process.communicate()}") from None
                time.sleep(0.05)
        os.set_blocking(fd, True)
        try:
            assert os.write(fd, data) == len(data)
            if kill:
                process.kill()
        finally:
            os.close(fd)
        out, err = process.communicate(timeout=120)
        return subprocess.CompletedProcess(command, process.returncode, out, err)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_an_import_killed_while_staging_leaves_nothing_and_a_rerun_succeeds(ready, tmp_path):
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    data = b"".join((json.dumps(record(i)) + "\n").encode() for i in range(30_000))
    command = [sys.executable, "-m", "adapterctl", "feedback", "import", str(fifo), "--line", "support-bot", "--json"]
    # A blocking write returns once the import has read all but what the pipe holds (64 KiB, about
    # 1,000 lines): it has staged and committed more than 20,000 records and waits for the rest.
    killed = _import_through_a_pipe(command, ready.env, fifo, data, kill=True)
    assert killed.returncode == -9
    assert ready.json("feedback", "list")["total"] == 0
    assert "feedback.import" not in [event["action"] for event in ready.json("audit", "log")]

    rerun = _import_through_a_pipe(command, ready.env, fifo, data, kill=False)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["imported"] == 30_000
    assert ready.json("feedback", "list")["total"] == 30_000


def test_a_large_import_leaves_the_planner_statistics_current_on_postgresql(ws, line, tmp_path, monkeypatch):
    if ws.db.backend != "postgresql":
        pytest.skip("SQLite keeps no statistics unless asked (ANALYZE), and plans these queries without")
    monkeypatch.setattr(feedback_io, "ANALYZE_FROM_ROWS", 500)  # a large import, in small
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [record(i) for i in range(600)])
    run_import(ws, path, line=line)
    with ws.reading() as session:  # an analyze of a small table reads every row: the count is exact
        assert session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'feedback'")) == 600


def test_line_comes_from_the_record_or_the_option(ws, line, tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [{**record(1), "line": line}, record(2)])
    with pytest.raises(InvalidInput, match=r":2: line is missing"):
        run_import(ws, path)
    write_jsonl(path, [{**record(1), "line": "other"}])
    with pytest.raises(InvalidInput, match=r":1: line 'other' differs from --line"):
        run_import(ws, path, line=line)
    with pytest.raises(InvalidInput, match=r":1: line 'other' does not exist"):
        run_import(ws, path)
    with pytest.raises(NotFound):
        run_import(ws, path, line="nope")


def test_a_role_the_lines_chat_template_cannot_render_is_an_invalid_line(ws, tiny_line, tmp_path):
    tool = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Asking."}, {"role": "tool", "content": "snow"}]
    path = tmp_path / "in.jsonl"
    write_jsonl(path, [record(1), record(2, prompt=tool), record(3, prompt=[{"role": "system", "content": "terse"}, *tool[:1]])])
    before = counts(ws)
    with pytest.raises(InvalidInput) as caught:
        run_import(ws, path, line=tiny_line)
    assert str(caught.value) == (
        f"1 invalid line(s), nothing imported:\n{path}:2: prompt[2].role 'tool' is not rendered by "
        "base model tiny's chat template (it renders system, user, assistant)"
    )
    assert counts(ws) == before
    report = run_import(ws, path, line=tiny_line, skip_invalid=True)
    assert (report.imported, report.skipped) == (2, 1)


def test_parallel_and_in_process_parsing_agree(ws, line, tmp_path):
    path = tmp_path / "in.jsonl"
    items = [record(i, tags=["é", "x"]) for i in range(2500)] + [record(7), {"prompt": ""}]
    write_jsonl(path, items)
    with pytest.raises(InvalidInput) as in_process:
        run_import(ws, path, line=line, workers=0)
    with pytest.raises(InvalidInput) as in_workers:
        run_import(ws, path, line=line, workers=2)
    assert str(in_process.value) == str(in_workers.value) and ":2502: " in str(in_process.value)
    path.write_text("".join(json.dumps(item) + "\n" for item in items[:-1]))
    report = run_import(ws, path, line=line, workers=2)
    assert (report.imported, report.duplicates) == (2500, 1)


def test_missing_file_is_invalid_input(ws, line, tmp_path):
    with pytest.raises(InvalidInput, match="cannot read"):
        run_import(ws, tmp_path / "nope.jsonl", line=line)


def test_export_then_import_round_trips(ws, line, tmp_path, settings):
    ws.log_feedback(
        line=line,
        prompt=[{"role": "system", "content": "terse"}, {"role": "user", "content": "2+2? ünï"}],
        response="5",
        correction="4",
        source="u1",
        tags=["math"],
        adapter_version="v2",
        request_id="r-1",
    )
    ws.log_feedback(line=line, prompt="p", response="r", chosen="a", rejected="b")
    ws.log_feedback(line=line, prompt="tab\there\nnew line", response='back\\slash \\N "quoted" \r', rating=-1)
    with ws.transaction() as session:
        first = io.StringIO()
        feedback_io.export_feedback(session, first, FeedbackQuery())
        originals = sorted(r.content_hash for r in feedback.list_feedback(session, FeedbackQuery())[0])
        session.execute(Feedback.__table__.delete())
    path = tmp_path / "export.jsonl"
    path.write_text(first.getvalue(), encoding="utf-8")
    assert run_import(ws, path).imported == 3
    with ws.transaction() as session:
        second = io.StringIO()
        feedback_io.export_feedback(session, second, FeedbackQuery())
        assert sorted(r.content_hash for r in feedback.list_feedback(session, FeedbackQuery())[0]) == originals
    assert second.getvalue() == first.getvalue()
