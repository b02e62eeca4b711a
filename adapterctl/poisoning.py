"""Poisoning checks: pure functions over the new examples a run would train on, one per flag.

    near_duplicate_floods   many corrections (or chosen answers) that say the same thing, from few sources
    volume_spikes           a source sending far more records than the median source and than its own history
    trigger_matches         records whose prompt or answer matches one of the line's trigger patterns

`screen` runs all three; with `hold_flagged` (the default) the flagged records are held out of the
run, and either way the run's dataset report lists each flag with its reason (`report`). Held
records stay new: the next run checks them again, until the source is quarantined
(adapterctl.quarantine), the records are forgotten, or the thresholds say they are fine.

Flags name records by id and sources by name, never by their text, so that forgetting a record
leaves nothing of it in a report.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapterctl.dataset import NO_SOURCE, normalise

if TYPE_CHECKING:
    from adapterctl.dataset import Example

WRITTEN_ANSWERS = ("correction", "pair")
"""Kinds whose answer a person wrote (a correction, the chosen answer of a pair); a rated answer is the model's own."""
SHOWN_IDS = 10
SHOWN_SOURCES = 10
MAX_PATTERNS = 50
MAX_PATTERN_CHARS = 500


@dataclass(frozen=True)
class PoisoningSettings:
    """The poisoning checks of a line's training runs (`adapterctl line set LINE poisoning.KEY=VALUE`)."""

    hold_flagged: bool = True
    """Hold flagged records out of the run; false trains on them (they are still listed in the report)."""
    flood_min_records: int = 10
    """Fewest corrections with the same normalised answer that can be a flood; 0 turns the check off."""
    flood_min_per_source: float = 5.0
    """Such a group is a flood when it holds at least this many records per distinct source."""
    spike_min_records: int = 20
    """Fewest records of one source in a run that can be a spike; 0 turns the check off."""
    spike_factor: float = 10.0
    """A source spikes when it sends more than this many times the median of the other sources and
    its own average per earlier run (the larger of the two)."""
    trigger_patterns: tuple[str, ...] = ()
    """Regular expressions (Python syntax, searched in every prompt message and answer); a record
    that matches one is flagged."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "trigger_patterns", tuple(self.trigger_patterns or ()))

    def problems(self) -> list[str]:
        checks = [
            (self.flood_min_records >= 0, f"flood_min_records must be >= 0 (got {self.flood_min_records})"),
            (self.flood_min_per_source >= 1, f"flood_min_per_source must be >= 1 (got {self.flood_min_per_source})"),
            (self.spike_min_records >= 0, f"spike_min_records must be >= 0 (got {self.spike_min_records})"),
            (self.spike_factor >= 1, f"spike_factor must be >= 1 (got {self.spike_factor})"),
            (isinstance(self.hold_flagged, bool), f"hold_flagged must be true or false (got {self.hold_flagged!r})"),
            (
                len(self.trigger_patterns) <= MAX_PATTERNS,
                f"trigger_patterns holds {len(self.trigger_patterns)} patterns, more than {MAX_PATTERNS}",
            ),
        ]
        return [message for ok, message in checks if not ok] + [p for p in map(pattern_problem, self.trigger_patterns) if p]


def pattern_problem(pattern: Any) -> str | None:
    """Why `pattern` cannot be a trigger pattern, or None."""
    if not isinstance(pattern, str) or not pattern:
        return f"trigger_patterns: {pattern!r} is not a non-empty string"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"trigger_patterns: a pattern of {len(pattern)} characters is longer than {MAX_PATTERN_CHARS}"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"trigger_patterns: {pattern!r} is not a regular expression ({exc})"
    return None


@dataclass(frozen=True)
class Flag:
    """Records one check finds suspicious, and why, in one line a reviewer can read."""

    kind: str  # flood | spike | trigger
    reason: str
    sources: tuple[str, ...]
    feedback_ids: tuple[int, ...]


def source_of(example: Example) -> str:
    return example.source or NO_SOURCE


def near_duplicate_floods(examples: Iterable[Example], settings: PoisoningSettings) -> list[Flag]:
    """Groups of at least `flood_min_records` written answers that normalise alike (case, accents,
    punctuation and spacing aside), holding `flood_min_per_source` records or more per distinct source:
    the same answer pushed under many prompts by few senders. Many people correcting to the same
    answer spread over as many sources, and are not flagged."""
    if settings.flood_min_records <= 0:
        return []
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        if example.kind in WRITTEN_ANSWERS:
            groups[normalise(example.answer)].append(example)
    flags = []
    for group in groups.values():
        sources = Counter(map(source_of, group))
        if len(group) >= settings.flood_min_records and len(group) / len(sources) >= settings.flood_min_per_source:
            ids = _ids(group)
            flags.append(
                Flag(
                    "flood",
                    f"{len(group)} records give the same answer (as #{ids[0]}) from {_count(len(sources), 'source')}",
                    _by_volume(sources),
                    ids,
                )
            )
    return flags


def volume_spikes(examples: Iterable[Example], history: Mapping[str, float], settings: PoisoningSettings) -> list[Flag]:
    """Sources with at least `spike_min_records` records that send more than `spike_factor` times the
    larger of the median of the other sources and their own average per earlier run (`history`).
    A source alone, with no history, has nothing to be compared with and is not flagged."""
    if settings.spike_min_records <= 0:
        return []
    by_source: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_source[source_of(example)].append(example)
    counts = {source: len(group) for source, group in by_source.items()}
    flags = []
    for source, count in counts.items():
        others = [n for other, n in counts.items() if other != source]
        median = statistics.median(others) if others else 0.0
        baseline = max(median, history.get(source, 0.0))
        if count >= settings.spike_min_records and baseline > 0 and count > settings.spike_factor * baseline:
            flags.append(
                Flag(
                    "spike",
                    f"{count} records from one source, {count / baseline:.0f}x the larger of the median source "
                    f"({median:g}) and its own average per earlier run ({history.get(source, 0.0):.3g})",
                    (source,),
                    _ids(by_source[source]),
                )
            )
    return flags


def trigger_matches(examples: Iterable[Example], patterns: Iterable[str]) -> list[Flag]:
    """One flag per trigger pattern that some record's prompt (any message) or answer matches."""
    compiled = [(pattern, re.compile(pattern)) for pattern in patterns]
    matched: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        texts = [m["content"] for m in example.prompt] + [example.answer]
        for pattern, regex in compiled:
            if any(regex.search(text) for text in texts):
                matched[pattern].append(example)
    flags = []
    for pattern, group in matched.items():
        sources = Counter(map(source_of, group))
        flags.append(
            Flag(
                "trigger",
                f"{_count(len(group), 'record')} match the trigger pattern {pattern!r}, from {_count(len(sources), 'source')}",
                _by_volume(sources),
                _ids(group),
            )
        )
    return flags


