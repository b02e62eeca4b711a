"""The responses servers issued, kept in the database so that feedback can name them by id.

Each chat completion a server answers goes to the table `issued_responses` (line, version, prompt and
its hash, the answers, the request's `user`, time) through a writer thread that commits whatever
arrived meanwhile in one transaction (group commit). Feedback looks the id up there, so it works on
any server sharing the database and after a restart. A response routed by a canary also records its
side (`arm`), its latency, and the rating of the feedback given on it (`rate`): the live comparison
(adapterctl.canary_watch) counts those. A request that failed on a canary's side is recorded too,
with its error and no answer. Rows are kept for `responses_retention_days`:
`lookup` ignores older ones and `prune` deletes them. Forgetting feedback deletes the responses it was
given on (`feedback.forget_feedback`), so feedback on them is refused by every server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.db import models
from adapterctl.db.types import rowcount, table_of, utcnow
from adapterctl.errors import first_line
from adapterctl.lines import line_id_of
from adapterctl.serving.batching import BatchWriter
from adapterctl.workspace import Workspace

log = logging.getLogger("adapterctl.serve")
MAX_ID_CHARS = 64
"""The longest response id the table holds; the ids servers issue (`chatcmpl-<hex>`) are 41 characters."""


@dataclass(frozen=True)
class IssuedResponse:
    """One chat completion as its server answered it."""

    id: str
    """The completion's id as the client saw it (`chatcmpl-<hex>`)."""
    line: str
    served_by: str
    """What answered: `line@vN` or `line@base`."""
    prompt: list[dict[str, str]]
    """The chat messages of the request."""
    answers: list[str]
    """The text of each choice, in order (a request may ask for several)."""
    user: str | None = None
    """The request's `user` field (OpenAI's end-user id), if it had one."""
    created_at: datetime = field(default_factory=utcnow)
    canary_id: int | None = None
    """The activation that started the canary this request was routed by, if any."""
    arm: str | None = None
    """baseline or canary: the side of that canary it landed on."""
    latency_ms: float | None = None
    error: str | None = None
    """Why the generation failed (then `answers` is empty and feedback on it is refused)."""


def prompt_text(prompt: list[dict[str, str]]) -> str:
    """The prompt as stored: canonical JSON, so that equal prompts have equal text and hash."""
    return audit.canonical_json(prompt)


def prune(session: Session, before: datetime) -> int:
    """Delete the responses issued before `before`; return how many."""
    return rowcount(session.execute(delete(models.IssuedResponse).where(models.IssuedResponse.created_at < before)))


def find(session: Session, response_id: str, since: datetime) -> IssuedResponse | None:
    """The response with this id, unless it was issued before `since` (older than the retention)."""
    row = session.execute(
        select(models.IssuedResponse, models.Line.name)
        .join(models.Line, models.Line.id == models.IssuedResponse.line_id)
        .where(models.IssuedResponse.id == response_id, models.IssuedResponse.created_at >= since, models.IssuedResponse.error.is_(None))
    ).first()
    if row is None:
        return None
    issued, line = row
    return IssuedResponse(
        issued.id, line, issued.served_by, json.loads(issued.prompt), json.loads(issued.answers), issued.user, issued.created_at
    )


def rate(session: Session, outcomes: list[tuple[str, float | None, bool]]) -> None:
    """Note on each response (id, rating, corrected) the feedback just given on it; the latest counts."""
    if outcomes:
        table = table_of(models.IssuedResponse)
        session.execute(
            update(table)
            .where(table.c.id == bindparam("response_id"))
            .values(rating=bindparam("new_rating"), corrected=bindparam("new_corrected")),
            [{"response_id": id_, "new_rating": rating, "new_corrected": corrected} for id_, rating, corrected in outcomes],
        )


class ResponseLog(BatchWriter):
    """Records issued responses in batches (group commit, `BatchWriter`) and finds them again by id;
    while a batch waits for the database, its responses are found in this process."""

    what = "issued responses"

    def __init__(self, ws: Workspace, *, retention_days: float | None = None, max_batch: int = 512) -> None:
        self.retention = timedelta(days=retention_days if retention_days is not None else ws.settings.responses_retention_days)
        self._lock = threading.Lock()
        self._pending: dict[str, IssuedResponse] = {}
        self._ids: dict[str, tuple[int, int | None]] = {}  # served_by -> (line id, adapter id); a version's adapter never changes
        super().__init__(ws, max_batch=max_batch, name="adapterctl-response-log")

    def record(self, response: IssuedResponse) -> Future:
        """Queue a response; the future resolves (to its id) once it is durable, or fails with the reason."""
        done: Future = Future()
        if self._stopping.is_set():
            done.set_exception(RuntimeError("the response log is closed"))
            return done
        with self._lock:
            self._pending[response.id] = response
        self.queue.put((response, done))
        return done

    def lookup(self, response_id: str) -> IssuedResponse | None:
        """The response with this id: still queued in this process, or in the database within the retention."""
        with self._lock:
            if (queued := self._pending.get(response_id)) is not None:
                return queued if queued.error is None else None
        with self.ws.reading() as session:
            return find(session, response_id, utcnow() - self.retention)

    def prune(self) -> int:
        """Delete the responses older than the retention; return how many."""
        with self.ws.transaction() as session:
            return prune(session, utcnow() - self.retention)

    def write(self, session: Session, batch: list[tuple[IssuedResponse, Future]]) -> None:
        session.execute(insert(models.IssuedResponse), [self._row(session, response) for response, _ in batch])

    def _row(self, session: Session, response: IssuedResponse) -> dict:
        if response.served_by not in self._ids:
            line_id = line_id_of(session, response.line)
            label = response.served_by.rpartition("@")[2]
            adapter_id = (
                None
                if label == "base"
                else session.scalar(
                    select(models.Adapter.id).where(
                        models.Adapter.line_id == line_id, models.Adapter.version == int(label.removeprefix("v"))
                    )
                )
            )
            if label != "base" and adapter_id is None:
                raise ValueError(f"{response.served_by} names no version of line {response.line}")
            self._ids[response.served_by] = (line_id, adapter_id)
        line_id, adapter_id = self._ids[response.served_by]
        text = prompt_text(response.prompt)
        return {
            "id": response.id,
            "line_id": line_id,
            "adapter_id": adapter_id,
            "served_by": response.served_by,
            "prompt": text,
            "prompt_hash": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "answers": json.dumps(response.answers, ensure_ascii=False),
            "user": response.user,
            "created_at": response.created_at,
            "canary_id": response.canary_id,
            "arm": response.arm,
            "latency_ms": response.latency_ms,
            "error": response.error,
        }

    def settle(self, batch: list[tuple[IssuedResponse, Future]], result: None = None, error: Exception | None = None) -> None:
        if error is not None:
            log.error("recording %d issued responses failed (%s): feedback cannot name them", len(batch), first_line(error))
        with self._lock:
            for response, _ in batch:
                self._pending.pop(response.id, None)
        for response, done in batch:
            done.set_exception(error) if error is not None else done.set_result(response.id)
