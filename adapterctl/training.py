"""Training a candidate: LoRA on the line's frozen base model, read top to bottom as one recipe.

    tokenize the examples (loss on answer tokens only) -> load base model -> wrap with LoRA
    -> transformers.Trainer (shuffled batches packed into rows, AdamW, warmup + cosine, clipping, checkpoints)
    -> save the adapter in PEFT layout

`run_training(job)` runs in this process, or in each process of a torchrun launch (DDP); the job
is a folder holding job.json and examples.jsonl, so that a killed run can resume from its checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapterctl.chat import ensure_chat_template, load_tokenizer
from adapterctl.errors import InvalidInput
from adapterctl.faults import crash_point
from adapterctl.learning import Learned, LearningProbe, sample_examples

IGNORE = -100  # label of tokens the loss skips: the prompt and padding


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = 3e-3
    """Peak AdamW learning rate (chosen by bench/forgetting.py on two base sizes)."""
    epochs: float | None = None
    """Passes over the training examples; when set, the length instead of max_steps."""
    max_steps: int = 1000
    """Most optimizer steps; training stops earlier once the training answers are learned."""
    target_learned: float | None = 0.95
    """Stop once this share of the sampled training answers is reproduced by greedy decoding; None
    (or 0) trains the whole length."""
    check_steps: int = 10
    """Optimizer steps between two learning checks (teacher-forced; greedy when those are in reach)."""
    time_budget_s: float | None = None
    """Stop (and still save) after this many seconds of training."""
    batch_size: int = 16
    """Examples per device and step."""
    grad_accumulation: int = 1
    """Batches whose gradients add up to one optimizer step."""
    warmup_ratio: float = 0.025
    """Share of the steps (max_steps, or the epochs' steps) over which the learning rate rises linearly from 0."""
    scheduler: str = "cosine"
    """Learning-rate decay after warmup: cosine, linear or constant."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold."""
    weight_decay: float = 1.0
    """AdamW weight decay on the LoRA weights: it keeps the update small where the data does not ask
    for it, which is what keeps the base model's knowledge (bench/forgetting.py)."""
    max_length: int = 1024
    """Longest example in tokens; longer ones lose the start of the prompt (counted as truncated)."""
    seed: int = 0
    """Seed of LoRA initialisation, shuffling and dropout."""
    device: str = "auto"
    """auto (CUDA with bf16 when available, else CPU with fp32), cpu or cuda."""
    checkpoint_steps: int = 50
    """Save a resumable checkpoint every this many optimizer steps."""

    def problems(self) -> list[str]:
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.epochs is None or self.epochs > 0, "epochs must be > 0"),
            (self.max_steps >= 1, "max_steps must be at least 1"),
            (self.target_learned is None or 0 <= self.target_learned <= 1, "target_learned must be in [0, 1]"),
            (self.check_steps >= 1, "check_steps must be at least 1"),
            (self.time_budget_s is None or self.time_budget_s > 0, "time_budget must be > 0"),
            (self.batch_size >= 1 and self.grad_accumulation >= 1, "batch_size and grad_accumulation must be at least 1"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.scheduler in ("cosine", "linear", "constant"), f"scheduler must be cosine, linear or constant (got {self.scheduler!r})"),
            (self.max_length >= 16, "max_length must be at least 16"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda (got {self.device!r})"),
            (self.checkpoint_steps >= 1, "checkpoint_steps must be at least 1"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: int
    dropout: float
    target_modules: list[str] | None  # None: every linear layer but the output head


@dataclass
class TrainingJob:
    """Everything a training process needs, saved as job.json in the run's work folder."""

    base_model: str
    lora: LoraSettings
    settings: TrainSettings
    adapter_dir: str
    """Where the trained adapter is saved (the artifact store's staging folder)."""

    @staticmethod
    def load(work_dir: Path) -> TrainingJob:
        raw = json.loads((work_dir / "job.json").read_text())
        return TrainingJob(raw["base_model"], LoraSettings(**raw["lora"]), TrainSettings(**raw["settings"]), raw["adapter_dir"])

    def save(self, work_dir: Path) -> None:
        (work_dir / "job.json").write_text(json.dumps(asdict(self), indent=2))


@dataclass
class TrainResult:
    steps: int
    epochs: float
    train_tokens: int
    """Non-padding tokens the model processed in this process (after a resume: since the resume)."""
    seconds: float
    loss_curve: list[list[float]] = field(default_factory=list)
    """[step, loss] pairs."""
    heldout_loss_before: float | None = None
    heldout_loss_after: float | None = None
    padding_efficiency: float = 1.0
    truncated: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    world_size: int = 1
    stopped_by_time_budget: bool = False
    packed: bool = True
    """Whether batches were packed into rows; False when the model cannot keep packed examples apart."""
    resumed_from_step: int | None = None
    """The checkpoint's step when training continued from one."""
    stop_reason: str = "max_steps"
    """learned (the target was reached), max_steps, epochs or time_budget."""
    learned: dict[str, Any] = field(default_factory=dict)
    """Greedy exact match on the sampled training answers after training, per split (train: new,
    replay): learned, sample, of (all of the split); and the target."""
    learning_curve: list[list[float | None]] = field(default_factory=list)
    """[step, teacher-forced share learned (the weaker of new and replayed), answer-token accuracy] of each check."""

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0


def resolve_device(requested: str) -> tuple[str, str]:
    """The device and dtype to train with: CUDA in bf16 when available (or asked for), else CPU in fp32."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "cpu", "float32"


# ---------------------------------------------------------------- data


def tokenize(tokenizer, examples: list[dict[str, Any]], max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    """Chat-format each example; labels only on the answer. Returns the rows and how many were truncated.

    The prompt is rendered with the generation prompt and the answer appended as the template renders
    it, token ids concatenated: exactly what the model sees at inference, then what it should write.
    """
    ensure_chat_template(tokenizer)
    rows, truncated = [], 0
    for example in examples:
        prompt_text = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template([*example["prompt"], {"role": "assistant", "content": example["answer"]}], tokenize=False)
        if not full_text.startswith(prompt_text):
            raise InvalidInput("the chat template renders a conversation differently from its prompt; cannot mask the prompt")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(answer_ids) > max_length:
            truncated += 1
            answer_ids = answer_ids[: max_length - 1]
            prompt_ids = prompt_ids[-(max_length - len(answer_ids)) :]  # keep the end of the prompt, next to the answer
        rows.append({"input_ids": prompt_ids + answer_ids, "labels": [IGNORE] * len(prompt_ids) + answer_ids})
    return rows, truncated


class PadCollator:
    """Pads a batch to its longest row, with an attention mask (for evaluation and generation)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, rows: list[dict[str, list[int]]]):
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        self.real_tokens += sum(len(row["input_ids"]) for row in rows)
        self.padded_tokens += width * len(rows)

        def pad(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        return {
            "input_ids": torch.tensor([pad(r["input_ids"], self.pad_id) for r in rows]),
            "labels": torch.tensor([pad(r["labels"], IGNORE) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
        }

    def reset(self) -> None:
        self.real_tokens = self.padded_tokens = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


class PackingCollator:
    """Packs a batch's examples into as few rows of at most `row_length` tokens as they fit (first fit,
    longest first), instead of padding every example to the longest.

    Each example's position ids restart at 0 and no attention mask is passed: transformers then builds a
    block-diagonal causal mask, so no token attends across examples (tests/test_dataset.py proves the
    logits equal those of each example alone). The model must run with use_cache=False, or it ignores
    the packing. Only the ends of rows shorter than the longest are padding, as a block of their own.
    """

    def __init__(self, pad_id: int, row_length: int) -> None:
        self.pad_id = pad_id
        self.row_length = row_length
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, examples: list[dict[str, list[int]]]):
        import torch

        packed: list[list[dict[str, list[int]]]] = []
        for example in sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True):
            size = len(example["input_ids"])
            row = next((r for r in packed if sum(len(e["input_ids"]) for e in r) + size <= self.row_length), None)
            if row is None:
                packed.append([example])
            else:
                row.append(example)
        rows = [self._row(row) for row in packed]
        width = max(len(ids) for ids, _, _ in rows)
        self.real_tokens += sum(len(ids) for ids, _, _ in rows)
        self.padded_tokens += width * len(rows)
        pad = [
            (ids + [self.pad_id] * (width - len(ids)), labels + [IGNORE] * (width - len(ids)), positions + list(range(width - len(ids))))
            for ids, labels, positions in rows
        ]
        return {
            "input_ids": torch.tensor([ids for ids, _, _ in pad]),
            "labels": torch.tensor([labels for _, labels, _ in pad]),
            "position_ids": torch.tensor([positions for _, _, positions in pad]),
        }

    @staticmethod
    def _row(examples: list[dict[str, list[int]]]) -> tuple[list[int], list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for example in examples:
            ids += example["input_ids"]
            labels += [IGNORE] + example["labels"][1:]  # the first token has no prediction within its example
            positions += range(len(example["input_ids"]))
        return ids, labels, positions

    def reset(self) -> None:
        self.real_tokens = self.padded_tokens = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0


# ---------------------------------------------------------------- the recipe


def run_training(work_dir: Path, *, resume: bool = False, progress: Callable[[dict], None] | None = None) -> TrainResult:
    """Train the job in `work_dir` and save the adapter; in a torchrun launch every process calls this."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    job = TrainingJob.load(work_dir)
    settings = job.settings
    device, dtype = resolve_device(settings.device)

    # 1. data
    tokenizer = load_tokenizer(job.base_model)
    examples = [json.loads(line) for line in (work_dir / "examples.jsonl").read_text().splitlines()]
    train_rows, truncated = tokenize(
        tokenizer, [e for e in examples if e["split"] in ("train", "replay", "reference")], settings.max_length
    )
    heldout_rows, _ = tokenize(tokenizer, [e for e in examples if e["split"] == "heldout"], settings.max_length)
    if not train_rows:
        raise InvalidInput("no training examples")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 2. model: the frozen base plus LoRA on the line's target modules
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(job.base_model, dtype=getattr(torch, dtype))
    model.config.use_cache = False  # a cache would make the model ignore PackingCollator's packing
    packed = packing_is_exact(model)
    collator = PackingCollator(tokenizer.pad_token_id, settings.max_length) if packed else PadCollator(tokenizer.pad_token_id)
    lora = LoraConfig(
        r=job.lora.rank,
        lora_alpha=job.lora.alpha,
        lora_dropout=job.lora.dropout,
        target_modules=job.lora.target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)  # type: ignore[assignment]  # a PeftModel wraps the causal LM

    # 3. train, until the sampled training answers are learned or the length is reached
    steps_per_epoch = math.ceil(len(train_rows) / (settings.batch_size * settings.grad_accumulation * _world_size()))
    total_steps = max(1, math.ceil(steps_per_epoch * settings.epochs)) if settings.epochs else settings.max_steps
    probe = LearningProbe(tokenizer, sample_examples(examples, settings.seed), settings.max_length)
    arguments = TrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        lr_scheduler_type=settings.scheduler if settings.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=int(settings.warmup_ratio * total_steps),
        max_steps=total_steps,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=device == "cpu",
        ddp_backend="gloo" if device == "cpu" and _world_size() > 1 else None,
        save_strategy="steps",
        save_steps=settings.checkpoint_steps,
        save_total_limit=1,
        logging_steps=max(1, total_steps // 50),  # a loss curve of about 50 points
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
    )
    budget = _time_budget(settings.time_budget_s, progress, total_steps)
    until_learned = UntilLearned(probe, settings.target_learned, settings.check_steps, progress)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train_rows,
        eval_dataset=heldout_rows or None,
        data_collator=collator,
        callbacks=[budget, until_learned.callback],
        processing_class=tokenizer,  # it tells padding from tokens
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not to stdout
    before = trainer.evaluate()["eval_loss"] if heldout_rows else None
    collator.reset()  # padding efficiency of the training batches only
    started = time.perf_counter()
    checkpoint = _last_complete_checkpoint(work_dir / "checkpoints") if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - started
    padding_efficiency = collator.efficiency
    after = trainer.evaluate()["eval_loss"] if heldout_rows else None
    learned = until_learned.final or probe.greedy(model, trainer.state.global_step)

    # 4. save the adapter (only the first process writes)
    if trainer.is_world_process_zero():
        model.save_pretrained(job.adapter_dir)
        Path(job.adapter_dir, "README.md").unlink(missing_ok=True)  # PEFT's empty model card; not part of the layout
        crash_point("train.adapter_saved")
    state = trainer.state
    return TrainResult(
        steps=state.global_step,
        epochs=round(state.epoch or 0.0, 3),
        train_tokens=int(state.num_input_tokens_seen - budget.tokens_at_start),
        seconds=round(seconds, 3),
        loss_curve=[[entry["step"], round(entry["loss"], 5)] for entry in state.log_history if "loss" in entry],
        heldout_loss_before=before,
        heldout_loss_after=after,
        padding_efficiency=round(padding_efficiency, 4),
        packed=packed,
        truncated=truncated,
        device=device,
        dtype=dtype,
        world_size=_world_size(),
        stopped_by_time_budget=budget.stopped,
        resumed_from_step=int(Path(checkpoint).name.split("-", 1)[1]) if checkpoint else None,
        stop_reason="learned" if until_learned.final else "time_budget" if budget.stopped else "epochs" if settings.epochs else "max_steps",
        learned=learned.as_dict(Counter(e["split"] for e in examples), settings.target_learned or None),
        learning_curve=until_learned.curve,
    )


def packing_is_exact(model) -> bool:
    """Whether the model keeps packed examples apart: the logits of an example packed behind another
    must equal its logits alone. Models whose attention ignores restarting position ids fail this,
    and then train on padded batches instead."""
    import torch

    ids = torch.arange(3, 15, device=model.device).remainder(model.config.vocab_size).unsqueeze(0)
    positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0).to(model.device)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, 5:].float()
        alone = model(input_ids=ids[:, 5:], use_cache=False).logits[0].float()
    tolerance = 1e-3 if packed.dtype == alone.dtype == torch.float32 and model.dtype == torch.float32 else 5e-2
    return bool((packed - alone).abs().max() <= tolerance * (1 + alone.abs().max()))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint whose trainer state was fully written.

    The Trainer writes trainer_state.json after the weights, optimizer and RNG state, so a process killed
    mid-save leaves a newer folder without a readable state file; resuming from it would fail.
    """
    numbered = [p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()] if folder.is_dir() else []
    for checkpoint in sorted(numbered, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(checkpoint)
    return None


def _time_budget(budget_s: float | None, progress: Callable[[dict], None] | None, total_steps: int):
    """A callback that stops training when the time budget is spent and reports step, loss and tokens/s."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.monotonic()
            self.stopped = False
            self.tokens_at_start = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.tokens_at_start = state.num_input_tokens_seen  # after a resume, what the checkpoint had seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if progress and logs and "loss" in logs:
                elapsed = time.monotonic() - self.started
                tokens = state.num_input_tokens_seen - self.tokens_at_start
                progress(
                    {
                        "step": state.global_step,
                        "total": total_steps,
                        "loss": logs["loss"],
                        "tokens_per_second": tokens / elapsed if elapsed else 0.0,
                    }
                )

        def on_step_end(self, args, state, control, **kwargs):
            if budget_s is not None and time.monotonic() - self.started >= budget_s:
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            crash_point("train.checkpoint_saved")  # called once the checkpoint is complete on disk

    return TimeBudget()


class UntilLearned:
    """A Trainer callback that stops training once the sampled training answers are learned.

    Every `check_steps` optimizer steps it runs the cheap teacher-forced check; when that says the
    target is reached, the greedy check confirms it, and a confirmed check stops the run (and saves).
    """

    def __init__(self, probe: LearningProbe, target: float | None, check_steps: int, progress: Callable[[dict], None] | None) -> None:
        from transformers import TrainerCallback

        self.probe, self.target, self.check_steps, self.progress = probe, target or None, check_steps, progress
        self.curve: list[list[float | None]] = []
        self.final: Learned | None = None
        callback = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if callback.check(model, state.global_step):
                    control.should_training_stop = True
                    control.should_save = True

        self.callback = Callback()

    def check(self, model, step: int) -> bool:
        if self.target is None or step % self.check_steps:
            return False
        cheap = self.probe.teacher_forced(model, step)
        self.curve.append([step, round(cheap.share, 4), cheap.token_accuracy])
        if self.progress:
            self.progress({"step": step, "learned": cheap.share})
        if cheap.share < self.target:
            return False
        confirmed = self.probe.greedy(model, step)
        if confirmed.share >= self.target:
            self.final = confirmed
        return self.final is not None


def main() -> None:
    """Entry point of each torchrun process: `python -m adapterctl.training WORK_DIR [--resume]`."""
    work_dir = Path(sys.argv[1])
    result = run_training(work_dir, resume="--resume" in sys.argv[2:])
    if int(os.environ.get("RANK", "0")) == 0:
        (work_dir / "result.json").write_text(json.dumps(asdict(result)))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Leave together: a process that exits while gloo's threads still run aborts ("terminate called").
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
