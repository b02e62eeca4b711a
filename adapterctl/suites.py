"""Evaluation suites: versioned sets of cases a line's models are measured on.

A regression suite holds prompts and expected answers with a match rule each. The reference set
(kind "reference") holds what the base model knows and the line must keep: a stable hash splits its
prompt/answer cases in two parts, the line's `reference_anchor_share` that every training run mixes
in as anchors, and the rest, whose loss (with every text case) measures how far an adapter moved the
model away from it. The two never overlap, so the measurement stays honest. Suites are never edited: adding a suite under an existing name with different
cases stores the next version, and every evaluation names the versions it used. The one exception: forgetting feedback removes the
cases the base model wrote with it in context from every version of a synthesized reference set (`erasure`), and rehashes them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapterctl import audit, json_input
from adapterctl.dataset import normalise
from adapterctl.db.models import EvalSuite
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.feedback import DEFAULT_MAX_FIELD_BYTES, line_roles, parse_prompt
from adapterctl.lines import get_line, settings_of
from adapterctl.names import check_name

MATCH_RULES = ("exact", "normalised", "contains", "regex")
KINDS = ("regression", "reference")
REFERENCE = "reference"  # the name of a line's reference set
MAX_CASES = 10_000


def parse_cases(path: Path, *, kind: str, default_match: str) -> list[dict[str, Any]]:
    """Read and validate a suite file (JSONL); errors name the line and the field, nothing is kept."""
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if default_match not in MATCH_RULES:
        raise InvalidInput(f"--match must be one of {', '.join(MATCH_RULES)} (got {default_match!r})")
    cases = json_input.read_lines(path, _reference_case if kind == "reference" else lambda record: _regression_case(record, default_match))
    if not cases:
        raise InvalidInput(f"{path.name} holds no cases")
    if len(cases) > MAX_CASES:
        raise InvalidInput(f"{path.name} holds {len(cases)} cases, more than the limit of {MAX_CASES}")
    return cases


def _regression_case(record: Any, default_match: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise InvalidInput("a case must be a JSON object with 'prompt' and 'expected'")
    if unknown := sorted(set(record) - {"prompt", "expected", "match"}):
        raise InvalidInput(f"unknown field {unknown[0]!r}; a case has prompt, expected and match")
    prompt = parse_prompt(record.get("prompt"), DEFAULT_MAX_FIELD_BYTES)
    expected = record.get("expected")
    if not isinstance(expected, str) or not expected.strip():
        raise InvalidInput("field 'expected' must be a non-empty string")
    match = record.get("match", default_match)
    if match not in MATCH_RULES:
        raise InvalidInput(f"field 'match' must be one of {', '.join(MATCH_RULES)} (got {match!r})")
    if match == "regex":
        try:
            re.compile(expected)
        except re.error as exc:
            raise InvalidInput(f"field 'expected' is not a valid regular expression: {exc}") from None
    return {"prompt": prompt, "expected": expected, "match": match}


def _reference_case(record: Any) -> dict[str, Any]:
    """A text (loss on every token) or a prompt and its answer (loss on the answer)."""
    if not isinstance(record, dict):
        raise InvalidInput("a reference case must be a JSON object with 'text', or 'prompt' and 'answer'")
    if "text" in record:
        if set(record) != {"text"} or not isinstance(record["text"], str) or not record["text"].strip():
            raise InvalidInput("field 'text' must be a non-empty string, alone in its case")
        return {"text": record["text"]}
    if unknown := sorted(set(record) - {"prompt", "answer"}):
        raise InvalidInput(f"unknown field {unknown[0]!r}; a reference case has text, or prompt and answer")
    answer = record.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInput("field 'answer' must be a non-empty string")
    return {"prompt": parse_prompt(record.get("prompt"), DEFAULT_MAX_FIELD_BYTES), "answer": answer}


def anchors_training(case: dict[str, Any], share: float) -> bool:
    """Whether a reference case is in the `share` that training mixes in (else it measures forgetting)."""
    if "answer" not in case:
        return False
    digest = hashlib.sha256(("adapterctl-reference:" + audit.canonical_json(case)).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") < share * 2**32


def passes(answer: str, case: dict[str, Any]) -> bool:
    expected, rule = case["expected"], case["match"]
    if rule == "exact":
        return answer.strip() == expected.strip()
    if rule == "normalised":
        return normalise(answer) == normalise(expected)
    if rule == "contains":
        return normalise(expected) in normalise(answer)
    return re.search(expected, answer) is not None


def add_suite(
    session: Session, *, line: str, name: str, cases: list[dict[str, Any]], kind: str, actor: str, provenance: dict[str, Any] | None = None
) -> tuple[EvalSuite, bool]:
    """Store the cases as the suite's next version; (suite, False) when they equal the newest version.

    `provenance` says how adapterctl made the cases (a synthesized reference set); None: a person gave them.
    """
    check_name(name, "suite")
    if (name == REFERENCE) != (kind == "reference"):
        raise InvalidInput(f"the reference set is the suite named {REFERENCE!r}; regression suites take other names")
    line_row = get_line(session, line)
    roles = line_roles(session, line)  # a case the chat template cannot render would fail every evaluation
    for number, case in enumerate(cases, start=1):
        if "prompt" in case:
            try:
                roles.check([message["role"] for message in case["prompt"]])
            except InvalidInput as exc:
                raise InvalidInput(f"case {number}: {exc}") from None
    digest = content_hash(cases)
    newest = newest_version(session, line_row.id, name)
    if newest is not None and newest.content_hash == digest:
        return newest, False
    suite = EvalSuite(
        line_id=line_row.id,
        name=name,
        version=(newest.version + 1) if newest else 1,
        kind=kind,
        cases=cases,
        content_hash=digest,
        created_by=actor,
        provenance=provenance,
    )
    session.add(suite)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="suite.synthesize" if provenance else "suite.add",
        subject=f"line:{line}",
        payload={
            "suite": name,
            "version": suite.version,
            "kind": kind,
            "cases": len(cases),
            "sha256": digest,
            **({"base_model_hash": provenance.get("base_model_hash")} if provenance else {}),
        },
    )
    return suite, True


def content_hash(cases: list[dict[str, Any]]) -> str:
    return hashlib.sha256(audit.canonical_json(cases).encode("utf-8")).hexdigest()


def case_seeds(suite: EvalSuite) -> list[list[int] | None]:
    """For each case of a suite version, the ids of the feedback the base model was shown when it wrote the case:
    [] for none (or a person gave the case), None when unknown (synthesized before provenance named them)."""
    if suite.provenance is None:
        return [[] for _ in suite.cases]
    seeds = suite.provenance.get("seeds")
    return list(seeds) if isinstance(seeds, list) and len(seeds) == len(suite.cases) else [None] * len(suite.cases)


def newest_version(session: Session, line_id: int, name: str) -> EvalSuite | None:
    return session.scalar(
        select(EvalSuite).where(EvalSuite.line_id == line_id, EvalSuite.name == name).order_by(EvalSuite.version.desc()).limit(1)
    )


def current_suites(session: Session, line_id: int) -> list[EvalSuite]:
    """The newest version of each suite of a line, by name (the reference set included)."""
    newest = (
        select(EvalSuite.name, func.max(EvalSuite.version).label("version"))
        .where(EvalSuite.line_id == line_id)
        .group_by(EvalSuite.name)
        .subquery()
    )
    query = (
        select(EvalSuite)
        .join(newest, (EvalSuite.name == newest.c.name) & (EvalSuite.version == newest.c.version))
        .where(EvalSuite.line_id == line_id)
        .order_by(EvalSuite.name)
    )
    return list(session.scalars(query))


def get_suite(session: Session, *, line: str, name: str, version: int | None = None) -> EvalSuite:
    line_row = get_line(session, line)
    query = select(EvalSuite).where(EvalSuite.line_id == line_row.id, EvalSuite.name == name)
    suite = session.scalar(query.where(EvalSuite.version == version) if version else query.order_by(EvalSuite.version.desc()).limit(1))
    if suite is None:
        wanted = f"{name} version {version}" if version else name
        raise NotFound(f"line {line!r} has no suite {wanted}; see `adapterctl eval suite list --line {line}`")
    return suite


def as_dict(suite: EvalSuite, *, with_cases: bool = False) -> dict[str, Any]:
    values = {
        "line": suite.line.name,
        "name": suite.name,
        "version": suite.version,
        "kind": suite.kind,
        "cases": len(suite.cases),
        "sha256": suite.content_hash,
        "created_at": suite.created_at.isoformat(),
        "created_by": suite.created_by,
        "provenance": suite.provenance,
    }
    if suite.kind == "reference":
        share = settings_of(suite.line).reference_anchor_share
        values["training_anchors"] = sum(anchors_training(case, share) for case in suite.cases)
    if with_cases:
        values["cases"] = suite.cases
    return values
