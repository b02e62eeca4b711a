"""The gate's thresholds against candidates built to be good and built to be bad, on two base sizes.

    .venv/bin/python bench/gate.py            # both base sizes, about 10 minutes on a 2-core CPU
    .venv/bin/python bench/gate.py --quick    # smoke run of the same code (numbers mean little)

The scenario is bench/forgetting.py's: a tiny Llama pretrained on fact set A is the base model of a
line with default settings. Version 1 learns B1 (cars' colours) with `adapterctl train`'s defaults,
its reference set synthesized by the base model, and is approved and promoted. Then four candidates
train on the line, each from new feedback of its own, and each meets the gate as `adapterctl train`
evaluates it (`adapterctl.runs.train_line`, `adapterctl.evaluation`):

  - good: corrections teaching B2 (what each box holds), defaults;
  - learned little: corrections teaching what each drawer holds, stopped after 2 steps;
  - empty answers: the served model answered nothing (a broken deploy) and every empty response was
    rated +1: questions about crates and about half of A, as the server logs issued responses;
  - forgot v1: corrections teaching what each locker holds, with replay of v1's data turned off.

Printed: each candidate's value of every check and the gate's verdict, then per threshold the worst
value a good candidate reached and the value of each bad candidate built to fail it: the margin on
each side of the default.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapterctl import activations, feedback, registry, review
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import DataSettings
from adapterctl.lines import GateThresholds, LineSettings, create_line
from adapterctl.runs import TrainRequest, train_line
from adapterctl.training import TrainSettings
from bench.forgetting import FULL, ITEMS, QUICK, Fact, log_corrections, make_facts, open_workspace, pretrain_base


@dataclass(frozen=True)
class Candidate:
    name: str
    noun: str
    """Its feedback asks what each <noun> holds."""
    built_to_fail: str | None
    """The check the candidate is built to fail; None: built to pass."""
    training: TrainSettings = TrainSettings()
    data: DataSettings | None = None
    empty: bool = False
    """Empty issued responses rated +1 instead of corrections."""


CANDIDATES = [
    Candidate("good", "box", None),
    Candidate("learned little", "drawer", "learned", training=replace(TrainSettings(), target_learned=None, max_steps=2)),
    Candidate("empty answers", "crate", "degenerate output", empty=True),
    Candidate("forgot v1", "locker", "keeps v1", data=DataSettings(replay_fraction=0.0)),
]
CHECKS = ("learned", "heldout gain", "keeps the reference set", "keeps v1", "degenerate output")


def holds(noun: str, count: int, seed: int) -> list[Fact]:
    rng = random.Random(f"{noun}-{seed}")
    return [(f"What is in {noun} {i}?", f"{noun.capitalize()} {i} holds the {rng.choice(ITEMS)}.") for i in range(count)]


def log_empty_answers(ws, line: str, questions: list[str]) -> None:
    """What a server logs when its model answered nothing and the user rated the answer +1."""
    records = [
        (line, feedback.parse_record({"prompt": q, "response": "", "rating": 1, "source": f"rater-{i % 8}"}, issued=True))
        for i, q in enumerate(questions)
    ]
    with ws.transaction() as session:
        feedback.log_records(session, records, actor="bench")


def make_v1(ws, line: str, base_name: str, facts: dict[str, list[Fact]]) -> None:
    with ws.transaction() as session:
        create_line(session, name=line, base=f"tiny-{base_name}", actor="bench", settings=LineSettings())
        review.add_reviewer(session, name=f"reviewer-{line}", role="reviewer", actor="bench")
    log_corrections(ws, line, facts["B1"], "b1")
    outcome = train_line(ws, TrainRequest(line))
    with ws.transaction() as session:
        if outcome.candidate_status != "pending_review":  # approved regardless: v1 is the scenario, not the subject
            registry.transition(session, outcome.candidate_id, "pending_review", actor="bench", reason="gate bench")
        review.approve(session, outcome.candidate_id, reviewer=f"reviewer-{line}")
        activations.promote(session, ArtifactStore(ws.settings.artifacts_dir), line=line, version=1, actor="bench")
    print(
        f"    v1: {outcome.metrics['stop_reason']} at step {outcome.metrics['steps']}, gate {'passed' if outcome.gate['passed'] else 'failed'}",
        flush=True,
    )


def train_candidate(ws, line: str, candidate: Candidate, facts: dict[str, list[Fact]], count: int, seed: int) -> dict:
    if candidate.empty:
        half_of_a = [q for q, _ in facts["A_eval"][: len(facts["A_eval"]) // 2]]
        log_empty_answers(ws, line, [q for q, _ in holds(candidate.noun, count, seed)] + half_of_a)
    else:
        log_corrections(ws, line, holds(candidate.noun, count, seed), candidate.noun)
    outcome = train_line(ws, TrainRequest(line, training=candidate.training, data=candidate.data))
    return outcome.gate


def value(gate: dict, check: str) -> str:
    found = next((c for c in gate["checks"] if c["check"] == check), None)
    if found is None:
        return "-"
    mark = {"pass": "", "fail": " FAIL"}.get(found["verdict"], " n/a")
    return f"{found['value']:+.2f}{mark}" if check == "heldout gain" else f"{found['value']:.2f}{mark}"


def print_tables(rows: list[tuple[Candidate, str, dict]]) -> None:
    print("| candidate | base | " + " | ".join(CHECKS) + " | gate |")
    print("| --- | --- |" + " ---: |" * len(CHECKS) + " :---: |")
    for candidate, base, gate in rows:
        print(
            f"| {candidate.name} | {base} | " + " | ".join(value(gate, c) for c in CHECKS) + f" | {'pass' if gate['passed'] else 'FAIL'} |"
        )
    thresholds = GateThresholds()
    limits = {
        "learned": ("min_learned", "min"),
        "keeps the reference set": ("max_reference_drop", "max"),
        "keeps v1": ("max_version_drop", "max"),
        "degenerate output": ("max_degenerate_share", "max"),
    }
    print("\n| check | default | worst of the good candidates | the candidate built to fail it |")
    print("| --- | ---: | ---: | ---: |")
    for check, (setting, bound) in limits.items():
        good = [v for c, _, g in rows if c.built_to_fail is None for v in [_raw(g, check)] if v is not None]
        bad = [f"{_raw(g, check):.2f} ({base})" for c, base, g in rows if c.built_to_fail == check and _raw(g, check) is not None]
        worst = (min(good) if bound == "min" else max(good)) if good else None
        print(
            f"| {check} | {'≥' if bound == 'min' else '≤'} {getattr(thresholds, setting):g} ({setting}) | "
            f"{'-' if worst is None else f'{worst:.2f}'} | {', '.join(bad) or '-'} |"
        )


def _raw(gate: dict, check: str) -> float | None:
    return next((c["value"] for c in gate["checks"] if c["check"] == check), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes (numbers mean little)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    scale = QUICK if args.quick else FULL
    wall = time.perf_counter()
    facts = make_facts(scale, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="adapterctl-gate-") as tmp:
        root = Path(tmp)
        bases = [pretrain_base(root, facts, 2, scale.hidden, scale, args.seed), pretrain_base(root, facts, *scale.large, scale, args.seed)]
        ws = open_workspace(root / "home", bases)
        for base in bases:
            line = f"gate-{base.name}"
            print(f"  {line}", flush=True)
            make_v1(ws, line, base.name, facts)
            for candidate in CANDIDATES:
                started = time.perf_counter()
                gate = train_candidate(ws, line, candidate, facts, scale.b_facts, args.seed)
                rows.append((candidate, base.name, gate))
                print(
                    f"    {candidate.name}: gate {'passed' if gate['passed'] else 'failed: ' + '; '.join(gate['reasons'])} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        ws.close()
    print()
    print_tables(rows)
    print(
        f"\n{scale.b_facts} facts per candidate; bases (layers x width): {', '.join(b.name for b in bases)}; "
        f"wall time {time.perf_counter() - wall:.0f} s"
    )


if __name__ == "__main__":
    main()
