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
- reference_loss: loss on the reference set, a secondary figure (the gate's measure when the set holds
  only text, such as the built-in one).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit, base_models, registry, suites
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import example_of, normalise
from adapterctl.db.models import Adapter, EvalResult, EvalSuite, Evaluation, Feedback, RunExample
from adapterctl.errors import InvalidInput, InvalidTransition, NotFound
from adapterctl.lines import GateThresholds, get_line, settings_of
from adapterctl.workspace import Workspace

Progress = Callable[[str], None] | None


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
    seed: int = 0

    def problems(self) -> list[str]:
        checks = [
            (1 <= self.max_new_tokens <= 4096, f"max_new_tokens must be between 1 and 4096 (got {self.max_new_tokens})"),
            (self.batch_size >= 1, f"batch_size must be at least 1 (got {self.batch_size})"),
            (self.max_length >= 8, f"max_length must be at least 8 (got {self.max_length})"),
            (self.samples >= 0, f"samples must be at least 0 (got {self.samples})"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass
class Cases:
    """What every model of one evaluation is measured on."""

    heldout: list[dict[str, Any]]  # {feedback_id, prompt, answer}
    suites: list[EvalSuite]
    reference: list[dict[str, Any]]  # {text} or {prompt, answer}
    reference_name: str  # "reference vN" or "built-in"


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
        cases = _cases(session, line.id, candidate.run_id)
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


def evaluate_version(ws: Workspace, line: str, version: int | None = None, *, settings: EvalSettings = EvalSettings(),
                     progress: Progress = None) -> int:
    """Re-evaluate the active version (or the given one) on the line's current suites; kept as history. Returns its id."""
    with ws.reading() as session:
        line_row = get_line(session, line)
        subject = registry.get_version(session, line_row.id, version) if version else registry.active_adapter(session, line_row.id)
        if subject is None:
            raise InvalidInput(f"line {line!r} has no active version; name one with --version")
        models = {"base": None, "version": _artifact(ws, subject)}
        cases = _cases(session, line_row.id, subject.run_id)
        base_path, subject_id = base_models.local_path(line_row.base_model), subject.id
    results, samples, seconds = _measure(base_path, models, cases, settings, progress)
    with ws.transaction() as session:
        return _store(session, ws.user, line, subject_id, "regression", models, results, samples, seconds, cases, settings, None).id


def _artifact(ws: Workspace, adapter: Adapter) -> tuple[int, str]:
    """The adapter's id and folder, after checking its files against the sha256 in the database."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    store.verify(adapter.artifact_path, adapter.sha256)
    return adapter.id, str(store.path_of(adapter.artifact_path))


def _cases(session: Session, line_id: int, run_id: int) -> Cases:
    heldout_rows = session.scalars(
        select(Feedback).join(RunExample, RunExample.feedback_id == Feedback.id)
        .where(RunExample.run_id == run_id, RunExample.split == "heldout", Feedback.status == "active")
        .order_by(Feedback.id)
    )
    heldout = [{"feedback_id": e.feedback_id, "prompt": e.prompt, "answer": e.answer} for e in map(example_of, heldout_rows) if e is not None]
    current = suites.current_suites(session, line_id)
    reference = [s for s in current if s.kind == "reference"]
    regression = [s for s in current if s.kind == "regression"]
    share = settings_of(reference[0].line).reference_anchor_share if reference else 0.0
    measured = [c for c in reference[0].cases if not suites.anchors_training(c, share)] if reference else []
    if measured:  # the half of the reference set that training never sees
        return Cases(heldout, regression, measured, f"reference v{reference[0].version}")
    return Cases(heldout, regression, builtin_reference(), "built-in")


def builtin_reference() -> list[dict[str, str]]:
    """General text (the tiny model's corpus): a forgetting proxy until a line has its own reference set."""
    from adapterctl.tiny_model import CORPUS

    return [{"text": line} for line in CORPUS.splitlines() if line.strip()]


# ---------------------------------------------------------------- measuring


def _measure(base_path: str, models: dict[str, tuple[int, str] | None], cases: Cases, settings: EvalSettings,
             progress: Progress) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], float]:
    """Metrics per model role, side-by-side samples, and the seconds it all took."""
    import torch

    started = time.perf_counter()
    model, tokenizer = load_models(base_path, {role: artifact[1] for role, artifact in models.items() if artifact})
    sampled = random.Random(settings.seed).sample(cases.heldout, min(settings.samples, len(cases.heldout)))
    sample_prompts = [case["prompt"] for case in sampled]
    results, generations = {}, {}
    for role, artifact in models.items():
        if progress:
            progress(f"evaluating {role}")
        role_started = time.perf_counter()
        torch.manual_seed(settings.seed)
        with using(model, role if artifact else None):
            metrics = measure_model(model, tokenizer, cases, settings)
            generations[role] = generate(model, tokenizer, sample_prompts, settings) if sample_prompts else []
        results[role] = {"adapter_id": artifact[0] if artifact else None, "metrics": metrics,
                         "seconds": round(time.perf_counter() - role_started, 3)}
    # Each sample names its record, so that forgetting the record can find and redact it.
    samples = [{"feedback_id": case["feedback_id"], "prompt": case["prompt"], **{role: generations[role][i] for role in models}}
               for i, case in enumerate(sampled)]
    return results, samples, round(time.perf_counter() - started, 3)


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
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype)).to(device)
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


