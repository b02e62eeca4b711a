"""Which version answers a request while its line runs a canary.

A request that names its line (not `line@vN`) is routed by its end user: the request's `user` field,
else the header the operator names (`serve --canary-key-header`), else a random draw per request. The
user lands on the canary when `canary.assigned_to_canary` says so, with the canary's start as the
salt: the same user keeps their side, and raising the share only moves users onto the canary. Until
the engine holds the canary's version (the vLLM engine waits for `vllm sync` to load it), everyone
gets the active version and the request counts for neither side.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from adapterctl import activations, registry
from adapterctl.canary import assigned_to_canary
from adapterctl.lines import get_line
from adapterctl.workspace import Workspace


@dataclass(frozen=True)
class Split:
    canary_id: int
    """The activation that started the canary."""
    version: str
    """`line@vN`: what the canary's side is served."""
    share: float


@dataclass(frozen=True)
class Route:
    model: str
    """What the engine is asked for: the request's model, or the canary's `line@vN`."""
    canary_id: int | None = None
    arm: str | None = None
    """baseline or canary; None when no canary routed the request."""


class CanaryRouter:
    """The running canaries of the served lines, followed from the database like the versions are."""

    def __init__(self, ws: Workspace, lines: list[str]) -> None:
        self.ws, self.lines = ws, lines
        self.splits: dict[str, Split] = {}

    def refresh(self) -> set[str]:
        """Read the lines' canaries; the `line@vN` they need loaded."""
        splits = {}
        with self.ws.reading() as session:
            for line in self.lines:
                line_id = get_line(session, line).id
                now = activations.current(session, line_id)
                if now is not None and now.canary_adapter is not None:
                    start = activations.canary_start(session, line_id)
                    assert start is not None and now.canary_share is not None  # a canary activation has both
                    splits[line] = Split(start.id, f"{line}@{registry.version_name(now.canary_adapter)}", now.canary_share)
        self.splits = splits
        return {split.version for split in splits.values()}

    def route(self, model: str, user: str | None, held: list[str]) -> Route:
        """Where a request for `model` from end user `user` goes; `held` are the versions the engine can serve now."""
        split = self.splits.get(model)
        if split is None:
            return Route(model)
        if split.version not in held:
            return Route(model)
        key = user if user is not None else uuid.uuid4().hex
        if assigned_to_canary(key, split.share, f"{model}:{split.canary_id}"):
            return Route(split.version, split.canary_id, "canary")
        return Route(model, split.canary_id, "baseline")