@dataclass
class Screened:
    """What the checks found in a run's new examples, and which of them the run leaves out."""

    flags: list[Flag]
    held: set[int]
    """Feedback ids held out of the run (none when `hold_flagged` is off)."""
    settings: PoisoningSettings

    def kept(self, examples: list[Example]) -> list[Example]:
        return [e for e in examples if e.feedback_id not in self.held]


def screen(examples: list[Example], history: Mapping[str, float], settings: PoisoningSettings) -> Screened:
    """Run every check on a run's new examples (after duplicates are collapsed, before the source cap)."""
    flags = [
        *near_duplicate_floods(examples, settings),
        *volume_spikes(examples, history, settings),
        *trigger_matches(examples, settings.trigger_patterns),
    ]
    held = {i for flag in flags for i in flag.feedback_ids} if settings.hold_flagged else set()
    return Screened(flags, held, settings)


def report(screened: Screened, quarantined: Mapping[str, int]) -> dict[str, Any]:
    """The `poisoning` part of a run's dataset report: each flag (with at most SHOWN_IDS example ids),
    how many records were flagged and held out, and what quarantined sources had kept out, per source."""
    flags = [
        {
            "kind": flag.kind,
            "reason": flag.reason,
            "count": len(flag.feedback_ids),
            "sources": list(flag.sources[:SHOWN_SOURCES]),
            "source_count": len(flag.sources),
            "feedback_ids": list(flag.feedback_ids[:SHOWN_IDS]),
            "held": screened.settings.hold_flagged,
        }
        for flag in screened.flags
    ]
    values = dataclasses.asdict(screened.settings)
    values["trigger_patterns"] = list(screened.settings.trigger_patterns)
    flagged = {i for flag in screened.flags for i in flag.feedback_ids}
    return {
        "checked": True,
        "flags": flags,
        "flagged": len(flagged),
        "held_out": len(screened.held),
        "quarantined": {"records": sum(quarantined.values()), "sources": dict(sorted(quarantined.items()))},
        "settings": values,
    }


def settings_from(values: Mapping[str, Any] | None) -> PoisoningSettings:
    """The settings as a line stores them; unknown keys are ignored, missing ones take defaults."""
    names = {f.name for f in dataclasses.fields(PoisoningSettings)}
    return PoisoningSettings(**{k: v for k, v in (values or {}).items() if k in names})


def _ids(examples: list[Example]) -> tuple[int, ...]:
    return tuple(e.feedback_id for e in examples if e.feedback_id is not None)  # only reference anchors have none


def _by_volume(sources: Counter[str]) -> tuple[str, ...]:
    return tuple(source for source, _ in sorted(sources.items(), key=lambda kv: (-kv[1], kv[0])))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
