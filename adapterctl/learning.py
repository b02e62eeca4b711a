"""Whether a model has learned its training answers: the measure behind "train until learned".

Two measures on a fixed, seeded sample of a run's training examples (new ones and replay):
  - teacher-forced: one forward pass; per example, whether every answer token is the model's top
    choice. Cheap enough to run every few optimizer steps.
  - greedy: the model writes each answer itself; exact match of the whole answer. The measure a
    person means by "it answers the question", run when the cheap one says the target is in reach.

A model whose greedy decoding follows its top choices reproduces an answer exactly when the
teacher-forced check passes it, so the cheap measure predicts the expensive one; the greedy one still
decides, because tokenisation of the decoded text can differ.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

SAMPLE_SIZE = 64
"""Training examples measured; all of them when a run has fewer."""


TAUGHT = ("train", "replay")  # the splits whose answers a run must learn: new examples and replay


@dataclass(frozen=True)
class Learned:
    """The result of one check: per split, how many sampled answers the model reproduces, of how many."""

    step: int
    splits: dict[str, tuple[int, int]]
    token_accuracy: float | None = None
    """Share of answer tokens that are the model's top choice (teacher-forced checks only)."""

    @property
    def share(self) -> float:
        """The weakest split's share: new answers may not hide behind well-kept replay, nor the reverse."""
        return min((learned / count for learned, count in self.splits.values() if count), default=0.0)

    def as_dict(self, totals: dict[str, int], target: float | None) -> dict[str, Any]:
        return {
            **{
                split: {"learned": learned, "sample": count, "of": totals.get(split, count)}
                for split, (learned, count) in self.splits.items()
            },
            "target": target,
        }


def sample_examples(examples: list[dict[str, Any]], seed: int, size: int = SAMPLE_SIZE) -> list[dict[str, Any]]:
    """The examples a run's learning is measured on: up to `size` of its new examples, and of its replay."""
    sample = []
    for split in TAUGHT:
        taught = [e for e in examples if e["split"] == split]
        sample += taught if len(taught) <= size else random.Random(seed).sample(taught, size)
    return sample


STOP_REASONS = {
    "learned": "stopped when learned",
    "max_steps": "stopped at --max-steps",
    "epochs": "stopped after --epochs",
    "time_budget": "stopped by --time-budget",
}


def summary(metrics: dict[str, Any]) -> str:
    """'learned 28 of 30 new training answers and 12 of 12 replayed answers (greedy), stopped when learned at step 120'."""
    learned = metrics.get("learned") or {}
    if not any(split in learned for split in TAUGHT):
        return f"{metrics.get('steps')} steps (learning not measured)"

    def part(split: str, noun: str) -> str:
        counts = learned[split]
        sampled = f" (a sample of {counts['of']})" if counts["sample"] < counts["of"] else ""
        return f"{counts['learned']} of {counts['sample']}{sampled} {noun}"

    parts = [part(split, noun) for split, noun in (("train", "new training answers"), ("replay", "replayed answers")) if split in learned]
    reason = metrics.get("stop_reason", "")
    return f"learned {' and '.join(parts)} (greedy), {STOP_REASONS.get(reason, reason)} at step {metrics['steps']}"


class LearningProbe:
    """Measures one model, again and again, on the same sample."""

    def __init__(self, tokenizer, examples: list[dict[str, Any]], max_length: int, batch_size: int = 16) -> None:
        from adapterctl.training import tokenize

        self.tokenizer = tokenizer
        self.examples = examples  # none when every new example was held out: nothing to measure, nothing stops early
        self.rows, _ = tokenize(tokenizer, examples, max_length)
        self.batch_size = batch_size
        self.longest_answer = max((sum(label != -100 for label in row["labels"]) for row in self.rows), default=0)

    def teacher_forced(self, model, step: int) -> Learned:
        import torch

        from adapterctl.training import IGNORE, PadCollator

        collate = PadCollator(self.tokenizer.pad_token_id)
        reproduced, correct, total = [], 0, 0
        with _evaluating(model), torch.no_grad():
            for start in range(0, len(self.rows), self.batch_size):
                batch = {k: v.to(model.device) for k, v in collate(self.rows[start : start + self.batch_size]).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]
                labels = batch["labels"][:, 1:]
                scored = labels != IGNORE
                hits = (logits.argmax(-1) == labels) & scored
                correct += int(hits.sum())
                total += int(scored.sum())
                reproduced += (hits.sum(-1) == scored.sum(-1)).tolist()
        return Learned(step, self._by_split(reproduced), round(correct / total, 4) if total else 0.0)

    def greedy(self, model, step: int) -> Learned:
        answers = self.answers(model) if self.examples else []
        return Learned(step, self._by_split([got == example["answer"].strip() for got, example in zip(answers, self.examples)]))

    def _by_split(self, reproduced: list[bool]) -> dict[str, tuple[int, int]]:
        splits: dict[str, tuple[int, int]] = {}
        for example, ok in zip(self.examples, reproduced):
            learned, count = splits.get(example["split"], (0, 0))
            splits[example["split"]] = (learned + bool(ok), count + 1)
        return splits

    def answers(self, model) -> list[str]:
        from adapterctl.evaluation import EvalSettings, generate

        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            with _evaluating(model):
                return generate(
                    model,
                    self.tokenizer,
                    [e["prompt"] for e in self.examples],
                    EvalSettings(max_new_tokens=self.longest_answer + 2, batch_size=self.batch_size),
                )
        finally:
            self.tokenizer.padding_side = side


class _evaluating:
    """Eval mode (no dropout) and the cache on, for the block; the model's modes as they were after it."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self):
        self.training, self.use_cache = self.model.training, self.model.config.use_cache
        self.model.eval()
        self.model.config.use_cache = True
        return self.model

    def __exit__(self, *exc) -> None:
        self.model.config.use_cache = self.use_cache
        self.model.train(self.training)
