"""Self-synthesized rehearsal: a reference set the base model writes itself, for lines given none.

Anchoring a run on the base model's own answers keeps what it knew (bench/forgetting.py), but an
operator rarely knows what the base knows. So the base is asked, as in Self-Synthesized Rehearsal
(Huang et al., ACL 2024):

    prompts sampled from the base model (seeded; half of them after a few of the line's own feedback
    prompts in context, so they resemble its traffic, half unconditioned)
      -> cut at the end of the user turn, deduplicated, copies of feedback prompts dropped
      -> answered greedily by the base model
      -> empty, unfinished and repetitive prompts and answers dropped
      -> stored as the line's reference suite, with its provenance

The suite is an ordinary versioned reference set: reviewers read it with `eval suite show reference`,
and an operator's own set replaces it. It is made once per line and base model (its provenance names
the base model's hash) and topped up only when the line's set holds fewer cases than `reference_size`.

A prompt sampled after feedback can copy that feedback's text, and its answer with it. So the
provenance names, for each case, the feedback records shown in context when it was written
(`seeds`); forgetting one of them removes the case (adapterctl.erasure), and the next run tops the
set up again.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from adapterctl.dataset import Example, normalise
from adapterctl.db.models import EvalSuite
from adapterctl.evaluation import load_models, repetitive

MARK = "\u2063adapterctl-turn\u2063"  # cut point of a rendered user turn; never in real text
CONTEXT_CHARS = 1000  # of each feedback message shown in context: long records must not crowd out the prompt


@dataclass(frozen=True)
class SynthesisSettings:
    temperature: float = 1.0
    top_p: float = 0.95
    seeded_share: float = 0.5
    """Share of prompts sampled with the line's own feedback prompts in context."""
    context_examples: int = 3
    """Feedback exchanges shown in context before a seeded prompt."""
    max_prompt_tokens: int = 64
    max_answer_tokens: int = 96
    oversample: float = 3.0
    """Prompts sampled per case wanted: filtering drops some."""
    confident_share: float = 0.5
    """Share of the usable answers kept, those the base model is surest of (geometric mean token
    probability): what it knows, not what it guesses."""
    batch_size: int = 32
    """Sequences generated together (bounds GPU memory on a large model)."""
    seed: int = 0


