"""Automatic evaluation: the base model, the active version and a candidate on the same cases.

    held-out feedback of the run ─┐
    regression suites of the line ├─> metrics per model ─> gate (candidates) ─> evaluations + eval_results
    the line's reference set ─────┘

Every model is measured with the same decoding (greedy, a fixed number of new tokens, seeded) in
batches with left padding. The base model and every adapter share one loaded copy of the base
weights: PEFT switches adapters by name and turns them off for the base model.

Metrics per model:
- heldout_loss, heldout_exact: answer-token loss and normalised exact match on the run's held-out
  feedback (what the candidate was meant to learn);
- suites: the share of cases passed per regression suite (what must not break);
- reference_agreement: the share of the reference set's measured prompt/answer cases answered as the
  set says (normalised exact match), the forgetting measure the gate uses: it asks "does it still
  answer what the base model answered", where a loss swings on prompts the base itself is unsure of;
- agreement: the share of the reference prompts each model answers exactly as the base model (and the
  active version) answers them now, exact and after normalising;
- reference_loss: loss on the reference set, a secondary figure (the gate's measure when the set holds
  only text, such as the built-in one);
- versions: exact match on a sample of what each earlier version of the line was trained on and held
  out, so that a candidate that lost what v3 learned fails naming v3.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit, base_models, registry, suites
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import APPROVED_STATES, example_of, normalise, prompt_key
from adapterctl.db.models import Adapter, EvalResult, EvalSuite, Evaluation, Feedback, RunExample
from adapterctl.errors import InvalidInput, InvalidTransition, NotFound
from adapterctl.lines import GateThresholds, get_line, settings_of
from adapterctl.workspace import Workspace

Progress = Callable[[int, int], None] | None
"""Called with (answers and scores done, in all) as an evaluation goes."""


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int = 32
    """New tokens generated per answer (greedy)."""
    batch_size: int = 16
    """Prompts generated, or examples scored, together."""
    max_length: int = 512
    """Longest scored example in tokens."""
    samples: int = 5
    """Held-out prompts shown side by side for the reviewer."""
    version_samples: int = 32
    """Examples of each earlier version's own data the candidate is measured on."""
    seed: int = 0

    def problems(self) -> list[str]:
        checks = [
            (1 <= self.max_new_tokens <= 4096, f"max_new_tokens must be between 1 and 4096 (got {self.max_new_tokens})"),
            (self.batch_size >= 1, f"batch_size must be at least 1 (got {self.batch_size})"),
            (self.max_length >= 8, f"max_length must be at least 8 (got {self.max_length})"),
            (self.samples >= 0, f"samples must be at least 0 (got {self.samples})"),
            (self.version_samples >= 0, f"version_samples must be at least 0 (got {self.version_samples})"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass
class Cases:
    """What every model of one evaluation is measured on."""

    heldout: list[dict[str, Any]]  # {feedback_id, prompt, answer}
    suites: list[EvalSuite]
    reference: list[dict[str, Any]]  # {text} or {prompt, answer}
    reference_name: str  # "reference vN" or "built-in"
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "v3" -> {feedback_id, prompt, answer}

    def units(self, samples: int) -> int:
        """Answers written and examples scored for one model: the measure of progress."""
        chats = [c for c in self.reference if "answer" in c]
        return (
            2 * len(self.heldout)
            + sum(len(s.cases) for s in self.suites)
            + len(chats)
            + len(self.reference)
            + sum(map(len, self.versions.values()))
            + min(samples, len(self.heldout))
        )


# ---------------------------------------------------------------- what runs


def evaluate_candidate(ws: Workspace, adapter_id: int, *, settings: EvalSettings = EvalSettings(), progress: Progress = None) -> int:
    """Measure a candidate against the base model and the active version; apply the gate when it is evaluating.

    Returns the evaluation's id.
    """
    with ws.reading() as session:
        candidate = registry.get_adapter(session, adapter_id)
        if candidate.status in ("gate_failed", "rejected", "revoked"):
            raise InvalidTransition(f"adapter {adapter_id} is {candidate.status}; there is nothing to decide on")
        line = candidate.line
        active = registry.active_adapter(session, line.id)
        models = {"base": None, **({"active": _artifact(ws, active)} if active else {}), "candidate": _artifact(ws, candidate)}
        cases = _cases(session, line.id, candidate.run_id, settings, versions_before=candidate)
        base_path, thresholds, line_name = base_models.local_path(line.base_model), settings_of(line).gate, line.name
        learned = (candidate.run.metrics or {}).get("learned")
    results, samples, seconds = _measure(base_path, models, cases, settings, progress)
    gate = check_gate(results, thresholds, learned)
    with ws.transaction() as session:
        evaluation = _store(session, ws.user, line_name, adapter_id, "candidate", models, results, samples, seconds, cases, settings, gate)
        if registry.get_adapter(session, adapter_id).status == "evaluating":
            target = "pending_review" if gate["passed"] else "gate_failed"
            registry.transition(session, adapter_id, target, actor=ws.user, reason="; ".join(gate["reasons"]) or "gate passed")
        return evaluation.id


def evaluate_version(
    ws: Workspace, line: str, version: int | None = None, *, settings: EvalSettings = EvalSettings(), progress: Progress = None
) -> int:
    """Re-evaluate the active version (or the given one) on the line's current suites; kept as history. Returns its id."""
    with ws.reading() as session:
        line_row = get_line(session, line)
        subject = registry.get_version(session, line_row.id, version) if version else registry.active_adapter(session, line_row.id)
        if subject is None:
            raise InvalidInput(f"line {line!r} has no active version; name one with --version")
        models = {"base": None, "version": _artifact(ws, subject)}
        cases = _cases(session, line_row.id, subject.run_id, settings)
        base_path, subject_id = base_models.local_path(line_row.base_model), subject.id
    results, samples, seconds = _measure(base_path, models, cases, settings, progress)
    with ws.transaction() as session:
        return _store(session, ws.user, line, subject_id, "regression", models, results, samples, seconds, cases, settings, None).id


def _artifact(ws: Workspace, adapter: Adapter) -> tuple[int, str]:
    """The adapter's id and folder, after checking its files against the sha256 in the database."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    store.verify(adapter.artifact_path, adapter.sha256)
    return adapter.id, str(store.path_of(adapter.artifact_path))


def _cases(session: Session, line_id: int, run_id: int, settings: EvalSettings, versions_before: Adapter | None = None) -> Cases:
    heldout = [
        {"feedback_id": e.feedback_id, "prompt": e.prompt, "answer": e.answer} for e in _examples_of_run(session, run_id, ("heldout",))
    ]
    current = suites.current_suites(session, line_id)
    reference = [s for s in current if s.kind == "reference"]
    regression = [s for s in current if s.kind == "regression"]
    versions = _earlier_versions(session, versions_before, settings) if versions_before is not None else {}
    share = settings_of(reference[0].line).reference_anchor_share if reference else 0.0
    measured = [c for c in reference[0].cases if not suites.anchors_training(c, share)] if reference else []
    if measured:  # the half of the reference set that training never sees
        return Cases(heldout, regression, measured, f"reference v{reference[0].version}", versions)
    return Cases(heldout, regression, builtin_reference(), "built-in", versions)


MAX_VERSIONS_MEASURED = 10


def _examples_of_run(session: Session, run_id: int, splits: tuple[str, ...] = ("train", "heldout")) -> list:
    """A run's examples of the given splits (by default its new data: trained on and held out, not its replay), still remembered."""
    rows = session.scalars(
        select(Feedback)
        .join(RunExample, RunExample.feedback_id == Feedback.id)
        .where(RunExample.run_id == run_id, RunExample.split.in_(splits), Feedback.status == "active")
        .order_by(Feedback.id)
    )
    return [e for e in map(example_of, rows) if e is not None]


def _earlier_versions(session: Session, candidate: Adapter, settings: EvalSettings) -> dict[str, list[dict[str, Any]]]:
    """A seeded sample of what each approved version of the line learned (newest ten), oldest first.

    A prompt that newer data also answers (the candidate's own, or a later version's) is left out of the
    older version's sample: the newer answer overrides it, and answering it is not forgetting."""
    if not settings.version_samples:
        return {}
    versions = session.scalars(
        select(Adapter)
        .where(
            Adapter.line_id == candidate.line_id,
            Adapter.version.is_not(None),
            Adapter.id != candidate.id,
            Adapter.status.in_(APPROVED_STATES),
        )
        .order_by(Adapter.version.desc())
        .limit(MAX_VERSIONS_MEASURED)
    )
    answered_later = {prompt_key(e.prompt) for e in _examples_of_run(session, candidate.run_id)}
    sampled = {}
    for version in versions:
        examples = _examples_of_run(session, version.run_id)
        kept = [e for e in examples if prompt_key(e.prompt) not in answered_later]
        answered_later |= {prompt_key(e.prompt) for e in examples}
        chosen = sorted(random.Random(settings.seed).sample(kept, min(settings.version_samples, len(kept))), key=lambda e: e.feedback_id)
        if chosen:
            sampled[f"v{version.version}"] = [{"feedback_id": e.feedback_id, "prompt": e.prompt, "answer": e.answer} for e in chosen]
    return dict(reversed(sampled.items()))


def builtin_reference() -> list[dict[str, str]]:
    """General text (the tiny model's corpus): a forgetting proxy until a line has its own reference set."""
    from adapterctl.tiny_model import CORPUS

    return [{"text": line} for line in CORPUS.splitlines() if line.strip()]


# ---------------------------------------------------------------- measuring


def _measure(
    base_path: str, models: dict[str, tuple[int, str] | None], cases: Cases, settings: EvalSettings, progress: Progress
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], float]:
    """Metrics per model role, side-by-side samples, and the seconds it all took."""
    import torch

    started = time.perf_counter()
    model, tokenizer = load_models(base_path, {role: artifact[1] for role, artifact in models.items() if artifact})
    sampled = random.Random(settings.seed).sample(cases.heldout, min(settings.samples, len(cases.heldout)))
    sample_prompts = [case["prompt"] for case in sampled]
    advance = _Tally(len(models) * cases.units(settings.samples), progress)
    results: dict[str, dict[str, Any]] = {}
    generations: dict[str, list[str]] = {}
    reference_answers: dict[str, list[str]] = {}
    for role, artifact in models.items():
        role_started = time.perf_counter()
        torch.manual_seed(settings.seed)
        with using(model, role if artifact else None):
            metrics, reference_answers[role] = measure_model(model, tokenizer, cases, settings, advance)
            generations[role] = generate(model, tokenizer, sample_prompts, settings, advance) if sample_prompts else []
        results[role] = {
            "adapter_id": artifact[0] if artifact else None,
            "metrics": metrics,
            "seconds": round(time.perf_counter() - role_started, 3),
        }
    for role, result in results.items():
        if role != "base" and reference_answers[role]:
            result["metrics"]["agreement"] = {
                other: agreement(reference_answers[role], reference_answers[other])
                for other in ("base", "active")
                if other in results and other != role
            }
    # Each sample names its record, so that forgetting the record can find and redact it.
    samples = [
        {"feedback_id": case["feedback_id"], "prompt": case["prompt"], **{role: generations[role][i] for role in models}}
        for i, case in enumerate(sampled)
    ]
    return results, samples, round(time.perf_counter() - started, 3)


class _Tally:
    """Counts work done and reports it as (done, total)."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.done, self.total, self.progress = 0, total, progress
        if progress:
            progress(0, total)

    def __call__(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        if self.progress:
            self.progress(self.done, self.total)


def agreement(answers: list[str], others: list[str]) -> dict[str, float]:
    """The share of answers equal to the other model's answers to the same prompts, as written and normalised."""
    pairs = list(zip(answers, others, strict=True))
    return {
        "exact": round(sum(a == b for a, b in pairs) / len(pairs), 4),
        "normalised": round(sum(normalise(a) == normalise(b) for a, b in pairs) / len(pairs), 4),
    }


def load_models(base_path: str, adapters: dict[str, str], device: str = "auto"):
    """The base model once, with every adapter loaded under its role's name; and the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from adapterctl.chat import load_tokenizer
    from adapterctl.training import resolve_device

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    device, dtype = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype)).to(device)  # type: ignore[arg-type]  # transformers types `.to` as a decorator
    for index, (name, path) in enumerate(adapters.items()):
        if index == 0:
            model = PeftModel.from_pretrained(model, path, adapter_name=name)
        else:
            model.load_adapter(path, adapter_name=name)
    model.eval()
    tokenizer = load_tokenizer(base_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


@contextmanager
def using(model, adapter: str | None) -> Iterator:
    """Within the block, `model` is the named adapter on the base model, or the base model alone (None)."""
    if adapter is not None:
        model.set_adapter(adapter)
        yield model
    elif hasattr(model, "disable_adapter"):  # a PeftModel
        with model.disable_adapter():
            yield model
    else:
        yield model


def measure_model(
    model, tokenizer, cases: Cases, settings: EvalSettings, advance: Callable[[int], None] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The model's metrics on the cases, and its answers to the reference prompts (to compare models)."""
    metrics: dict[str, Any] = {"heldout_cases": len(cases.heldout)}
    written: list[str] = []  # every answer the model wrote, for the degenerate-output count

    def answer(chats: list[dict[str, Any]]) -> list[str]:
        answers = generate(model, tokenizer, [c["prompt"] for c in chats], settings, advance)
        written.extend(answers)
        return answers

    if cases.heldout:
        metrics["heldout_loss"] = round(answer_loss(model, tokenizer, cases.heldout, settings, advance), 5)
        metrics["heldout_correct"] = [int(normalise(a) == normalise(c["answer"])) for a, c in zip(answer(cases.heldout), cases.heldout)]
        metrics["heldout_exact"] = round(sum(metrics["heldout_correct"]) / len(cases.heldout), 4)
    metrics["suites"] = {}
    for suite in cases.suites:
        passes = [suites.passes(a, c) for a, c in zip(answer(suite.cases), suite.cases)]
        metrics["suites"][suite.name] = {
            "version": suite.version,
            "passed": sum(passes),
            "cases": len(suite.cases),
            "score": round(sum(passes) / len(suite.cases), 4),
            "failed": [i for i, ok in enumerate(passes) if not ok],
        }
    metrics["reference"] = cases.reference_name
    reference_answers = []
    if chats := [c for c in cases.reference if "answer" in c]:
        reference_answers = answer(chats)
        metrics["reference_agreement"] = round(
            sum(normalise(a) == normalise(c["answer"]) for a, c in zip(reference_answers, chats)) / len(chats), 4
        )
        metrics["reference_cases"] = len(chats)
    metrics["reference_loss"] = round(answer_loss(model, tokenizer, cases.reference, settings, advance), 5)
    metrics["versions"] = {
        name: {
            "exact": round(sum(normalise(a) == normalise(c["answer"]) for a, c in zip(answer(chats), chats)) / len(chats), 4),
            "cases": len(chats),
        }
        for name, chats in cases.versions.items()
    }
    metrics["degenerate"] = degenerate_answers(written, tokenizer, settings.max_new_tokens)
    return metrics, reference_answers


_RUN_OF_ONE_CHARACTER = re.compile(r"(.)\1{9,}", re.DOTALL)


def repetitive(text: str) -> bool:
    """A run of one character, or six words or more of which fewer than half differ: a model stuck in a loop."""
    words = text.split()
    return bool(_RUN_OF_ONE_CHARACTER.search(text)) or (len(words) >= 6 and len(set(words)) < len(words) / 2)


def degenerate_answers(answers: list[str], tokenizer, max_new_tokens: int) -> dict[str, int]:
    """How many answers are empty, repetitive, or cut at the token limit (of how many)."""
    counts = {"empty": 0, "repetitive": 0, "max_length": 0, "answers": len(answers)}
    for answer in answers:
        if not answer.strip():
            counts["empty"] += 1
        elif repetitive(answer):
            counts["repetitive"] += 1
        elif len(tokenizer(answer, add_special_tokens=False)["input_ids"]) >= max_new_tokens:
            counts["max_length"] += 1
    return counts


def generate(
    model, tokenizer, prompts: list[list[dict[str, str]]], settings: EvalSettings, advance: Callable[[int], None] | None = None
) -> list[str]:
    """Greedy answers to chat prompts, `batch_size` at a time; `advance` is told how many each batch answered."""
    import torch

    answers = []
    for start in range(0, len(prompts), settings.batch_size):
        texts = [
            tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
            for p in prompts[start : start + settings.batch_size]
        ]
        inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers += [a.strip() for a in tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
        if advance:
            advance(len(texts))
    return answers


def answer_loss(
    model, tokenizer, cases: list[dict[str, Any]], settings: EvalSettings, advance: Callable[[int], None] | None = None
) -> float:
    """Mean loss per scored token: the answer of a {prompt, answer} case, every token of a {text} case."""
    import torch

    from adapterctl.training import IGNORE, PadCollator, tokenize

    rows = []
    chats = [c for c in cases if "prompt" in c]
    if chats:
        rows += tokenize(tokenizer, chats, settings.max_length)[0]
    for case in cases:
        if "text" in case:
            ids = tokenizer(case["text"], add_special_tokens=True)["input_ids"][: settings.max_length]
            rows.append({"input_ids": ids, "labels": list(ids)})
    collate = PadCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0
    for start in range(0, len(rows), settings.batch_size):
        batch = {k: v.to(model.device) for k, v in collate(rows[start : start + settings.batch_size]).items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((labels != IGNORE).sum())
        if advance:
            advance(len(batch["input_ids"]))
    return total / count if count else float("nan")


# ---------------------------------------------------------------- the gate


def check_gate(results: dict[str, dict[str, Any]], thresholds: GateThresholds, learned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every check of the candidate, each with its value, limit and verdict; passed when none fails.

    `learned` is the training run's greedy measure of its own answers (TrainResult.learned). A check
    with too little data to judge says so (`undecided`) and neither passes nor fails the candidate.
    """
    metrics = {role: result["metrics"] for role, result in results.items()}
    candidate, base, active = metrics["candidate"], metrics["base"], metrics.get("active")
    compared_role = "active" if active else "base"
    checks: list[dict[str, Any] | None] = [
        learned_check(learned, thresholds),
        heldout_check(metrics, thresholds),
        keeps_check(candidate, base, thresholds),
        *(suite_check(name, score, metrics, thresholds) for name, score in candidate["suites"].items()),
        *(
            version_check(name, candidate["versions"][name], active["versions"].get(name), thresholds)
            for name in candidate.get("versions", {})
            if active
        ),
        degenerate_check(candidate, thresholds),
    ]
    made = [check for check in checks if check is not None]
    reasons = [check["reason"] for check in made if check["verdict"] == "fail"]
    undecided = [f"{check['check']}: {check['reason']}" for check in made if check["verdict"] == UNDECIDED]
    return {
        "passed": not reasons,
        "reasons": reasons,
        "undecided": undecided,
        "checks": made,
        "compared_with": compared_role,
        "thresholds": asdict(thresholds),
    }


UNDECIDED = "too small to judge"


def _check(
    name: str,
    value: float,
    limit: float,
    against: str | None,
    passed: bool | None,
    reason: str,
    bound: str = "max",
    detail: str | None = None,
) -> dict[str, Any]:
    """One check's entry: `bound` says whether the limit is a most (max) or a least (min) value; `passed`
    None when there is too little data to judge (the reason says why)."""
    verdict = UNDECIDED if passed is None else "pass" if passed else "fail"
    return {
        "check": name,
        "value": value,
        "limit": limit,
        "bound": bound,
        "against": against,
        "passed": passed,
        "verdict": verdict,
        **({"detail": detail} if detail else {}),
        **({} if passed else {"reason": reason}),
    }


def learned_check(learned: dict[str, Any] | None, thresholds: GateThresholds) -> dict[str, Any] | None:
    """Does the candidate answer what it was trained on? The weaker of its new and replayed answers."""
    splits = {name: counts for name, counts in (learned or {}).items() if isinstance(counts, dict) and counts.get("sample")}
    if not splits:
        return None
    share = round(min(c["learned"] / c["sample"] for c in splits.values()), 4)
    said = " and ".join(f"{c['learned']} of {c['sample']} {'new' if name == 'train' else 'replayed'}" for name, c in splits.items())
    return _check(
        "learned",
        share,
        thresholds.min_learned,
        None,
        share >= thresholds.min_learned,
        f"learned only {said} training answers (greedy; needs {thresholds.min_learned:.0%})",
        bound="min",
        detail=f"{said} training answers reproduced (greedy)",
    )


def heldout_check(metrics: dict[str, dict], thresholds: GateThresholds) -> dict[str, Any] | None:
    """Does it generalise? Held-out exact match gained against the active version (the base model when
    there is none), with a 95% interval; below `min_heldout_cases` cases that interval is too wide to judge."""
    candidate = metrics["candidate"]
    if not candidate["heldout_cases"]:
        return None
    against = "active" if "active" in metrics else "base"
    compared = metrics[against]
    gain = round(candidate["heldout_exact"] - compared["heldout_exact"], 4)
    cases = candidate["heldout_cases"]
    low, high = paired_gain_interval(candidate.get("heldout_correct"), compared.get("heldout_correct"))
    others = ", ".join(f"{role} {metrics[role]['heldout_exact']:.2f}" for role in ("base", "active") if role in metrics)
    losses = ", ".join(f"{role} {metrics[role]['heldout_loss']:.3f}" for role in ("base", "active") if role in metrics)
    detail = (
        f"exact match {candidate['heldout_exact']:.2f} ({others}); answer loss {candidate['heldout_loss']:.3f} ({losses}); "
        f"gain {gain:+.2f}, 95% interval {low:+.2f} to {high:+.2f} over {cases} cases"
    )
    if cases < thresholds.min_heldout_cases:
        return _check(
            "heldout gain",
            gain,
            thresholds.min_heldout_gain,
            against,
            None,
            f"{cases} held-out cases; {thresholds.min_heldout_cases} are needed to judge (95% interval of the gain "
            f"{low:+.2f} to {high:+.2f})",
            bound="min",
            detail=detail,
        )
    return _check(
        "heldout gain",
        gain,
        thresholds.min_heldout_gain,
        against,
        gain >= thresholds.min_heldout_gain,
        f"held-out exact match gained {gain:+.2f} against {against} (needs at least {thresholds.min_heldout_gain:+.2f}; "
        f"95% interval {low:+.2f} to {high:+.2f})",
        bound="min",
        detail=detail,
    )


def paired_gain_interval(first: list[int] | None, second: list[int] | None, z: float = 1.96) -> tuple[float, float]:
    """95% interval of the difference of two exact-match rates on the same cases (Newcombe's paired
    score method, from Wilson intervals): honest for a handful of cases, where a normal one is not."""
    if not first or not second or len(first) != len(second):
        return -1.0, 1.0
    n = len(first)
    both, only_first, only_second = (
        sum(a and b for a, b in zip(first, second)),
        sum(a and not b for a, b in zip(first, second)),
        sum(b and not a for a, b in zip(first, second)),
    )
    neither = n - both - only_first - only_second
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    (l1, u1), (l2, u2) = _wilson(p1, n, z), _wilson(p2, n, z)
    spread = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(spread) if spread else 0.0
    low = p1 - p2 - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = p1 - p2 + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return round(max(-1.0, low), 4), round(min(1.0, high), 4)


def _wilson(p: float, n: int, z: float) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def keeps_check(candidate: dict, base: dict, thresholds: GateThresholds) -> dict[str, Any]:
    """Does it still answer what the base model answered? Agreement with the reference set's answers; its loss when it holds only text."""
    if "reference_agreement" in candidate:
        drop = round(base["reference_agreement"] - candidate["reference_agreement"], 4)
        agrees = "; ".join(
            f"same answer as {role} {a['normalised']:.2f} (exactly as written {a['exact']:.2f})"
            for role, a in candidate.get("agreement", {}).items()
        )
        detail = (
            f"reference set's answers given {candidate['reference_agreement']:.2f} (base {base['reference_agreement']:.2f}) "
            f"on {candidate['reference_cases']} prompts; {agrees + '; ' if agrees else ''}"
            f"loss {candidate['reference_loss']:.4g} (base {base['reference_loss']:.4g})"
        )
        return _check(
            "keeps the reference set",
            drop,
            thresholds.max_reference_drop,
            "base",
            drop <= thresholds.max_reference_drop,
            f"agreement with the reference set's answers fell {base['reference_agreement']:.2f} -> "
            f"{candidate['reference_agreement']:.2f} against the base model (limit a drop of {thresholds.max_reference_drop:.2f})",
            detail=detail,
        )
    increase = round(candidate["reference_loss"] / base["reference_loss"] - 1, 4)
    return _check(
        "forgetting",
        increase,
        thresholds.max_forgetting_increase,
        "base",
        increase <= thresholds.max_forgetting_increase,
        f"reference loss rose {increase:.1%} over the base model (limit {thresholds.max_forgetting_increase:.1%})",
    )


def suite_check(name: str, score: dict, metrics: dict[str, dict], thresholds: GateThresholds) -> dict[str, Any]:
    """A regression suite's score against the active version (the base model when there is none), naming
    the cases that the compared model passes and the candidate fails."""
    against = "active" if "active" in metrics else "base"
    compared = metrics[against]["suites"][name]
    drop = round(compared["score"] - score["score"], 4)
    newly_failed = sorted(set(score.get("failed", [])) - set(compared.get("failed", [])))
    cases = f" (now failing: case {', '.join(str(i + 1) for i in newly_failed)})" if newly_failed else ""
    detail = "; ".join(
        f"{role} {metrics[role]['suites'][name]['passed']} of {metrics[role]['suites'][name]['cases']}"
        for role in ("base", "active", "candidate")
        if role in metrics
    )
    return _check(
        f"suite {name}",
        drop,
        thresholds.max_suite_drop,
        against,
        drop <= thresholds.max_suite_drop,
        f"suite {name} dropped {compared['score']:.2f} -> {score['score']:.2f} against {against}{cases} "
        f"(limit {thresholds.max_suite_drop:g})",
        detail=f"cases passed: {detail}{cases}",
    )


def version_check(name: str, candidate: dict, active: dict | None, thresholds: GateThresholds) -> dict[str, Any] | None:
    """Does it still know what an earlier version learned? Exact match on that version's data against the active version."""
    if active is None:
        return None
    drop = round(active["exact"] - candidate["exact"], 4)
    return _check(
        f"keeps {name}",
        drop,
        thresholds.max_version_drop,
        "active",
        drop <= thresholds.max_version_drop,
        f"lost what {name} learned: exact match on {candidate['cases']} of {name}'s answers fell {active['exact']:.2f} -> "
        f"{candidate['exact']:.2f} against active (limit a drop of {thresholds.max_version_drop:.2f})",
        detail=f"{candidate['cases']} of {name}'s answers: candidate {candidate['exact']:.2f}, active {active['exact']:.2f}",
    )


def degenerate_check(candidate: dict, thresholds: GateThresholds) -> dict[str, Any] | None:
    """Empty or repetitive answers: a candidate can pass every comparison by writing nothing. Answers cut at
    the token limit are counted but do not fail it: the evaluation's limit cuts most long answers of a real model."""
    counts = candidate.get("degenerate")
    if not counts or not counts["answers"]:
        return None
    bad = counts["empty"] + counts["repetitive"]
    share = round(bad / counts["answers"], 4)
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("empty", "repetitive") if counts[k])
    return _check(
        "degenerate output",
        share,
        thresholds.max_degenerate_share,
        None,
        share <= thresholds.max_degenerate_share,
        f"{bad} of {counts['answers']} answers are empty or repetitive ({kinds}; limit {thresholds.max_degenerate_share:.0%})",
        detail=f"{counts['empty']} empty, {counts['repetitive']} repetitive, {counts['max_length']} cut at the token limit "
        f"(counted, not failing), of {counts['answers']} answers",
    )


# ---------------------------------------------------------------- storing and reading


def _store(
    session: Session,
    actor: str,
    line: str,
    adapter_id: int,
    trigger: str,
    models: dict,
    results: dict,
    samples: list,
    seconds: float,
    cases: Cases,
    settings: EvalSettings,
    gate: dict | None,
) -> Evaluation:
    run_settings = {
        **asdict(settings),
        "suites": {s.name: s.version for s in cases.suites},
        "reference": cases.reference_name,
        "heldout_cases": len(cases.heldout),
    }
    summary = {"results": {role: r["metrics"] for role, r in results.items()}, "gate": gate, "settings": run_settings}
    digest = hashlib.sha256(audit.canonical_json(summary).encode("utf-8")).hexdigest()
    evaluation = Evaluation(
        line_id=get_line(session, line).id,
        adapter_id=adapter_id,
        trigger=trigger,
        created_by=actor,
        seconds=seconds,
        settings=run_settings,
        gate=gate,
        samples=samples,
        summary_hash=digest,
    )
    evaluation.results = [
        EvalResult(role=role, position=i, adapter_id=r["adapter_id"], metrics=r["metrics"], seconds=r["seconds"])
        for i, (role, r) in enumerate(results.items())
    ]
    session.add(evaluation)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=f"eval.{trigger}",
        subject=f"adapter:{adapter_id}",
        payload={"line": line, "evaluation": evaluation.id, "summary_sha256": digest, "gate": None if gate is None else gate["passed"]},
    )
    return evaluation


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    return evaluation


def latest_evaluation(session: Session, adapter_id: int, trigger: str = "candidate") -> Evaluation | None:
    return session.scalar(
        select(Evaluation).where(Evaluation.adapter_id == adapter_id, Evaluation.trigger == trigger).order_by(Evaluation.id.desc()).limit(1)
    )


def history(session: Session, line: str) -> list[dict[str, Any]]:
    """Every regression evaluation of the line, oldest first, with each suite's drop since the version's approval."""
    line_row = get_line(session, line)
    rows = session.scalars(
        select(Evaluation)
        .where(Evaluation.line_id == line_row.id, Evaluation.trigger == "regression", Evaluation.adapter_id.is_not(None))
        .order_by(Evaluation.id)
    )
    entries = []
    for evaluation in rows:
        subject = session.get_one(Adapter, evaluation.adapter_id)
        now = next(r.metrics for r in evaluation.results if r.role == "version")
        at_approval = latest_evaluation(session, subject.id)
        then = next((r.metrics for r in at_approval.results if r.role == "candidate"), None) if at_approval else None
        entries.append(
            {
                "evaluation": evaluation.id,
                "created_at": evaluation.created_at.isoformat(),
                "version": registry.version_name(subject),
                "adapter_id": subject.id,
                "suites": {name: _trend(score, (then or {}).get("suites", {}).get(name)) for name, score in now["suites"].items()},
                "reference_loss": now["reference_loss"],
            }
        )
    return entries


def _trend(score: dict[str, Any], at_approval: dict[str, Any] | None) -> dict[str, Any]:
    """A suite's score now, and its drop since approval (only when both used the same suite version)."""
    if at_approval is None or at_approval["version"] != score["version"]:
        return {**score, "at_approval": None, "dropped": False}
    return {**score, "at_approval": at_approval["score"], "dropped": round(at_approval["score"] - score["score"], 4) > 0}


def as_dict(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "id": evaluation.id,
        "line": evaluation.line.name,
        "adapter_id": evaluation.adapter_id,
        "trigger": evaluation.trigger,
        "created_at": evaluation.created_at.isoformat(),
        "created_by": evaluation.created_by,
        "seconds": evaluation.seconds,
        "settings": evaluation.settings,
        "summary_sha256": evaluation.summary_hash,
        "gate": evaluation.gate,
        "models": {r.role: {"adapter_id": r.adapter_id, "seconds": r.seconds, **r.metrics} for r in evaluation.results},
        "samples": evaluation.samples,
    }
