"""The training set of a run: which feedback becomes which example, with poisoning hygiene and lineage.

Eligible feedback of a line, not used by an earlier run and not forgotten:
  - a correction trains the corrected answer;
  - a positive rating trains the answer that was given;
  - a chosen/rejected pair trains the chosen answer (the pair is kept for preference training).
A negative or neutral rating alone teaches nothing and is never used.

Feedback of quarantined sources is kept out (adapterctl.quarantine). Then: exact and normalised duplicates
are collapsed (the oldest record is kept), the poisoning checks flag floods, spikes and trigger patterns and
hold the flagged records out (adapterctl.poisoning), each source is capped at a share of the examples,
a stable hash of the feedback id holds some out for evaluation, and examples that earlier approved
versions were trained on are mixed back in (replay), with the anchor share of the line's reference set,
so a new adapter keeps what the line and the base model knew.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from adapterctl.db.models import Adapter, EvalSuite, Feedback, Line, RunExample, TrainingRun

if TYPE_CHECKING:
    from adapterctl.poisoning import PoisoningSettings

APPROVED_STATES = ("approved", "active", "inactive")
NO_SOURCE = "(none)"


@dataclass(frozen=True)
class DataSettings:
    holdout_fraction: float = 0.1
    """Share of new examples held out for evaluation, chosen by a hash of the feedback id."""
    replay_fraction: float = 1.0
    """Share of the training set drawn from data that approved versions were trained on; 1.0 (the default,
    chosen by bench/forgetting.py) takes all of it."""
    max_source_share: float = 0.2
    """Largest share of the new examples one source may contribute; the excess is dropped and reported."""
    seed: int = 0
    """Seed for choosing replay examples."""
    reference_anchor_share: float = 0.75
    """Share of the line's reference set mixed into training as anchors (see adapterctl.suites); 0: none."""
    poisoning: PoisoningSettings | None = None
    """The poisoning checks (adapterctl.poisoning); None: the line's settings."""


@dataclass(frozen=True)
class Example:
    feedback_id: int | None  # None: a reference-set anchor, not feedback
    split: str  # train | heldout | replay | reference
    kind: str  # correction | positive | pair
    source: str | None
    prompt: list[dict[str, str]]
    answer: str
    rejected: str | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.answer}]


@dataclass
class Dataset:
    examples: list[Example]
    report: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    @property
    def new_count(self) -> int:
        return sum(e.split in ("train", "heldout") for e in self.examples)


def build_dataset(
    session: Session, line_id: int, settings: DataSettings, problem_of: Callable[[Example], str | None] | None = None
) -> Dataset:
    """Select and clean the examples of the next run of a line; nothing is written.

    `problem_of` says why an example cannot be trained on (the base model's chat template cannot render
    it), or None; such examples are left out and counted, so that one bad record never fails a run.
    """
    from adapterctl import poisoning, quarantine  # they build on this module

    unrenderable = Unrenderable(problem_of)
    quarantined = quarantine.active_sources(session, line_id)
    kept_out: Counter[str] = Counter()
    eligible = [e for e in map(example_of, session.scalars(_new_feedback(line_id))) if e is not None]
    unique, exact, normalised = _deduplicate(unrenderable.keep(_not_quarantined(eligible, quarantined, kept_out)))
    line_settings = session.scalar(select(Line.settings).where(Line.id == line_id)) or {}
    checks = settings.poisoning or poisoning.settings_from(line_settings.get("poisoning"))
    screened = poisoning.screen(unique, _source_history(session, line_id), checks)
    kept, capped = _cap_sources(screened.kept(unique), settings.max_source_share)
    new = [_with_split(e, "heldout" if is_heldout(e.feedback_id, settings.holdout_fraction) else "train") for e in kept]
    train_count = sum(e.split == "train" for e in new)
    replay = _replay(session, line_id, {e.feedback_id for e in new} | screened.held, train_count, settings)
    replay = unrenderable.keep(_not_quarantined(replay, quarantined, kept_out))
    new, leaks = _no_heldout_leaks(new, replay)
    anchors, reference_version, synthesized = _reference_anchors(session, line_id, settings.reference_anchor_share)
    anchors, overridden = _not_overridden(anchors, new + replay)
    examples = new + replay + unrenderable.keep(anchors)
    report = {
        "eligible": len(eligible),
        "unrenderable": unrenderable.report(),
        "duplicates_removed": {"exact": exact, "normalised": normalised},
        "heldout_moved_to_train": leaks,
        "capped_sources": capped,
        "poisoning": poisoning.report(screened, kept_out),
        "sources": dict(sorted(Counter(e.source or NO_SOURCE for e in new).items())),
        "splits": dict(Counter(e.split for e in examples)),
        "kinds": dict(Counter(e.kind for e in examples)),
        "reference": {"version": reference_version, "anchors": len(anchors), "synthesized": synthesized, "overridden": overridden},
        "settings": asdict(settings),
    }
    return Dataset(examples, report)