def measure_model(model, tokenizer, cases: Cases, settings: EvalSettings) -> dict[str, Any]:
    metrics: dict[str, Any] = {"heldout_cases": len(cases.heldout)}
    written: list[str] = []  # every answer the model wrote, for the degenerate-output count
    if cases.heldout:
        metrics["heldout_loss"] = round(answer_loss(model, tokenizer, cases.heldout, settings), 5)
        answers = generate(model, tokenizer, [c["prompt"] for c in cases.heldout], settings)
        written += answers
        metrics["heldout_exact"] = round(sum(normalise(a) == normalise(c["answer"]) for a, c in zip(answers, cases.heldout)) / len(answers), 4)
    metrics["suites"] = {}
    for suite in cases.suites:
        answers = generate(model, tokenizer, [c["prompt"] for c in suite.cases], settings)
        written += answers
        passed = sum(suites.passes(a, c) for a, c in zip(answers, suite.cases))
        metrics["suites"][suite.name] = {"version": suite.version, "passed": passed, "cases": len(suite.cases),
                                         "score": round(passed / len(suite.cases), 4)}
    metrics["reference"] = cases.reference_name
    if chats := [c for c in cases.reference if "answer" in c]:
        answers = generate(model, tokenizer, [c["prompt"] for c in chats], settings)
        written += answers
        metrics["reference_agreement"] = round(sum(normalise(a) == normalise(c["answer"]) for a, c in zip(answers, chats)) / len(chats), 4)
        metrics["reference_cases"] = len(chats)
    metrics["reference_loss"] = round(answer_loss(model, tokenizer, cases.reference, settings), 5)
    metrics["degenerate"] = degenerate_answers(written, tokenizer, settings.max_new_tokens)
    return metrics


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


def generate(model, tokenizer, prompts: list[list[dict[str, str]]], settings: EvalSettings) -> list[str]:
    """Greedy answers to chat prompts, `batch_size` at a time."""
    import torch

    answers = []
    for start in range(0, len(prompts), settings.batch_size):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts[start : start + settings.batch_size]]
        inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        answers += [a.strip() for a in tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    return answers


def answer_loss(model, tokenizer, cases: list[dict[str, Any]], settings: EvalSettings) -> float:
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
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   ignore_index=IGNORE, reduction="sum").item()
        count += int((labels != IGNORE).sum())
    return total / count if count else float("nan")


# ---------------------------------------------------------------- the gate


