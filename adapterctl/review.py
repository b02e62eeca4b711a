"""Reviewers, the review queue, and the decisions that turn a candidate into a version.

A decision locks the line's row first (SELECT … FOR UPDATE on PostgreSQL; SQLite's write
transaction already excludes other writers), so two reviewers deciding at once, or two candidates
of one line approved at once, are serialised: the approvals are counted with every earlier decision
in view, one rejection wins over a later approval, and version numbers come out gap-free.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapterctl import access, activations, audit, evaluation, learning, leases, registry, suites
from adapterctl.dataset import example_of
from adapterctl.db.models import Adapter, Feedback, Line, ReviewDecision, Reviewer, RunExample
from adapterctl.db.types import utcnow
from adapterctl.errors import AlreadyExists, InvalidInput, InvalidTransition, NotFound
from adapterctl.lines import lock_line, settings_of

ROLES = (access.REVIEWER, access.ADMIN)
TRAINING_EXAMPLES_SHOWN = 5
MAX_NOTE_CHARS = 4000


# ---------------------------------------------------------------- reviewers


def add_reviewer(session: Session, *, name: str, role: str, actor: str) -> Reviewer:
    """Register a reviewer. Once an admin exists, only admins may add reviewers."""
    if role not in ROLES:
        raise InvalidInput(f"--role must be one of {', '.join(ROLES)} (got {role!r})")
    name = _person(name)
    access.require(session, actor, "reviewer.add")
    if session.scalar(select(Reviewer.id).where(Reviewer.name == name)) is not None:
        raise AlreadyExists(f"reviewer {name!r} exists already; see `adapterctl reviewer list`")
    reviewer = Reviewer(name=name, role=role, created_by=actor)
    session.add(reviewer)
    session.flush()
    audit.record(session, actor=actor, action="reviewer.add", subject=f"reviewer:{name}", payload={"role": role})
    return reviewer


def remove_reviewer(session: Session, *, name: str, actor: str) -> None:
    access.require(session, actor, "reviewer.remove")
    reviewer = get_reviewer(session, name)
    if reviewer.role == "admin" and _admin_count(session) == 1:
        raise InvalidInput(f"{name!r} is the last admin; add another admin before removing this one")
    session.delete(reviewer)
    audit.record(session, actor=actor, action="reviewer.remove", subject=f"reviewer:{name}", payload={"role": reviewer.role})


def get_reviewer(session: Session, name: str) -> Reviewer:
    reviewer = session.scalar(select(Reviewer).where(Reviewer.name == name))
    if reviewer is None:
        raise NotFound(f"{name!r} is not a registered reviewer; see `adapterctl reviewer list`")
    return reviewer


def list_reviewers(session: Session) -> list[Reviewer]:
    return list(session.scalars(select(Reviewer).order_by(Reviewer.name)))


def _person(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise InvalidInput("reviewer name must be 1-128 printable characters")
    return name


def _admin_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Reviewer).where(Reviewer.role == "admin")) or 0


# ---------------------------------------------------------------- the queue


def queue(session: Session, *, line: str | None = None) -> list[dict[str, Any]]:
    """Pending candidates, oldest first, with the gate's summary and the approvals so far; and candidates
    still `evaluating`, saying whether a job is evaluating them now or what evaluates them."""
    query = (
        select(Adapter)
        .join(Adapter.line)
        .where(Adapter.status.in_(("pending_review", "evaluating")))
        .order_by(Adapter.created_at, Adapter.id)
    )
    if line is not None:
        query = query.where(Line.name == line)
    now = utcnow()
    entries = []
    for adapter in session.scalars(query):
        latest = evaluation.latest_evaluation(session, adapter.id)
        gate = _gate_summary(latest.gate if latest else None) if adapter.status == "pending_review" else _evaluating(session, adapter)
        entries.append(
            {
                "id": adapter.id,
                "line": adapter.line.name,
                "status": adapter.status,
                "created_at": adapter.created_at.isoformat(),
                "age": _age(now, adapter.created_at),
                "gate": gate,
                "approvals": approvers(session, adapter.id),
                "approvals_required": settings_of(adapter.line).approvals_required,
            }
        )
    return entries


def _evaluating(session: Session, adapter: Adapter) -> str:
    """Training jobs evaluate their candidates under the line's lease: without a holder, the job died."""
    line = adapter.line.name
    if leases.live_holder(session, f"train:{line}") is not None:
        return "being evaluated by the training job"
    return (
        f"evaluation interrupted: the next `adapterctl train --line {line}` evaluates it, "
        f"or run `adapterctl eval run --candidate {adapter.id}`"
    )