def synthesize(
    base_path: str, base_hash: str, wanted: int, seeds: list[Example], avoid: set[str], settings: SynthesisSettings = SynthesisSettings()
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Up to `wanted` reference cases written by the base model, and their provenance.

    `seeds` are feedback examples shown in context; `avoid` holds normalised prompts that must not
    become cases (the line's feedback: anchoring the base's old answer there would fight the correction).
    """
    started = time.perf_counter()
    model, tokenizer = load_models(base_path, {})
    rng = random.Random(settings.seed)
    contexts = _contexts(tokenizer, seeds, round(wanted * settings.oversample), settings, rng)
    dropped: Counter[str] = Counter()
    samples = _sample(model, tokenizer, [text for text, _ in contexts], settings)
    prompts = _unique_prompts([(sample, shown) for sample, (_, shown) in zip(samples, contexts)], avoid, dropped)
    answers = _sample(
        model, tokenizer, [_render(tokenizer, [{"role": "user", "content": p}], generation=True) for p, _ in prompts], settings, greedy=True
    )
    usable = []
    for (prompt, shown), (answer, finished, confidence) in zip(prompts, answers):
        if problem := _problem(answer, finished):
            dropped[f"answer {problem}"] += 1
        else:
            usable.append((confidence, prompt, answer, shown))
    usable.sort(key=lambda u: -u[0])
    keep = min(wanted, math.ceil(len(usable) * settings.confident_share))
    dropped["answer less confident"] = len(usable) - keep
    cases = [{"prompt": [{"role": "user", "content": p}], "answer": a} for _, p, a, _ in usable[:keep]]
    provenance = {
        "method": "self-synthesized rehearsal",
        "base_model_hash": base_hash,
        "settings": asdict(settings),
        "sampled": len(contexts),
        "seeded": sum(bool(shown) for _, shown in contexts),
        "kept": len(cases),
        "min_confidence": usable[keep - 1][0] if keep else None,
        "dropped": dict(sorted(dropped.items())),
        "seconds": round(time.perf_counter() - started, 2),
        "seeds": [sorted(shown) for *_, shown in usable[:keep]],
    }
    return cases, provenance


def _contexts(
    tokenizer, seeds: list[Example], count: int, settings: SynthesisSettings, rng: random.Random
) -> list[tuple[str, tuple[int, ...]]]:
    """(text that opens a user turn, the ids of the feedback shown in context before it) for each prompt to sample."""
    exchanges = [
        (e.feedback_id, user[:CONTEXT_CHARS], e.answer[:CONTEXT_CHARS])
        for e in seeds
        if e.feedback_id is not None and (user := _last_user(e.prompt))
    ]
    contexts = []
    for index in range(count):
        seeded = bool(exchanges) and index < round(count * settings.seeded_share)
        shown = rng.sample(exchanges, min(settings.context_examples, len(exchanges))) if seeded else []
        messages = [m for _, user, answer in shown for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
        text = _render(tokenizer, [*messages, {"role": "user", "content": MARK}]).split(MARK)[0]
        contexts.append((text, tuple(feedback_id for feedback_id, _, _ in shown)))
    return contexts


def _unique_prompts(
    samples: list[tuple[tuple[str, bool, float], tuple[int, ...]]], avoid: set[str], dropped: Counter
) -> list[tuple[str, tuple[int, ...]]]:
    """The usable new prompts sampled, each with the ids of the feedback shown before it."""
    seen = set(avoid)
    prompts = []
    for (prompt, finished, _), shown in samples:
        key = normalise(prompt)
        if problem := _problem(prompt, finished):
            dropped[f"prompt {problem}"] += 1
        elif key in avoid:
            dropped["prompt copies feedback"] += 1
        elif key in seen:
            dropped["prompt duplicate"] += 1
        else:
            seen.add(key)
            prompts.append((prompt, shown))
    return prompts


def _sample(model, tokenizer, texts: list[str], settings: SynthesisSettings, greedy: bool = False) -> list[tuple[str, bool, float]]:
    """Each text continued until the turn ends: (the continuation, whether it ended before the limit, and,
    for greedy decoding, the geometric mean probability of its tokens)."""
    import torch

    limit = settings.max_answer_tokens if greedy else settings.max_prompt_tokens
    end = _turn_end(tokenizer)
    decoding = {"do_sample": False} if greedy else {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
    torch.manual_seed(settings.seed)
    results = []
    for start in range(0, len(texts), settings.batch_size):
        inputs = tokenizer(texts[start : start + settings.batch_size], add_special_tokens=False, padding=True, return_tensors="pt").to(
            model.device
        )
        recorder = _TopLogprobs()
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=limit,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=[end] if end else None,
                tokenizer=tokenizer,
                logits_processor=[recorder] if greedy else None,
                **decoding,
            )
        generated = output[:, inputs["input_ids"].shape[1] :]
        for index, row in enumerate(generated):
            raw = tokenizer.decode(row, skip_special_tokens=False)
            text = tokenizer.decode(row, skip_special_tokens=True)
            finished = _ended(row, tokenizer) or (bool(end) and end in raw)
            results.append(((text.split(end)[0] if end else text).strip(), finished, recorder.confidence(index, row, tokenizer)))
    return results


class _TopLogprobs:
    """A logits processor that records, per step and sequence, the log-probability of the top token: the
    token greedy decoding picks. A batch x steps matrix of floats, never the vocabulary-wide scores."""

    def __init__(self) -> None:
        self.steps: list[Any] = []

    def __call__(self, input_ids, scores):
        import torch

        self.steps.append(torch.log_softmax(scores.float(), -1).max(-1).values.cpu())
        return scores

    def confidence(self, index: int, tokens, tokenizer) -> float:
        if not self.steps:
            return 0.0
        ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        length = next((i + 1 for i, t in enumerate(tokens.tolist()) if t in ends), len(tokens))
        values = [step[index] for step in self.steps[:length]]
        return round(math.exp(float(sum(values)) / len(values)), 4)


def _turn_end(tokenizer) -> str:
    """The text that closes a user turn in the chat template (the tiny model's: its eos token)."""
    rendered = _render(tokenizer, [{"role": "user", "content": MARK}])
    return rendered.split(MARK, 1)[1].strip()


def _ended(row, tokenizer) -> bool:
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return any(int(token) in ends for token in row)


def _render(tokenizer, messages: list[dict[str, str]], generation: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)


def _last_user(prompt: list[dict[str, str]]) -> str | None:
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)


def _problem(text: str, finished: bool) -> str | None:
    """Why a generated prompt or answer is no use: empty, unfinished (cut at the limit) or repetitive."""
    if not text:
        return "empty"
    if not finished:
        return "unfinished"
    return "repetitive" if repetitive(text) else None


def reference_line(provenance: dict[str, Any]) -> str:
    """One line on a reference set synthesized by this run: how many cases, from how many samples, how long."""
    if "error" in provenance:
        return f"reference set: synthesizing it from the base model failed ({provenance['error']}); training without anchors"
    if not provenance.get("kept"):
        return (
            f"reference set: the base model wrote no usable case in {provenance['sampled']} samples "
            f"({', '.join(f'{n} {why}' for why, n in provenance['dropped'].items())}); training without anchors"
        )
    topped = f", added to version {provenance['topped_up']['version']}" if provenance.get("topped_up") else ""
    return (
        f"reference set v{provenance.get('version')}: synthesized {provenance['kept']} cases from the base model "
        f"({provenance['sampled']} prompts sampled{topped}) in {provenance['seconds']:.1f} s; "
        f"see `adapterctl eval suite show reference`"
    )


def top_up_reference(ws, line_name: str, examples: list[Example], seed: int = 0) -> dict[str, Any] | None:
    """Synthesize the line's reference set, or top it up, when it holds fewer cases than `reference_size`.

    Returns the provenance of what was stored, less the seeds of each case (None: nothing to do). A set
    adapterctl already made for this base model is kept as it is (re-sampling every run would move the
    anchors for nothing), unless forgetting feedback removed cases from it.
    """
    from adapterctl import base_models, suites
    from adapterctl.db.models import Feedback
    from adapterctl.lines import get_line, settings_of

    with ws.reading() as session:
        line = get_line(session, line_name)
        size, base_hash, base_path = settings_of(line).reference_size, line.base_model.content_hash, base_models.local_path(line.base_model)
        current = session.scalar(
            select(EvalSuite)
            .where(EvalSuite.line_id == line.id, EvalSuite.name == suites.REFERENCE)
            .order_by(EvalSuite.version.desc())
            .limit(1)
        )
        have = [c for c in current.cases if "answer" in c] if current else []
        made = (current.provenance or {}) if current else {}
        if size == 0 or len(have) >= size or (made.get("base_model_hash") == base_hash and not made.get("forgotten_cases")):
            return None
        avoid = {
            normalise(_last_user(prompt) or "")
            for prompt in session.scalars(select(Feedback.prompt).where(Feedback.line_id == line.id, Feedback.status == "active"))
        }
    avoid |= {normalise(_last_user(c["prompt"]) or "") for c in have}
    seeds = [e for e in examples if e.split in ("train", "replay")]
    try:
        cases, provenance = synthesize(base_path, base_hash, size - len(have), seeds, avoid, SynthesisSettings(seed=seed))
    except Exception as exc:  # a cron run still trains, without anchors, and says why; the next run tries again
        return {"error": (str(exc).splitlines() or [type(exc).__name__])[0], "kept": 0}
    provenance["topped_up"] = {"version": current.version, "cases": len(current.cases)} if current else None
    lineage = provenance.pop("seeds")
    if cases:
        provenance["version"] = store_synthesized(ws, line_name, cases, lineage, provenance)
    return provenance


def store_synthesized(ws, line_name: str, cases: list[dict[str, Any]], lineage: list[list[int]], provenance: dict[str, Any]) -> int | None:
    """Store what `synthesize` wrote (its cases; each one's seeds) after the cases of the newest version of the
    line's reference set; the version stored (None: no case was left to store).

    Under the line's lock, which `feedback forget` takes too: a case whose seed was forgotten while the base
    model wrote is left out, and the newest version is read again, so nothing forget removed comes back.
    """
    from adapterctl import suites
    from adapterctl.db.models import Feedback
    from adapterctl.lines import get_line, lock_line

    with ws.transaction() as session:
        line = get_line(session, line_name)
        lock_line(session, line.id)
        forgotten = set(session.scalars(select(Feedback.id).where(Feedback.line_id == line.id, Feedback.status == "forgotten")))
        written = [(case, seeds) for case, seeds in zip(cases, lineage) if forgotten.isdisjoint(seeds)]
        if len(written) < len(cases):
            provenance["dropped"] = dict(sorted({**provenance["dropped"], "seed forgotten meanwhile": len(cases) - len(written)}.items()))
            provenance["kept"] = len(written)
        if not written:
            return None
        current = suites.newest_version(session, line.id, suites.REFERENCE)
        provenance["topped_up"] = {"version": current.version, "cases": len(current.cases)} if current else None
        stored = {**provenance, "seeds": [*(suites.case_seeds(current) if current else []), *(seeds for _, seeds in written)]}
        suite, _ = suites.add_suite(
            session,
            line=line_name,
            name=suites.REFERENCE,
            cases=[*(current.cases if current else []), *(case for case, _ in written)],
            kind="reference",
            actor=ws.user,
            provenance=stored,
        )
        return suite.version