class Unrenderable:
    """Examples left out because the chat template cannot render them: how many, which records, why."""

    SHOWN_IDS = 100

    def __init__(self, problem_of: Callable[[Example], str | None] | None) -> None:
        self.problem_of = problem_of
        self.skipped: list[tuple[Example, str]] = []

    def keep(self, examples: list[Example]) -> list[Example]:
        if self.problem_of is None:
            return examples
        kept = []
        for example in examples:
            if problem := self.problem_of(example):
                self.skipped.append((example, problem))
            else:
                kept.append(example)
        return kept

    def report(self) -> dict[str, Any]:
        ids = [e.feedback_id for e, _ in self.skipped if e.feedback_id is not None]
        return {"count": len(self.skipped), "feedback_ids": ids[: self.SHOWN_IDS], "reasons": sorted({p for _, p in self.skipped})[:5]}


def _not_quarantined(examples: list[Example], quarantined: set[str], kept_out: Counter[str]) -> list[Example]:
    """The examples whose source is not quarantined; those left out are counted per source in `kept_out`."""
    kept = []
    for example in examples:
        if example.source in quarantined:
            kept_out[example.source] += 1
        else:
            kept.append(example)
    return kept


def _source_history(session: Session, line_id: int) -> dict[str, float]:
    """New examples per earlier successful run of the line, per source: what a source usually sends."""
    succeeded = (TrainingRun.line_id == line_id, TrainingRun.status == "succeeded")
    runs = session.scalar(select(func.count()).select_from(TrainingRun).where(*succeeded))
    if not runs:
        return {}
    counts = session.execute(
        select(Feedback.source, func.count())
        .select_from(RunExample)
        .join(TrainingRun, TrainingRun.id == RunExample.run_id)
        .join(Feedback, Feedback.id == RunExample.feedback_id)
        .where(*succeeded, RunExample.split.in_(("train", "heldout")))
        .group_by(Feedback.source)
    )
    return {(source or NO_SOURCE): count / runs for source, count in counts}


def new_feedback_count(session: Session, line_id: int) -> int:
    """Eligible feedback of the line that no successful run has used yet (before duplicates and caps)."""
    return session.scalar(select(func.count()).select_from(_new_feedback(line_id).subquery())) or 0


def _new_feedback(line_id: int):
    used = select(RunExample.feedback_id).join(TrainingRun).where(TrainingRun.status == "succeeded")
    return (
        select(Feedback)
        .where(
            Feedback.line_id == line_id,
            Feedback.status == "active",
            or_(Feedback.correction.is_not(None), Feedback.rating > 0, Feedback.chosen.is_not(None)),
            Feedback.id.not_in(used),
        )
        .order_by(Feedback.created_at, Feedback.id)
    )


def example_of(row: Feedback, split: str = "train") -> Example | None:
    if row.prompt is None:  # forgotten: only the tombstone remains
        return None
    if row.correction is not None:
        return Example(row.id, split, "correction", row.source, row.prompt, row.correction)
    if row.chosen is not None:
        return Example(row.id, split, "pair", row.source, row.prompt, row.chosen, rejected=row.rejected)
    if row.rating is not None and row.rating > 0 and row.response is not None:
        return Example(row.id, split, "positive", row.source, row.prompt, row.response)
    return None


def _with_split(example: Example, split: str) -> Example:
    return Example(**{**asdict(example), "split": split})


_PUNCTUATION_AND_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Case, accents, punctuation and spacing removed: what stays the same when a record is retyped."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _PUNCTUATION_AND_SPACE.sub(" ", stripped).strip()


def _deduplicate(examples: list[Example]) -> tuple[list[Example], int, int]:
    """Keep the oldest of each group of exact, then of normalised, duplicate (prompt, answer) pairs."""
    exact_seen: set[tuple] = set()
    normal_seen: set[tuple] = set()
    unique, exact, normalised = [], 0, 0
    for example in examples:
        key = (tuple((m["role"], m["content"]) for m in example.prompt), example.answer)
        normal_key = (tuple((m["role"], normalise(m["content"])) for m in example.prompt), normalise(example.answer))
        if key in exact_seen:
            exact += 1
        elif normal_key in normal_seen:
            normalised += 1
        else:
            unique.append(example)
        exact_seen.add(key)
        normal_seen.add(normal_key)
    return unique, exact, normalised