def check_gate(results: dict[str, dict[str, Any]], thresholds: GateThresholds, learned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every check of the candidate, each with its value, limit and verdict; passed when all pass.

    `learned` is the training run's greedy measure of its own answers (TrainResult.learned).
    """
    candidate = results["candidate"]["metrics"]
    compared_role = "active" if "active" in results else "base"
    compared, base = results[compared_role]["metrics"], results["base"]["metrics"]
    checks = [
        learned_check(learned, thresholds),
        heldout_check(candidate, compared, compared_role, thresholds),
        keeps_check(candidate, base, thresholds),
        *(suite_check(name, score, compared["suites"][name], compared_role, thresholds) for name, score in candidate["suites"].items()),
        degenerate_check(candidate, thresholds),
    ]
    checks = [check for check in checks if check is not None]
    reasons = [check["reason"] for check in checks if not check["passed"]]
    return {"passed": not reasons, "reasons": reasons, "checks": checks, "thresholds": asdict(thresholds)}


def _check(name: str, value: float, limit: float, against: str | None, passed: bool, reason: str, bound: str = "max") -> dict[str, Any]:
    """One check's entry: `bound` says whether the limit is a most (max) or a least (min) value."""
    return {"check": name, "value": value, "limit": limit, "bound": bound, "against": against, "passed": passed,
            **({} if passed else {"reason": reason})}


def learned_check(learned: dict[str, Any] | None, thresholds: GateThresholds) -> dict[str, Any] | None:
    """Does the candidate answer what it was trained on? The weaker of its new and replayed answers."""
    splits = {name: counts for name, counts in (learned or {}).items() if isinstance(counts, dict) and counts.get("sample")}
    if not splits:
        return None
    share = round(min(c["learned"] / c["sample"] for c in splits.values()), 4)
    said = " and ".join(f"{c['learned']} of {c['sample']} {'new' if name == 'train' else 'replayed'}" for name, c in splits.items())
    return _check("learned", share, thresholds.min_learned, None, share >= thresholds.min_learned,
                  f"learned only {said} training answers (greedy; needs {thresholds.min_learned:.0%})", bound="min")


def heldout_check(candidate: dict, compared: dict, against: str, thresholds: GateThresholds) -> dict[str, Any] | None:
    if not candidate["heldout_cases"]:
        return None
    gain = round(candidate["heldout_exact"] - compared["heldout_exact"], 4)
    return _check("heldout gain", gain, thresholds.min_heldout_gain, against, gain >= thresholds.min_heldout_gain,
                  f"held-out exact match gained {gain:+.2f} against {against} (needs at least {thresholds.min_heldout_gain:+.2f})", bound="min")


def keeps_check(candidate: dict, base: dict, thresholds: GateThresholds) -> dict[str, Any]:
    """Does it still answer what the base model answered? Agreement with the reference set; its loss when it holds only text."""
    if "reference_agreement" in candidate:
        drop = round(base["reference_agreement"] - candidate["reference_agreement"], 4)
        return _check("keeps the reference set", drop, thresholds.max_reference_drop, "base", drop <= thresholds.max_reference_drop,
                      f"agreement with the reference set's answers fell {base['reference_agreement']:.2f} -> "
                      f"{candidate['reference_agreement']:.2f} against the base model (limit a drop of {thresholds.max_reference_drop:.2f})")
    increase = round(candidate["reference_loss"] / base["reference_loss"] - 1, 4)
    return _check("forgetting", increase, thresholds.max_forgetting_increase, "base", increase <= thresholds.max_forgetting_increase,
                  f"reference loss rose {increase:.1%} over the base model (limit {thresholds.max_forgetting_increase:.1%})")


def suite_check(name: str, score: dict, compared: dict, against: str, thresholds: GateThresholds) -> dict[str, Any]:
    drop = round(compared["score"] - score["score"], 4)
    return _check(f"suite {name}", drop, thresholds.max_suite_drop, against, drop <= thresholds.max_suite_drop,
                  f"suite {name} dropped {compared['score']:.2f} -> {score['score']:.2f} against {against} (limit {thresholds.max_suite_drop:g})")


def degenerate_check(candidate: dict, thresholds: GateThresholds) -> dict[str, Any] | None:
    """Empty or repetitive answers: a candidate can pass every comparison by writing nothing. Answers cut at
    the token limit are counted but do not fail it: the evaluation's limit cuts most long answers of a real model."""
    counts = candidate.get("degenerate")
    if not counts or not counts["answers"]:
        return None
    bad = counts["empty"] + counts["repetitive"]
    share = round(bad / counts["answers"], 4)
    kinds = ", ".join(f"{counts[k]} {k}" for k in ("empty", "repetitive") if counts[k])
    return _check("degenerate output", share, thresholds.max_degenerate_share, None, share <= thresholds.max_degenerate_share,
                  f"{bad} of {counts['answers']} answers are empty or repetitive ({kinds}; limit {thresholds.max_degenerate_share:.0%})")


# ---------------------------------------------------------------- storing and reading


def _store(session: Session, actor: str, line: str, adapter_id: int, trigger: str, models: dict, results: dict,
           samples: list, seconds: float, cases: Cases, settings: EvalSettings, gate: dict | None) -> Evaluation:
    run_settings = {**asdict(settings), "suites": {s.name: s.version for s in cases.suites}, "reference": cases.reference_name,
                    "heldout_cases": len(cases.heldout)}
    summary = {"results": {role: r["metrics"] for role, r in results.items()}, "gate": gate, "settings": run_settings}
    digest = hashlib.sha256(audit.canonical_json(summary).encode("utf-8")).hexdigest()
    evaluation = Evaluation(line_id=get_line(session, line).id, adapter_id=adapter_id, trigger=trigger, created_by=actor,
                            seconds=seconds, settings=run_settings, gate=gate, samples=samples, summary_hash=digest)
    evaluation.results = [EvalResult(role=role, position=i, adapter_id=r["adapter_id"], metrics=r["metrics"], seconds=r["seconds"])
                          for i, (role, r) in enumerate(results.items())]
    session.add(evaluation)
    session.flush()
    audit.record(session, actor=actor, action=f"eval.{trigger}", subject=f"adapter:{adapter_id}",
                 payload={"line": line, "evaluation": evaluation.id, "summary_sha256": digest,
                          "gate": None if gate is None else gate["passed"]})
    return evaluation


def get_evaluation(session: Session, evaluation_id: int) -> Evaluation:
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id} does not exist")
    return evaluation


