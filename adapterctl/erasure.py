"""What forgetting erases beyond the feedback rows themselves (see docs/security.md).

Inside the forget transaction, `redact` removes the other copies the database holds:
- an evaluation's side-by-side sample of a forgotten record becomes `{"feedback_id": N, "forgotten": true}`
  (samples stored before samples named their record are matched by their prompt); answers that an
  adapter trained on the records generated are withheld too, since such a model can repeat them;
- a source that has no active feedback left on a line is folded into "(forgotten)" in the dataset
  reports of the line's runs, with its counts, so totals stay right (the poisoning report's too);
- the cases of a synthesized reference set that the base model wrote with a record in context go from
  every version of the set, which is rehashed (adapterctl.rehearsal tops it up at the next run);
- unfinished runs that used the records, or such a case, are marked failed, so `train --resume`
  cannot bring them back;
- `forget_quarantines`: with `--source`, the source's quarantines, whose rows name it.

After the commit, `scrub` removes the files that hold forgotten records (run folders, torchrun logs)
and rebuilds an SQLite database file so that no old page keeps their text. It looks for every
forgotten record, not only today's, so running it again finishes a clean-up that a crash cut short.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.engine import SQLITE_BUSY_TIMEOUT_S
from adapterctl.db.models import Adapter, EvalResult, EvalSuite, Evaluation, Feedback, Line, Quarantine, RunExample, TrainingRun
from adapterctl.db.types import rowcount, utcnow
from adapterctl.errors import InvalidInput
from adapterctl.lines import line_id_of
from adapterctl.registry import TRAINED_SPLITS

if TYPE_CHECKING:
    from adapterctl.workspace import Workspace

FORGOTTEN_SOURCE = "(forgotten)"
UNFINISHED = ("running", "interrupted")
RUN_STOPPED = "stopped: feedback it used was forgotten (start a new run)"
POSTGRESQL_KEEPS = (
    "PostgreSQL keeps the old row versions in its table files until `VACUUM FULL` and in its WAL, "
    "replicas and backups; see docs/security.md"
)
_CHUNK = 1000


@dataclass
class Redacted:
    """What `redact` changed in the database."""

    samples_redacted: int = 0
    """Side-by-side samples of forgotten records replaced by a marker."""
    samples_withheld: int = 0
    """Samples whose answers from adapters trained on the records were withheld."""
    runs_cleaned: int = 0
    """Dataset reports of runs whose forgotten source names were folded into "(forgotten)"."""
    runs_stopped: list[int] = field(default_factory=list)
    """Unfinished runs that used the records (or a reference case written with them), now failed."""
    reference_cases_removed: int = 0
    """Cases of synthesized reference sets the base model wrote with a forgotten record in context (every version counted)."""
    quarantines_deleted: int = 0
    """Quarantines of the forgotten source (`--source` only)."""


@dataclass
class Scrubbed:
    """What `scrub` removed from the files."""

    folders_removed: int = 0
    """Run folders (examples, checkpoints) holding forgotten records."""
    logs_removed: int = 0
    """torchrun logs of runs that used forgotten records."""
    vacuumed: bool = False
    wal_truncated: bool = False
    notes: list[str] = field(default_factory=list)
    """What may still hold forgotten text, and what to do about it."""


def redact(session: Session, records: Sequence[Any], *, actor: str) -> Redacted:
    """Erase the copies of these records (rows with id, line_id, prompt, source read before erasing)."""
    ids = [record.id for record in records]
    redacted, withheld = _redact_samples(session, records, _adapters_trained_on(session, ids))
    sources = {(record.line_id, record.source) for record in records if record.source is not None}
    cases_removed, anchored = _remove_written_cases(session, records, actor)
    return Redacted(
        samples_redacted=redacted,
        samples_withheld=withheld,
        runs_cleaned=_fold_sources(session, sources),
        runs_stopped=_stop_unfinished_runs(session, ids, anchored, actor),
        reference_cases_removed=cases_removed,
    )


def forget_quarantines(session: Session, source: str, line: str | None) -> int:
    """Delete a forgotten source's quarantines (on `line` alone when given): their rows name it, their audit
    events only their id. Feedback it sends afterwards is not kept out: quarantine it again."""
    query = delete(Quarantine).where(Quarantine.source == source)
    if line is not None:
        query = query.where(Quarantine.line_id == line_id_of(session, line))
    return rowcount(session.execute(query))


# ---------------------------------------------------------------- evaluation samples


def _adapters_trained_on(session: Session, ids: list[int]) -> set[int]:
    trained: set[int] = set()
    for chunk in _chunks(ids):
        trained.update(
            session.scalars(
                select(Adapter.id)
                .join(RunExample, RunExample.run_id == Adapter.run_id)
                .where(RunExample.feedback_id.in_(chunk), RunExample.split.in_(TRAINED_SPLITS))
            )
        )
    return trained


def _redact_samples(session: Session, records: Sequence[Any], trained: set[int]) -> tuple[int, int]:
    forgotten = {record.id for record in records}
    by_prompt = {_prompt_key(record.prompt): record.id for record in records if record.prompt}
    tainted_roles: dict[int, set[str]] = {}
    for evaluation_id, role in session.execute(select(EvalResult.evaluation_id, EvalResult.role).where(EvalResult.adapter_id.in_(trained))):
        tainted_roles.setdefault(evaluation_id, set()).add(role)
    redacted = withheld = 0
    line_ids = {record.line_id for record in records}
    for evaluation_id, samples in session.execute(select(Evaluation.id, Evaluation.samples).where(Evaluation.line_id.in_(line_ids))).all():
        new = [_redacted_sample(s, forgotten, by_prompt, tainted_roles.get(evaluation_id, set())) for s in samples]
        changed = [n for s, n in zip(samples, new) if n is not s]
        if changed:
            session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(samples=new))
            redacted += sum(bool(n.get("forgotten")) for n in changed)
            withheld += sum(not n.get("forgotten") for n in changed)
    return redacted, withheld


def _redacted_sample(sample: dict[str, Any], forgotten: set[int], by_prompt: dict[str, int], tainted: set[str]) -> dict[str, Any]:
    if sample.get("forgotten"):
        return sample
    feedback_id = sample.get("feedback_id")
    if feedback_id is None:  # stored before samples named their record: its prompt is all there is to go by
        feedback_id = by_prompt.get(_prompt_key(sample["prompt"]))
    if feedback_id in forgotten:
        return {"feedback_id": feedback_id, "forgotten": True}
    answered = {role for role in tainted if sample.get(role) is not None}
    if not answered:
        return sample
    return {**sample, **dict.fromkeys(answered), "withheld": sorted(answered | set(sample.get("withheld", [])))}


def _prompt_key(prompt: list[dict[str, str]]) -> str:
    return audit.canonical_json(prompt)


# ---------------------------------------------------------------- dataset reports


def _fold_sources(session: Session, line_sources: set[tuple[int, str]]) -> int:
    cleaned = 0
    for line_id in sorted({line_id for line_id, _ in line_sources}):
        names = {source for other, source in line_sources if other == line_id}
        gone = names - _sources_with_active_feedback(session, line_id, names)
        if not gone:
            continue
        for run_id, dataset in session.execute(select(TrainingRun.id, TrainingRun.dataset).where(TrainingRun.line_id == line_id)).all():
            folded = _folded(dataset, gone)
            if folded != dataset:
                session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(dataset=folded))
                cleaned += 1
    return cleaned


def _sources_with_active_feedback(session: Session, line_id: int, names: set[str]) -> set[str]:
    active: set[str] = set()
    for chunk in _chunks(sorted(names)):
        active.update(
            session.scalars(
                select(Feedback.source)
                .distinct()
                .where(Feedback.line_id == line_id, Feedback.source.in_(chunk), Feedback.status == "active")
            )
        )
    return active


def _folded(dataset: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """A run's dataset report with these sources' counts moved to "(forgotten)" in `sources` and `capped_sources`,
    and their names replaced in its poisoning report."""
    folded = dict(dataset)
    for key in ("sources", "capped_sources"):
        if dataset.get(key):
            folded[key] = _folded_counts(dataset[key], names)
    if dataset.get("poisoning"):
        folded["poisoning"] = _folded_poisoning(dataset["poisoning"], names)
    return folded


def _folded_counts(counts: dict[str, int], names: set[str]) -> dict[str, int]:
    if names.isdisjoint(counts):
        return counts
    kept = {source: count for source, count in counts.items() if source not in names}
    kept[FORGOTTEN_SOURCE] = kept.get(FORGOTTEN_SOURCE, 0) + sum(count for source, count in counts.items() if source in names)
    return dict(sorted(kept.items()))


def _folded_poisoning(report: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The poisoning part of a dataset report with these sources named "(forgotten)": in each flag, and in what quarantines kept out."""
    folded = dict(report)
    if report.get("flags"):
        folded["flags"] = [
            flag
            if names.isdisjoint(flag.get("sources") or ())
            else {**flag, "sources": list(dict.fromkeys(FORGOTTEN_SOURCE if s in names else s for s in flag["sources"]))}
            for flag in report["flags"]
        ]
    if (report.get("quarantined") or {}).get("sources"):
        folded["quarantined"] = {**report["quarantined"], "sources": _folded_counts(report["quarantined"]["sources"], names)}
    return folded


