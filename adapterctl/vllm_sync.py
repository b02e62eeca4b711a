"""`adapterctl vllm sync`: vLLM servers hold each line's active version, by name, as the database says.

    step():  the database: each line's active version, the versions still servable
             ──> each server's /v1/models: what it holds
             ──> load what is missing (the active version, and any kept one) under `line@vN`, from an
                 export verified against the sha256 the database recorded
             ──> unload a revoked version at once; a replaced one after the grace period, so that
                 requests in flight on it finish
             ──> delete the exports of versions that can no longer be served

A name is never loaded with other weights: `line@vN` is one version's bytes, and a new version is a new
name. A server that restarts (it holds nothing) is brought back to the current state at the next step;
one that does not answer is retried at each step. Adapters of other lines, and names that are not
`line@vN`, are left alone: several syncs can share a fleet, one per set of lines.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import activations, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import Adapter, Line
from adapterctl.errors import AdapterctlError, InvalidInput
from adapterctl.lines import get_line
from adapterctl.serving.runtime import SERVABLE
from adapterctl.serving.vllm_client import Refused, VllmServer
from adapterctl.workspace import Workspace

DEFAULT_GRACE_S = 30.0
MAX_PARALLEL = 16
"""Servers synced at once."""
VERSION_NAME = re.compile(r"(?P<line>.+)@v(?P<version>[1-9][0-9]*)")


@dataclass(frozen=True)
class Version:
    name: str
    """`line@vN`: the name it is loaded under."""
    artifact_path: str
    sha256: str


@dataclass
class Plan:
    """What the database says, for the lines synced."""

    active: dict[str, Version | None]
    """Each line's active version (None: the line serves the base model)."""
    servable: dict[str, Version]
    """Every version of those lines that may be served (approved, not revoked), by name."""
    revoked: set[str]
    canaries: dict[str, Version] = field(default_factory=dict)
    """The version of each line's running canary: loaded beside the active one."""

    def wanted(self, keep: set[str]) -> dict[str, Version]:
        kept = {name: self.servable[name] for name in keep if name in self.servable}
        canaries = {v.name: v for v in self.canaries.values()}
        return {**kept, **canaries, **{v.name: v for v in self.active.values() if v is not None}}


def read_plan(session: Session, lines: list[str]) -> Plan:
    """What the database says the lines may serve now (the vLLM gateway follows the same)."""
    ids = {get_line(session, name).id: name for name in lines}
    adapters = list(session.scalars(select(Adapter).where(Adapter.line_id.in_(ids), Adapter.version.is_not(None))))
    servable = {
        f"{ids[a.line_id]}@v{a.version}": Version(f"{ids[a.line_id]}@v{a.version}", a.artifact_path, a.sha256)
        for a in adapters
        if a.status in SERVABLE
    }
    active, canaries = {}, {}
    for line_id, name in ids.items():
        current = activations.current(session, line_id)
        active[name] = servable.get(f"{name}@{registry.version_name(current.adapter)}") if current and current.adapter else None
        if current and current.canary_adapter and (canary := servable.get(f"{name}@{registry.version_name(current.canary_adapter)}")):
            canaries[name] = canary
    return Plan(active, servable, {f"{ids[a.line_id]}@v{a.version}" for a in adapters if a.status == "revoked"}, canaries)


@dataclass
class Event:
    server: str
    action: str
    """load, unload, unreachable, reachable or failed."""
    name: str | None = None
    reason: str = ""
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))

    def __str__(self) -> str:
        return f"{self.server}: {self.action}{' ' + self.name if self.name else ''}{f' ({self.reason})' if self.reason else ''}"


@dataclass
class ServerState:
    url: str
    up: bool | None = None
    """None until the first step."""
    base: str | None = None
    holds: list[str] = field(default_factory=list)
    """The `line@vN` of the synced lines it holds."""
    error: str | None = None
    loads: int = 0
    unloads: int = 0
    failures: int = 0


