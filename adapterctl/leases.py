"""Leases: locks kept in the database that expire when their holder stops renewing them.

`adapterctl train` holds `train:<line>` while it runs, so overlapping cron runs (on one host or
many) never train the same line twice, and a killed job blocks the line only until its lease expires.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from adapterctl.db.engine import Database
from adapterctl.db.models import Lease
from adapterctl.db.types import rowcount, table_of, utcnow
from adapterctl.errors import LockHeld

DEFAULT_TTL = timedelta(seconds=60)


def new_holder() -> str:
    """Who holds a lease: host, process and a random part (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@cache
def _take_statement(dialect: str):
    """INSERT the lease, or take it over when it has expired; a live lease is left alone."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table_of(Lease))
    return statement.on_conflict_do_update(
        index_elements=[Lease.name],
        set_={
            "holder": statement.excluded.holder,
            "acquired_at": statement.excluded.acquired_at,
            "expires_at": statement.excluded.expires_at,
        },
        where=Lease.expires_at < statement.excluded.acquired_at,
    )


def acquire(session: Session, name: str, holder: str, ttl: timedelta = DEFAULT_TTL) -> datetime:
    """Take the lease or raise LockHeld naming who holds it; return when it expires unless renewed."""
    now = utcnow()
    values = {"name": name, "holder": holder, "acquired_at": now, "expires_at": now + ttl}
    session.execute(_take_statement(session.get_bind().dialect.name), values)
    current = session.execute(select(Lease.holder, Lease.expires_at).where(Lease.name == name)).one()
    if current.holder != holder and _died_on_this_host(current.holder):
        # A killed job on this host need not block the line until its lease expires.
        session.execute(update(Lease).where(Lease.name == name, Lease.holder == current.holder).values(**values))
        current = session.execute(select(Lease.holder, Lease.expires_at).where(Lease.name == name)).one()
    if current.holder != holder:
        raise LockHeld(f"{name} is held by {current.holder} until {current.expires_at:%Y-%m-%d %H:%M:%S} UTC; try again later")
    return current.expires_at


def live_holder(session: Session, name: str) -> str | None:
    """Who holds the lease now, or None when nobody does (it expired, or its process on this host died)."""
    holder = session.scalar(select(Lease.holder).where(Lease.name == name, Lease.expires_at > utcnow()))
    return None if holder is None or _died_on_this_host(holder) else holder


def release_abandoned(session: Session, name: str) -> bool:
    """Release the lease if it expired or its holder died on this host, never a live holder's; True when released."""
    holder = session.scalar(select(Lease.holder).where(Lease.name == name))
    abandoned = Lease.expires_at < utcnow()
    if holder is not None and _died_on_this_host(holder):
        abandoned = or_(abandoned, Lease.holder == holder)  # taken over meanwhile, it has another holder and stays
    return rowcount(session.execute(delete(Lease).where(Lease.name == name, abandoned))) == 1


def _died_on_this_host(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def renew(session: Session, name: str, holder: str, ttl: timedelta = DEFAULT_TTL) -> bool:
    """Extend the lease; False when it was lost (expired and taken by another holder)."""
    result = session.execute(update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=utcnow() + ttl))
    return rowcount(result) == 1


def release(session: Session, name: str, holder: str) -> None:
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


class HeldLease:
    """A lease held for the duration of a `with` block and renewed in the background meanwhile.

    `lost` becomes true when a renewal finds the lease taken: the work it protected must not be
    published then, because another holder may be doing the same work.
    """

    def __init__(self, db: Database, name: str, ttl: timedelta = DEFAULT_TTL) -> None:
        self.db = db
        self.name = name
        self.ttl = ttl
        self.holder = new_holder()
        self.lost = False
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name=f"lease {name}", daemon=True)

    def __enter__(self) -> HeldLease:
        with self.db.transaction() as session:
            acquire(session, self.name, self.holder, self.ttl)
        self._renewer.start()
        return self

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            try:
                with self.db.transaction() as session:
                    if not renew(session, self.name, self.holder, self.ttl):
                        self.lost = True
                        return
            except Exception:  # a database hiccup: try again at the next tick, before the lease expires
                continue

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._renewer.join()
        with self.db.transaction() as session:
            release(session, self.name, self.holder)