# ---------------------------------------------------------------- synthesized reference sets


def _remove_written_cases(session: Session, records: Sequence[Any], actor: str) -> tuple[int, set[int]]:
    """Remove the cases the base model wrote with a forgotten record in context from every version of each line's
    synthesized reference set, and rehash each version changed (one `suite.redact` event per line). A case of unknown
    seeds (synthesized before provenance named them) goes at any forget on its line, unless a person gave it too.

    The caller holds the lines' locks (a run storing a new version takes them too). Returns how many cases went, and
    the unfinished runs of the versions changed: their examples hold the anchors those versions held.
    """
    from adapterctl import suites  # suites imports feedback, which imports this module

    forgotten, removed, anchored = {record.id for record in records}, 0, set()
    for line_id in sorted({record.line_id for record in records}):
        versions = list(
            session.scalars(
                select(EvalSuite).where(EvalSuite.line_id == line_id, EvalSuite.name == suites.REFERENCE).order_by(EvalSuite.version)
            )
        )
        given = {audit.canonical_json(case) for suite in versions if suite.provenance is None for case in suite.cases}
        changed = [
            change for suite in versions if suite.provenance is not None and (change := _remove_from(session, suite, forgotten, given))
        ]
        if changed:
            name = session.scalar(select(Line.name).where(Line.id == line_id))
            audit.record(
                session,
                actor=actor,
                action="suite.redact",
                subject=f"line:{name}",
                payload={"suite": suites.REFERENCE, "versions": changed},
            )
            removed += sum(change["removed"] for change in changed)
            anchored |= _unfinished_runs_of(session, line_id, {change["version"] for change in changed})
    return removed, anchored


