"""The audit log is a hash chain: verify catches an edited, a deleted or a truncated event."""

from __future__ import annotations

import threading

from sqlalchemy import delete, select, update

from adapterctl import audit
from adapterctl.db.models import AuditEvent
from adapterctl.workspace import Workspace


def append(ws: Workspace, count: int, action: str = "test.event") -> None:
    for i in range(count):
        with ws.transaction() as session:
            audit.record(session, actor="tester", action=action, subject=f"thing:{i}", payload={"i": i, "text": "grüße"})


def verify(ws: Workspace, **kwargs) -> audit.Verification:
    with ws.transaction() as session:
        return audit.verify(session, **kwargs)


def test_chain_verifies_and_links_each_event_to_the_one_before(ws):
    append(ws, 5)
    result = verify(ws)
    assert result.ok and result.events == 5
    with ws.transaction() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert events[0].prev_hash == audit.GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(events, events[1:]))
    assert result.head == events[-1].hash


def test_edited_payload_is_detected(ws):
    append(ws, 4)
    with ws.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(payload='{"i":99}'))
    result = verify(ws)
    assert not result.ok and result.broken_seq == 2 and "modified" in result.reason


def test_edit_with_recomputed_hash_breaks_the_next_link(ws):
    append(ws, 4)
    with ws.transaction() as session:
        event = session.get(AuditEvent, 2)
        event.actor = "mallory"
        event.hash = audit._hash_of(event)
    result = verify(ws)
    assert not result.ok and result.broken_seq == 3


def test_deleted_event_is_detected(ws):
    append(ws, 4)
    with ws.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    result = verify(ws)
    assert not result.ok and result.broken_seq == 2 and "deleted" in result.reason


def test_deleting_the_newest_events_is_caught_with_an_anchor(ws):
    append(ws, 3)
    anchor = verify(ws).head
    with ws.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 3))
    assert verify(ws).ok  # a chain cut at its end is still a chain ...
    result = verify(ws, anchor=anchor)
    assert not result.ok and "anchor" in result.reason  # ... but it no longer holds the head kept elsewhere


def test_concurrent_writers_keep_one_chain(ws, settings):
    def writer():
        with Workspace(settings) as own:
            append(own, 15, action="test.concurrent")

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(ws)
    assert result.ok and result.events == 45


def test_list_filters_by_action_prefix_and_subject(ws):
    append(ws, 2, action="feedback.log")
    append(ws, 1, action="line.create")
    with ws.transaction() as session:
        assert len(audit.list_events(session, action="feedback")) == 2
        assert [e.subject for e in audit.list_events(session, subject="thing:0")] == ["thing:0", "thing:0"]
        assert [e.seq for e in audit.list_events(session, limit=2)] == [3, 2]