def latest_evaluation(session: Session, adapter_id: int, trigger: str = "candidate") -> Evaluation | None:
    return session.scalar(select(Evaluation).where(Evaluation.adapter_id == adapter_id, Evaluation.trigger == trigger)
                          .order_by(Evaluation.id.desc()).limit(1))


def history(session: Session, line: str) -> list[dict[str, Any]]:
    """Every regression evaluation of the line, oldest first, with each suite's drop since the version's approval."""
    line_row = get_line(session, line)
    rows = session.scalars(select(Evaluation).where(Evaluation.line_id == line_row.id, Evaluation.trigger == "regression")
                           .order_by(Evaluation.id))
    entries = []
    for evaluation in rows:
        subject = registry.get_adapter(session, evaluation.adapter_id)
        now = next(r.metrics for r in evaluation.results if r.role == "version")
        at_approval = latest_evaluation(session, subject.id)
        then = next((r.metrics for r in at_approval.results if r.role == "candidate"), None) if at_approval else None
        entries.append({
            "evaluation": evaluation.id, "created_at": evaluation.created_at.isoformat(), "version": registry.version_name(subject),
            "adapter_id": subject.id, "suites": {name: _trend(score, (then or {}).get("suites", {}).get(name)) for name, score in now["suites"].items()},
            "reference_loss": now["reference_loss"],
        })
    return entries


def _trend(score: dict[str, Any], at_approval: dict[str, Any] | None) -> dict[str, Any]:
    """A suite's score now, and its drop since approval (only when both used the same suite version)."""
    same = at_approval is not None and at_approval["version"] == score["version"]
    drop = round(at_approval["score"] - score["score"], 4) if same else None
    return {**score, "at_approval": at_approval["score"] if same else None, "dropped": bool(drop and drop > 0)}


def as_dict(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "id": evaluation.id, "line": evaluation.line.name, "adapter_id": evaluation.adapter_id, "trigger": evaluation.trigger,
        "created_at": evaluation.created_at.isoformat(), "created_by": evaluation.created_by, "seconds": evaluation.seconds,
        "settings": evaluation.settings, "summary_sha256": evaluation.summary_hash, "gate": evaluation.gate,
        "models": {r.role: {"adapter_id": r.adapter_id, "seconds": r.seconds, **r.metrics} for r in evaluation.results},
        "samples": evaluation.samples,
    }