def _remove_from(session: Session, suite: EvalSuite, forgotten: set[int], given: set[str]) -> dict[str, Any] | None:
    """Remove the cases written with a forgotten record from one version; what changed, or None."""
    from adapterctl import suites

    lineage = suites.case_seeds(suite)
    keep = [
        i
        for i, seeds in enumerate(lineage)
        if audit.canonical_json(suite.cases[i]) in given or (seeds is not None and forgotten.isdisjoint(seeds))
    ]
    if len(keep) == len(suite.cases):
        return None
    cases = [suite.cases[i] for i in keep]
    digest, gone = suites.content_hash(cases), len(suite.cases) - len(keep)
    made = suite.provenance or {}
    provenance = {**made, "seeds": [lineage[i] for i in keep], "forgotten_cases": made.get("forgotten_cases", 0) + gone}
    session.execute(update(EvalSuite).where(EvalSuite.id == suite.id).values(cases=cases, content_hash=digest, provenance=provenance))
    return {"version": suite.version, "removed": gone, "sha256": digest}


def _unfinished_runs_of(session: Session, line_id: int, versions: set[int]) -> set[int]:
    runs = session.execute(
        select(TrainingRun.id, TrainingRun.dataset).where(TrainingRun.line_id == line_id, TrainingRun.status.in_(UNFINISHED))
    )
    return {run_id for run_id, dataset in runs if ((dataset or {}).get("reference") or {}).get("version") in versions}


# ---------------------------------------------------------------- unfinished runs


