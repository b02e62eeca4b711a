"""Following the database: run a list of refresh steps on every poll, and at once on PostgreSQL when an
activation (or a revocation) is committed (LISTEN/NOTIFY). `adapterctl serve` and `adapterctl vllm
sync` both follow activations this way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from adapterctl.workspace import Workspace

log = logging.getLogger("adapterctl.follow")


class Follower:
    """Runs refresh steps on every poll (a server: following activations, pruning old responses; `vllm
    sync`: its pass over the vLLM servers). It polls the database, and on PostgreSQL it also LISTENs, so
    that an activation wakes it at once. A step that fails is logged and tried again at the next poll."""

    def __init__(self, ws: Workspace, steps: list[Callable[[], None]], poll_s: float) -> None:
        self.ws, self.steps, self.poll_s = ws, steps, poll_s
        self.stop = threading.Event()
        self.listening = False
        self.thread = threading.Thread(target=self._run, name="adapterctl-follower", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            connection = self._listen()
        except Exception:
            log.exception("cannot LISTEN for activations; following by polling only")
            connection = None
        while not self.stop.is_set():
            for step in self.steps:
                try:
                    step()
                except Exception:
                    log.exception("%s failed; will retry", step.__name__)
            if connection is not None:
                for _ in connection.notifies(timeout=self.poll_s, stop_after=1):
                    pass
            else:
                self.stop.wait(self.poll_s)

    def _listen(self):
        if self.ws.db.backend != "postgresql":
            return None
        import psycopg

        from adapterctl.activations import CHANNEL

        url = self.ws.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connection = psycopg.connect(url, autocommit=True)
        connection.execute(f"LISTEN {CHANNEL}")
        self.listening = True
        return connection

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
