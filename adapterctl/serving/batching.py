"""Group commit: one thread writes what many requests queue, each batch in one transaction.

While the database is locked by other work (a long import on SQLite) or unreachable, a batch waits and
is written again; nothing is dropped until `close`. A subclass says how a batch is written (`write`)
and how its requests learn the outcome (`settle`).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from adapterctl.errors import first_line
from adapterctl.workspace import Workspace

log = logging.getLogger("adapterctl.serve")


class BatchWriter:
    RETRY_S = (0.5, 1.0, 2.0, 5.0)
    what = "records"
    """What a batch holds, for the log."""

    def __init__(self, ws: Workspace, *, max_batch: int = 512, name: str) -> None:
        self.ws, self.max_batch = ws, max_batch
        self.queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def write(self, session: Session, batch: list) -> Any:
        """Write the batch in `session`'s transaction; what it returns goes to `settle`."""
        raise NotImplementedError

    def settle(self, batch: list, result: Any = None, error: Exception | None = None) -> None:
        """Tell the batch's requests what happened: written (`result`), or failed (`error`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Write what is queued (giving up at once if the database fails) and stop."""
        self._stopping.set()
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list) -> None:
        for wait in itertools.chain(self.RETRY_S, itertools.repeat(self.RETRY_S[-1])):
            try:
                with self.ws.transaction() as session:
                    result = self.write(session, batch)
            except OperationalError as exc:  # locked or unreachable: the same batch again, later
                log.warning("writing %d %s failed (%s); retrying in %.1f s", len(batch), self.what, first_line(exc), wait)
                if self._stopping.wait(wait):
                    log.error("stopping with %d %s unwritten", len(batch), self.what)
                    return self.settle(batch, error=exc)
                continue
            except Exception as exc:  # the items themselves: every waiting request gets the error
                return self.settle(batch, error=exc)
            return self.settle(batch, result)