class Sync:
    def __init__(
        self,
        ws: Workspace,
        servers: list[VllmServer],
        lines: list[str],
        *,
        export_dir: Path | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        keep: Sequence[str] = (),
    ) -> None:
        if not servers:
            raise InvalidInput("name at least one vLLM server (--url)")
        if grace_s < 0:
            raise InvalidInput("--grace must be 0 seconds or more")
        self.ws, self.servers, self.grace_s = ws, servers, grace_s
        self.store = ArtifactStore(ws.settings.artifacts_dir)
        self.export_dir = Path(export_dir or ws.settings.home / "vllm-exports").absolute()
        with ws.reading() as session:
            rows = [get_line(session, name) for name in lines] if lines else list(session.scalars(select(Line).order_by(Line.name)))
            if not rows:
                raise InvalidInput("no lines to sync; create one with `adapterctl line create`")
            self.lines = [row.name for row in rows]
        self.keep = set(keep)
        for name in self.keep:
            match = VERSION_NAME.fullmatch(name)
            if not match or match["line"] not in self.lines:
                raise InvalidInput(f"--keep {name!r} must be LINE@vN of a synced line ({', '.join(self.lines)})")
        self.state = {server.url: ServerState(server.url) for server in servers}
        self._retiring: dict[tuple[str, str], float] = {}  # (server, name) -> when its grace period ends
        self._exporting = threading.Lock()
        self._failures: dict[tuple[str, str], str] = {}  # (server, name) -> the last error reported

    def plan(self) -> Plan:
        with self.ws.reading() as session:
            return read_plan(session, self.lines)

    def step(self, *, act: bool = True) -> list[Event]:
        """One pass over every server; `act=False` only reads what each holds (`vllm status`)."""
        from concurrent.futures import ThreadPoolExecutor

        plan = self.plan()
        with ThreadPoolExecutor(max_workers=min(len(self.servers), MAX_PARALLEL)) as pool:  # servers load in parallel
            events = [event for found in pool.map(lambda server: self._sync(server, plan, act), self.servers) for event in found]
        if act:
            self._remove_unservable_exports(plan)
        return events

    def in_step(self, plan: Plan) -> dict[str, dict[str, bool]]:
        """Per server and line: whether it holds the line's active version (the base model: always) and its canary's."""

        def holds(state: ServerState, line: str, version: Version | None) -> bool:
            canary = plan.canaries.get(line)
            return state.up is True and (version is None or version.name in state.holds) and (canary is None or canary.name in state.holds)

        return {url: {line: holds(state, line, version) for line, version in plan.active.items()} for url, state in self.state.items()}

    def _sync(self, server: VllmServer, plan: Plan, act: bool) -> list[Event]:
        state, events = self.state[server.url], []
        try:
            held = server.holdings()
        except AdapterctlError as exc:
            if state.up is not False:
                events.append(Event(server.url, "unreachable", reason=str(exc)))
            state.up, state.error = False, str(exc)
            return events
        if state.up is False:
            events.append(Event(server.url, "reachable"))
        state.up, state.error, state.base = True, None, held.base
        holds = {name: root for name, root in held.adapters.items() if (m := VERSION_NAME.fullmatch(name)) and m["line"] in self.lines}
        names = set(holds)
        if act:
            names = self._load_missing(server, plan, set(self._replace_foreign(server, holds, events)), events)
            names = self._unload_unwanted(server, plan, names, events)
        state.holds = sorted(names)
        return events

    def _replace_foreign(self, server: VllmServer, holds: dict[str, str], events: list[Event]) -> dict[str, str]:
        """A `line@vN` loaded from elsewhere than its verified export may be other bytes: unload it (it is loaded again, from the export)."""
        for name, root in sorted(holds.items()):
            if root and root != str(self.export_dir / name):
                try:
                    server.unload(name)
                except AdapterctlError as exc:
                    self._failed(server, name, exc, events)
                    continue
                self.state[server.url].unloads += 1
                del holds[name]
                events.append(Event(server.url, "unload", name, f"loaded from {root}, not from its verified export"))
        return holds

    def _load_missing(self, server: VllmServer, plan: Plan, holds: set[str], events: list[Event]) -> set[str]:
        state = self.state[server.url]
        for name, version in sorted(plan.wanted(self.keep).items()):
            self._retiring.pop((server.url, name), None)  # active (again): no longer retiring
            if name in holds:
                continue
            try:
                server.load(name, str(self.export(version)))
            except AdapterctlError as exc:
                if not (isinstance(exc, Refused) and "already" in str(exc)):  # "already loaded" (by another sync): it holds it
                    self._failed(server, name, exc, events)
                    continue
            self._failures.pop((server.url, name), None)
            state.loads += 1
            holds.add(name)
            events.append(
                Event(
                    server.url,
                    "load",
                    name,
                    "active" if version in plan.active.values() else "canary" if version in plan.canaries.values() else "kept",
                )
            )
        return holds

    def _unload_unwanted(self, server: VllmServer, plan: Plan, holds: set[str], events: list[Event]) -> set[str]:
        state, wanted, now = self.state[server.url], plan.wanted(self.keep), time.monotonic()
        for name in sorted(holds - set(wanted)):
            if name in plan.servable:
                ends = self._retiring.setdefault((server.url, name), now + self.grace_s)
                if now < ends:
                    continue
                reason = f"replaced {self.grace_s:g} s ago"
            else:
                reason = "revoked" if name in plan.revoked else "no longer servable"
            try:
                server.unload(name)
            except AdapterctlError as exc:
                if not (isinstance(exc, Refused) and exc.status == 404):  # gone already (a restart): fine
                    self._failed(server, name, exc, events)
                    continue
            self._retiring.pop((server.url, name), None)
            self._failures.pop((server.url, name), None)
            state.unloads += 1
            holds.discard(name)
            events.append(Event(server.url, "unload", name, reason))
        return holds

    def _failed(self, server: VllmServer, name: str, error: AdapterctlError, events: list[Event]) -> None:
        """Count every failure; report it when it is new (not the same error as at the last pass)."""
        self.state[server.url].failures += 1
        if self._failures.get((server.url, name)) != str(error):
            self._failures[(server.url, name)] = str(error)
            events.append(Event(server.url, "failed", name, str(error)))

    def export(self, version: Version) -> Path:
        """The version as a plain PEFT folder vLLM can load: written from the verified artifact, or, when
        written before, checked file by file against it (a changed or extra file is rewritten)."""
        with self._exporting:  # servers are synced in parallel: one writes the export, the others check it
            return self._export(version)

    def _export(self, version: Version) -> Path:
        contents = self.store.verify(version.artifact_path, version.sha256)
        destination = self.export_dir / version.name
        if destination.is_dir() and not destination.is_symlink():
            present = {p.relative_to(destination).as_posix(): p for p in destination.rglob("*") if p.is_file()}
            if set(present) == set(contents) and all(present[name].read_bytes() == data for name, data in contents.items()):
                return destination
        if destination.exists() or destination.is_symlink():
            _remove(destination)
        return self.store.export(version.artifact_path, version.sha256, destination)

    def _remove_unservable_exports(self, plan: Plan) -> None:
        """A revoked version's bytes do not stay behind in the exports (forget means gone)."""
        if not self.export_dir.is_dir():
            return
        for folder in self.export_dir.iterdir():
            match = VERSION_NAME.fullmatch(folder.name)
            if match and match["line"] in self.lines and folder.name not in plan.servable:
                _remove(folder)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)
