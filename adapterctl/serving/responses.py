"""The responses a server issued, remembered so that feedback can name them by id.

They are kept in this process's memory, bounded (the oldest are dropped first). Forgetting feedback
purges the responses it was given on: each server asks `forgotten_since` on every poll, so a record
that was forgotten can no longer be stored again through its response id.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapterctl.db.models import AuditEvent, Feedback

REMEMBERED_RESPONSES = 100_000
_FORGET = "feedback.forget"


class ResponseStore:
    def __init__(self, capacity: int = REMEMBERED_RESPONSES) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, response_id: str, issued: dict[str, Any]) -> None:
        """Keep what a response was: {line, served_by, prompt, response}."""
        with self._lock:
            self._items[response_id] = issued
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get(response_id)

    def purge(self, response_ids: Iterable[str]) -> int:
        """Drop these responses; return how many were held."""
        with self._lock:
            return sum(self._items.pop(response_id, None) is not None for response_id in response_ids)


def newest_forget(session: Session) -> int:
    """The sequence number of the newest `feedback forget` in the audit log (0: none yet)."""
    return session.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.action == _FORGET)) or 0


def forgotten_since(session: Session, after_seq: int) -> tuple[int, set[str]]:
    """The response ids of feedback forgotten after audit event `after_seq`, and the newest forget's seq.

    A forget's audit event lists up to 1000 record ids; when it forgot more, every forgotten response
    id is returned (a rare, larger query).
    """
    events = session.execute(select(AuditEvent.seq, AuditEvent.payload)
                             .where(AuditEvent.action == _FORGET, AuditEvent.seq > after_seq).order_by(AuditEvent.seq)).all()
    if not events:
        return after_seq, set()
    payloads = [json.loads(event.payload) for event in events]
    ids = [i for payload in payloads for i in payload.get("ids", [])]
    listed = all(len(payload.get("ids", [])) >= payload.get("count", 0) for payload in payloads) and len(ids) <= 1000
    query = select(Feedback.request_id).where(Feedback.status == "forgotten", Feedback.request_id.is_not(None))
    if listed:
        query = query.where(Feedback.id.in_(ids))
    return events[-1].seq, set(session.scalars(query))
