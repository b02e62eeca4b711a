"""What `adapterctl serve` needs of an engine: two implement it, the embedded PEFT `runtime.Runtime`
(default) and `gateway.Gateway`, which forwards generation to vLLM servers."""

from __future__ import annotations

from typing import Protocol

from adapterctl.serving.completion import Sampling
from adapterctl.serving.runtime import Answer, Stream, Swap


class Engine(Protocol):
    lines: list[str]

    @property
    def COUNTERS(self) -> tuple[tuple[str, str], ...]:
        """(name, meaning) of the counters in `stats`, exported as adapterctl_<name>_total."""

    @property
    def stats(self) -> object:
        """The counters, as attributes named in COUNTERS."""

    def metric_families(self) -> list:
        """Prometheus metric families of the engine's own, read at scrape time."""

    def served(self) -> dict[str, str]:
        """What each line answers with now: `line@vN` or `line@base`."""

    def loaded_versions(self) -> list[str]:
        """The `line@vN` a request may name now, beyond the lines themselves."""

    def hold(self, versions: set[str]) -> None:
        """Keep these `line@vN` ready to serve (the versions of running canaries)."""

    def refresh(self) -> list[Swap]:
        """Follow the newest activations; the swaps made (or attempted)."""

    def drop_unservable(self) -> list[str]:
        """Stop serving versions revoked since; the ones dropped."""

    def generate(self, model: str, messages: list[dict[str, str]], sampling: Sampling | None = None) -> Answer:
        """A whole answer from `line`, `line@vN` or `line@base`, naming what produced it."""

    def stream(self, model: str, messages: list[dict[str, str]], sampling: Sampling | None = None) -> Stream:
        """The same, as it is generated; what can be refused is refused before it returns."""
