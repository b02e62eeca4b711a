"""Transactions: a write in progress never holds up a read (on SQLite only writes take the lock)."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from adapterctl import audit
from adapterctl.db.models import AuditEvent
from adapterctl.workspace import Workspace


def test_opening_a_workspace_and_reading_go_on_while_a_write_is_open(ws, settings):
    holding, reader_done = threading.Event(), threading.Event()

    def writer():
        with ws.transaction() as session:
            audit.record(session, actor="tester", action="test.hold", subject="x")
            holding.set()
            reader_done.wait(10)  # a reader that waits for the lock only gets it after this commit

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(30)
        other = Workspace(settings)  # its own connection, as another process has; checks the schema revision
        with other.reading() as session:
            seen = session.scalar(select(func.count()).select_from(AuditEvent))
        other.close()
    finally:
        reader_done.set()
        thread.join()
    assert seen == 0  # read before the writer committed: neither the open nor the read waited for it