def _cap_sources(examples: list[Example], max_share: float) -> tuple[list[Example], dict[str, int]]:
    """At most max(1, share × total) examples per source, the oldest kept; returns what was dropped per source."""
    cap = max(1, int(max_share * len(examples)))
    counts: Counter[str] = Counter()
    kept: list[Example] = []
    dropped: Counter[str] = Counter()
    for example in examples:
        source = example.source or NO_SOURCE
        if counts[source] < cap:
            counts[source] += 1
            kept.append(example)
        else:
            dropped[source] += 1
    return kept, dict(sorted(dropped.items()))


def is_heldout(feedback_id: int | None, fraction: float) -> bool:
    """Stable across runs and machines: the same record is always held out, or always not."""
    digest = hashlib.sha256(f"adapterctl-heldout:{feedback_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def _replay(session: Session, line_id: int, exclude: set[int | None], train_count: int, settings: DataSettings) -> list[Example]:
    """Examples earlier approved, unrevoked versions of the line were trained on, chosen by seed."""
    if settings.replay_fraction <= 0:
        return []
    trained = (
        select(RunExample.feedback_id)
        .join(Adapter, Adapter.run_id == RunExample.run_id)
        .where(Adapter.line_id == line_id, Adapter.status.in_(APPROVED_STATES), RunExample.split.in_(("train", "replay")))
    )
    rows = session.scalars(select(Feedback).where(Feedback.id.in_(trained), Feedback.status == "active").order_by(Feedback.id)).all()
    pool = [e for e in (example_of(row, "replay") for row in rows if row.id not in exclude) if e is not None]
    if settings.replay_fraction >= 1:
        return pool
    wanted = round(train_count * settings.replay_fraction / (1 - settings.replay_fraction))
    return sorted(random.Random(settings.seed).sample(pool, min(wanted, len(pool))), key=lambda e: e.feedback_id or 0)


def _reference_anchors(session: Session, line_id: int, share: float) -> tuple[list[Example], int | None, bool]:
    """The anchor share of the newest reference set, as examples; that set's version; whether adapterctl synthesized it."""
    from adapterctl.suites import REFERENCE, anchors_training

    suite = session.scalar(
        select(EvalSuite).where(EvalSuite.line_id == line_id, EvalSuite.name == REFERENCE).order_by(EvalSuite.version.desc()).limit(1)
    )
    if suite is None:
        return [], None, False
    anchors = [Example(None, "reference", "reference", None, c["prompt"], c["answer"]) for c in suite.cases if anchors_training(c, share)]
    return anchors, suite.version, suite.provenance is not None


def _no_heldout_leaks(new: list[Example], replay: list[Example]) -> tuple[list[Example], dict[str, int]]:
    """Held-out examples whose prompt (normalised) a training or replayed example also has are moved to
    training: held out, they would measure what the candidate was trained on. Returns the examples and
    how many were moved, by what they matched. (Anchors on such a prompt are left out: `_not_overridden`.)"""
    trained = {prompt_key(e.prompt) for e in new if e.split == "train"}
    replayed = {prompt_key(e.prompt) for e in replay}
    moved: Counter[str] = Counter()
    result = []
    for example in new:
        key = prompt_key(example.prompt)
        reason = (
            "same prompt as a new training example" if key in trained else "same prompt as a replayed example" if key in replayed else None
        )
        if example.split == "heldout" and reason:
            moved[reason] += 1
            example = _with_split(example, "train")
        result.append(example)
    return result, dict(sorted(moved.items()))


def _not_overridden(anchors: list[Example], feedback: list[Example]) -> tuple[list[Example], int]:
    """Anchors whose prompt the line's feedback answers too are left out: the feedback says what the
    answer should now be, and an anchor on the base model's old answer would fight it."""
    asked = {prompt_key(e.prompt) for e in feedback}
    kept = [a for a in anchors if prompt_key(a.prompt) not in asked]
    return kept, len(anchors) - len(kept)


def prompt_key(prompt: list[dict[str, str]]) -> tuple:
    return tuple((m["role"], normalise(m["content"])) for m in prompt if m["role"] != "system")


def lineage_rows(run_id: int, examples: Iterable[Example]) -> list[dict[str, Any]]:
    """The feedback a run used and how; reference anchors are not feedback and have no lineage."""
    return [{"run_id": run_id, "feedback_id": e.feedback_id, "split": e.split} for e in examples if e.feedback_id is not None]