def _age(now: datetime, then: datetime) -> str:
    minutes = int((now - then).total_seconds() // 60)
    return f"{minutes // 1440}d{minutes % 1440 // 60}h" if minutes >= 1440 else f"{minutes // 60}h{minutes % 60:02d}m"


def _gate_summary(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "not evaluated"
    if not gate["passed"]:
        return "failed: " + "; ".join(gate["reasons"])
    return "passed" + (f" ({'; '.join(gate['undecided'])})" if gate.get("undecided") else "")


def approvers(session: Session, adapter_id: int) -> list[str]:
    return list(
        session.scalars(
            select(ReviewDecision.reviewer)
            .where(ReviewDecision.adapter_id == adapter_id, ReviewDecision.decision == "approve")
            .order_by(ReviewDecision.id)
        )
    )


# ---------------------------------------------------------------- decisions


def approve(session: Session, adapter_id: int, *, reviewer: str, note: str | None = None) -> Adapter:
    """Record an approval; the last one required makes the candidate `approved` with the line's next version."""
    adapter, summary_hash = _decide(session, adapter_id, reviewer, "approve", note)
    approved_by = approvers(session, adapter_id)
    required = settings_of(adapter.line).approvals_required
    audit.record(
        session,
        actor=reviewer,
        action="review.approve",
        subject=f"adapter:{adapter_id}",
        payload={
            "line": adapter.line.name,
            "note": note,
            "eval_summary_sha256": summary_hash,
            "approvals": len(approved_by),
            "required": required,
        },
    )
    if len(approved_by) >= required:
        version = registry.next_version(session, adapter.line_id)
        adapter.version = version
        session.flush()
        registry.transition(session, adapter_id, "approved", actor=reviewer, reason=f"v{version}: approved by {', '.join(approved_by)}")
    return adapter


def reject(session: Session, adapter_id: int, *, reviewer: str, reason: str) -> Adapter:
    """Record a rejection; one rejection rejects the candidate."""
    if not (reason or "").strip():
        raise InvalidInput("--reason is required to reject a candidate")
    adapter, summary_hash = _decide(session, adapter_id, reviewer, "reject", reason)
    audit.record(
        session,
        actor=reviewer,
        action="review.reject",
        subject=f"adapter:{adapter_id}",
        payload={"line": adapter.line.name, "reason": reason, "eval_summary_sha256": summary_hash},
    )
    registry.transition(session, adapter_id, "rejected", actor=reviewer, reason=f"rejected by {reviewer}: {reason}")
    return adapter


def _decide(session: Session, adapter_id: int, reviewer: str, decision: str, note: str | None) -> tuple[Adapter, str | None]:
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise InvalidInput(f"the note is {len(note)} characters, more than the limit of {MAX_NOTE_CHARS}")
    access.require(session, reviewer, f"review.{decision}")
    adapter = registry.get_adapter(session, adapter_id)
    lock_line(session, adapter.line_id)
    session.refresh(adapter)
    if adapter.status != "pending_review":
        hint = {"evaluating": "it has not passed the evaluation gate yet"}.get(adapter.status, "only pending candidates are reviewed")
        raise InvalidTransition(f"adapter {adapter_id} is {adapter.status}; it cannot be {decision}d ({hint})")
    earlier = session.scalar(
        select(ReviewDecision.decision).where(ReviewDecision.adapter_id == adapter_id, ReviewDecision.reviewer == reviewer)
    )
    if earlier is not None:
        raise AlreadyExists(f"{reviewer!r} has already {earlier}d adapter {adapter_id}; approvals must come from distinct reviewers")
    latest = evaluation.latest_evaluation(session, adapter_id)
    summary_hash = latest.summary_hash if latest else None
    session.add(ReviewDecision(adapter_id=adapter_id, reviewer=reviewer, decision=decision, note=note, eval_summary_hash=summary_hash))
    session.flush()
    return adapter, summary_hash


# ---------------------------------------------------------------- the report


def report(session: Session, adapter_id: int) -> dict[str, Any]:
    """Everything a reviewer decides from: evals, gate, loss curve, data provenance, examples, samples, decisions."""
    adapter = registry.get_adapter(session, adapter_id)
    run = adapter.run
    latest = evaluation.latest_evaluation(session, adapter_id)
    dataset = run.dataset or {}
    decisions = [
        {
            "reviewer": d.reviewer,
            "decision": d.decision,
            "note": d.note,
            "at": d.created_at.isoformat(),
            "eval_summary_sha256": d.eval_summary_hash,
        }
        for d in session.scalars(select(ReviewDecision).where(ReviewDecision.adapter_id == adapter_id).order_by(ReviewDecision.id))
    ]
    approvers = [str(d["reviewer"]) for d in decisions if d["decision"] == "approve"]
    required = settings_of(adapter.line).approvals_required
    return {
        "adapter": registry.as_dict(adapter),
        "approvals_required": required,
        "approvals": {
            "given": len(approvers),
            "required": required,
            "by": approvers,
            "summary": f"{len(approvers)} of {required}" + (f" ({', '.join(approvers)})" if approvers else ""),
        },
        "evaluation": evaluation.as_dict(latest) if latest else None,
        "table": comparison_table(latest) if latest else [],
        "gate": latest.gate if latest else None,
        "suite_cases": suite_cases(session, latest) if latest else {},
        "training": {
            "params": run.params,
            "loss_curve": (run.metrics or {}).get("loss_curve", []),
            "steps": (run.metrics or {}).get("steps"),
            "seconds": (run.metrics or {}).get("seconds"),
            "heldout_loss_before": (run.metrics or {}).get("heldout_loss_before"),
            "heldout_loss_after": (run.metrics or {}).get("heldout_loss_after"),
            "learned": (run.metrics or {}).get("learned"),
            "stop_reason": (run.metrics or {}).get("stop_reason"),
            "summary": learning.summary(run.metrics) if run.metrics else None,
        },
        "provenance": {
            "examples": dataset.get("splits", {}),
            "sources": _source_shares(dataset.get("sources", {})),
            "capped_sources": dataset.get("capped_sources", {}),
            "duplicates_removed": dataset.get("duplicates_removed", {}),
            "reference": dataset.get("reference", {}),
        },
        "training_examples": _training_examples(session, run.id, adapter_id),
        "training_examples_total": dataset.get("splits", {}).get("train", 0),
        "hygiene": hygiene(dataset),
        "poisoning": poisoning_checks(dataset),
        "samples": latest.samples if latest else [],
        "decisions": decisions,
        "canaries": activations.canary_history(session, adapter) if adapter.version is not None else [],
    }


def hygiene(dataset: dict[str, Any]) -> str:
    """The dataset's poisoning hygiene in words: what was collapsed, capped, moved or left out."""
    duplicates = dataset.get("duplicates_removed", {})
    capped = dataset.get("capped_sources", {})
    moved = sum(dataset.get("heldout_moved_to_train", {}).values())
    overridden = dataset.get("reference", {}).get("overridden", 0)
    parts = [
        f"{duplicates.get('exact', 0)} exact and {duplicates.get('normalised', 0)} retyped duplicates collapsed",
        (
            f"{sum(capped.values())} examples over the per-source cap dropped from {len(capped)} source"
            f"{'s' if len(capped) != 1 else ''} ({', '.join(capped)})"
            if capped
            else "no source over the per-source cap"
        ),
    ]
    if moved:
        parts.append(f"{moved} held-out examples moved to training (their prompt was also trained on)")
    if overridden:
        parts.append(f"{overridden} reference anchors left out (the feedback answers their prompt)")
    return "; ".join(parts)


def poisoning_checks(dataset: dict[str, Any]) -> dict[str, Any]:
    """The run's poisoning checks (adapterctl.poisoning) with a one-line summary; a run from before them says so."""
    checks = dataset.get("poisoning") or {
        "checked": False,
        "flags": [],
        "flagged": 0,
        "held_out": 0,
        "quarantined": {"records": 0, "sources": {}},
    }
    flags, kept_out = checks["flags"], checks["quarantined"]
    parts = [f"{len(flags)} flag{'' if len(flags) == 1 else 's'}" if flags else "nothing flagged"]
    if checks["held_out"]:
        parts.append(f"{checks['held_out']} flagged records held out of training")
    elif checks.get("flagged"):
        parts.append(f"{checks['flagged']} flagged records TRAINED ON (poisoning.hold_flagged is off)")
    sources = len(kept_out["sources"])
    parts.append(
        f"{kept_out['records']} records of {sources} quarantined source{'' if sources == 1 else 's'} kept out"
        if kept_out["records"]
        else "no records of quarantined sources"
    )
    summary = ", ".join(parts) if checks["checked"] else "not checked (the run is older than the poisoning checks)"
    return {**checks, "summary": summary}


def comparison_table(latest) -> list[dict[str, Any]]:
    """One row per metric: its value for each model and the candidate's change against base and active."""
    models = {r.role: r.metrics for r in latest.results}
    subject = "candidate" if "candidate" in models else "version"
    rows = []

    def row(name: str, values: dict[str, float | None], higher_is_better: bool) -> None:
        entry = {"metric": name, **values, "higher_is_better": higher_is_better}
        for other in ("base", "active"):
            if (mine := values.get(subject)) is not None and (theirs := values.get(other)) is not None:
                entry[f"delta_vs_{other}"] = round(mine - theirs, 4)
        rows.append(entry)

    if models[subject]["heldout_cases"]:
        row("heldout exact match", {role: m.get("heldout_exact") for role, m in models.items()}, True)
        row("heldout loss", {role: m.get("heldout_loss") for role, m in models.items()}, False)
    for name in models[subject]["suites"]:
        row(
            f"suite {name} v{models[subject]['suites'][name]['version']}",
            {role: m["suites"][name]["score"] for role, m in models.items()},
            True,
        )
    if "reference_agreement" in models[subject]:
        row(
            f"reference agreement ({models[subject]['reference']}, {models[subject]['reference_cases']} cases)",
            {role: m.get("reference_agreement") for role, m in models.items()},
            True,
        )
        for other in ("base", "active"):
            for how in ("normalised", "exact"):
                if other in models:
                    row(
                        f"reference: same answer as {other} ({how})",
                        {role: 1.0 if role == other else m.get("agreement", {}).get(other, {}).get(how) for role, m in models.items()},
                        True,
                    )
    row(f"reference loss ({models[subject]['reference']})", {role: m["reference_loss"] for role, m in models.items()}, False)
    for name, measured in models[subject].get("versions", {}).items():
        row(
            f"{name}'s data exact match ({measured['cases']} cases)",
            {role: m.get("versions", {}).get(name, {}).get("exact") for role, m in models.items()},
            True,
        )
    return rows


def suite_cases(session: Session, latest) -> dict[str, list[dict[str, Any]]]:
    """Every regression suite case with whether each model passed it."""
    models = {r.role: r.metrics for r in latest.results}
    line = latest.line.name
    cases = {}
    for name, version in (latest.settings or {}).get("suites", {}).items():
        failed = {role: set(m["suites"].get(name, {}).get("failed", ())) for role, m in models.items()}
        if not all("failed" in m["suites"].get(name, {}) for m in models.values()):
            continue  # measured before per-case results were kept
        suite = suites.get_suite(session, line=line, name=name, version=version)
        cases[name] = [
            {
                "case": i + 1,
                "prompt": case["prompt"][-1]["content"],
                "expected": case["expected"],
                "match": case["match"],
                **{role: i not in failed[role] for role in models},
            }
            for i, case in enumerate(suite.cases)
        ]
    return cases


def _source_shares(sources: dict[str, int]) -> list[dict[str, Any]]:
    total = sum(sources.values()) or 1
    return [{"source": s, "examples": n, "share": round(n / total, 4)} for s, n in sorted(sources.items(), key=lambda kv: -kv[1])]


def _training_examples(session: Session, run_id: int, adapter_id: int) -> list[dict[str, Any]]:
    """A few of the examples the adapter was trained on, the same ones each time it is shown."""
    ids = sorted(session.scalars(select(RunExample.feedback_id).where(RunExample.run_id == run_id, RunExample.split == "train")))
    chosen = random.Random(adapter_id).sample(ids, min(TRAINING_EXAMPLES_SHOWN, len(ids)))
    rows = list(session.scalars(select(Feedback).where(Feedback.id.in_(chosen)).order_by(Feedback.id))) if chosen else []
    examples: list[dict[str, Any]] = []
    for row in rows:
        example = example_of(row)
        if example is None:  # forgotten since: only the tombstone remains
            examples.append({"feedback_id": row.id, "forgotten": True})
        else:
            examples.append(
                {"feedback_id": row.id, "source": row.source, "kind": example.kind, "prompt": example.prompt, "answer": example.answer}
            )
    return examples
