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

from adapterctl.errors import InvalidInput

SAMPLE_SIZE = 64
"""Training examples measured; all of them when a run has fewer."""


@dataclass(frozen=True)
class Learned:
    """The result of one check."""

    step: int
    learned: int
    """Examples of the sample the model reproduces."""
    sample: int
    token_accuracy: float | None = None
    """Share of answer tokens that are the model's top choice (teacher-forced checks only)."""

    @property
    def share(self) -> float:
        return self.learned / self.sample if self.sample else 0.0


def sample_examples(examples: list[dict[str, Any]], seed: int, size: int = SAMPLE_SIZE) -> list[dict[str, Any]]:
    """The examples a run's learning is measured on: its new training examples and its replay."""
    taught = [e for e in examples if e["split"] in ("train", "replay")]
    if len(taught) <= size:
        return taught
    return random.Random(seed).sample(taught, size)


STOP_REASONS = {
    "learned": "stopped when learned",
    "max_steps": "stopped at --max-steps",
    "epochs": "stopped after --epochs",
    "time_budget": "stopped by --time-budget",
}


def summary(metrics: dict[str, Any]) -> str:
    """'learned 28 of 30 training answers (greedy), stopped when learned at step 120' from a run's metrics."""
    learned = metrics.get("learned") or {}
    if not learned:
        return f"{metrics.get('steps')} steps (learning not measured)"
    sampled = f" (a sample of {learned['of']})" if learned["sample"] < learned["of"] else ""
    reason = metrics.get("stop_reason", "")
    return (f"learned {learned['learned']} of {learned['sample']} training answers{sampled} (greedy), "
            f"{STOP_REASONS.get(reason, reason)} at step {metrics['steps']}")


class LearningProbe:
    """Measures one model, again and again, on the same sample."""

    def __init__(self, tokenizer, examples: list[dict[str, Any]], max_length: int, batch_size: int = 16) -> None:
        from adapterctl.training import tokenize

        if not examples:
            raise InvalidInput("no training examples to measure learning on")
        self.tokenizer = tokenizer
        self.examples = examples
        self.rows, _ = tokenize(tokenizer, examples, max_length)
        self.batch_size = batch_size
        self.longest_answer = max(sum(label != -100 for label in row["labels"]) for row in self.rows)

    def teacher_forced(self, model, step: int) -> Learned:
        import torch

        from adapterctl.training import IGNORE, PadCollator

        collate = PadCollator(self.tokenizer.pad_token_id)
        learned, correct, total = 0, 0, 0
        with _evaluating(model), torch.no_grad():
            for start in range(0, len(self.rows), self.batch_size):
                batch = {k: v.to(model.device) for k, v in collate(self.rows[start : start + self.batch_size]).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]
                labels = batch["labels"][:, 1:]
                scored = labels != IGNORE
                hits = (logits.argmax(-1) == labels) & scored
                correct += int(hits.sum())
                total += int(scored.sum())
                learned += int((hits.sum(-1) == scored.sum(-1)).sum())
        return Learned(step, learned, len(self.rows), round(correct / total, 4) if total else 0.0)

    def greedy(self, model, step: int) -> Learned:
        answers = self.answers(model)
        learned = sum(got == example["answer"].strip() for got, example in zip(answers, self.examples))
        return Learned(step, learned, len(self.examples))

    def answers(self, model) -> list[str]:
        from adapterctl.evaluation import EvalSettings, generate

        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            with _evaluating(model):
                return generate(model, self.tokenizer, [e["prompt"] for e in self.examples],
                                EvalSettings(max_new_tokens=self.longest_answer + 2, batch_size=self.batch_size))
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