def _stop_unfinished_runs(session: Session, ids: list[int], anchored: set[int], actor: str) -> list[int]:
    run_ids = set(anchored)
    for chunk in _chunks(ids):
        run_ids.update(
            session.scalars(
                select(TrainingRun.id)
                .join(RunExample, RunExample.run_id == TrainingRun.id)
                .where(RunExample.feedback_id.in_(chunk), TrainingRun.status.in_(UNFINISHED))
            )
        )
    runs = session.execute(
        select(TrainingRun.id, Line.name)
        .join(Line, Line.id == TrainingRun.line_id)
        .where(TrainingRun.id.in_(run_ids))
        .order_by(TrainingRun.id)
    ).all()
    for run_id, line in runs:
        session.execute(
            update(TrainingRun).where(TrainingRun.id == run_id).values(status="failed", finished_at=utcnow(), error=RUN_STOPPED)
        )
        audit.record(session, actor=actor, action="train.fail", subject=f"line:{line}", payload={"run": run_id, "error": RUN_STOPPED})
    return [run_id for run_id, _ in runs]


# ---------------------------------------------------------------- after the commit


def scrub(ws: Workspace, *, vacuum: bool = True, wait_s: float = SQLITE_BUSY_TIMEOUT_S) -> Scrubbed:
    """Remove run folders and logs that hold forgotten records; checkpoint, truncate and VACUUM an SQLite database.

    Call it after the forget transaction committed. `vacuum`: rebuild the SQLite file (see
    `Database.reclaim_sqlite`); `wait_s`: how long SQLite waits for other connections.
    """
    scrubbed = Scrubbed()
    _scrub_runs(ws, scrubbed)
    if ws.db.backend != "sqlite":
        scrubbed.notes.append(POSTGRESQL_KEEPS)
        return scrubbed
    reclaimed = ws.db.reclaim_sqlite(vacuum=vacuum, wait_s=wait_s)
    scrubbed.vacuumed, scrubbed.wal_truncated = reclaimed.vacuumed, reclaimed.wal_truncated
    if reclaimed.problem:
        scrubbed.notes.append(reclaimed.problem)
    return scrubbed


def _scrub_runs(ws: Workspace, scrubbed: Scrubbed) -> None:
    with ws.reading() as session:
        for entry in sorted((ws.settings.home / "runs").glob("*/*")):
            if not _holds_forgotten(session, entry):
                continue
            folder = entry.is_dir()
            if not _removed(ws, entry):
                scrubbed.notes.append(f"{entry} holds forgotten records but could not be removed; delete it")
            elif folder:
                scrubbed.folders_removed += 1
            else:
                scrubbed.logs_removed += 1


def _holds_forgotten(session: Session, entry: Path) -> bool:
    """A run folder `<line>/<run>` or log `<line>/<run>-torchrun.log` whose run used, or whose examples hold, a forgotten
    record, or that forget stopped (its anchors held a reference case written with one)."""
    run = entry.name.removesuffix("-torchrun.log") if entry.is_file() else entry.name
    if not run.isdigit():
        return False
    if session.scalar(select(TrainingRun.error).where(TrainingRun.id == int(run))) == RUN_STOPPED:
        return True
    used = (
        select(RunExample.feedback_id)
        .join(Feedback, Feedback.id == RunExample.feedback_id)
        .where(RunExample.run_id == int(run), Feedback.status == "forgotten")
        .limit(1)
    )
    if session.scalar(used) is not None:
        return True
    listed = sorted(_example_ids(entry / "examples.jsonl")) if entry.is_dir() else []
    return any(
        session.scalar(select(Feedback.id).where(Feedback.id.in_(chunk), Feedback.status == "forgotten").limit(1))
        for chunk in _chunks(listed)
    )


def _example_ids(path: Path) -> Iterator[int]:
    """The feedback ids in a run's examples.jsonl; a line cut short by a crash is skipped."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                feedback_id = json.loads(line).get("feedback_id")
            except (ValueError, AttributeError):
                continue
            if isinstance(feedback_id, int):
                yield feedback_id


def _removed(ws: Workspace, entry: Path) -> bool:
    """Delete a run folder (with the run's staging folder in the artifact store) or a log; whether it is gone."""
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
        store = ArtifactStore(ws.settings.artifacts_dir)
        try:  # what a run killed mid-save leaves there: weights it can never publish
            store.remove(store.staging_path(entry.parent.name, f"run-{entry.name}"))
        except InvalidInput:  # the folder is not named after a line, so no staging folder belongs to it
            pass
    else:
        try:
            entry.unlink()
        except OSError:
            pass
    return not entry.exists()


def _chunks(values: Sequence[Any] | Iterable[Any]) -> Iterator[list[Any]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
