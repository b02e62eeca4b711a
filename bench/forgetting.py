"""Forgetting across versions of a line: does version 2 learn B2 while keeping B1 and what the base knew (A)?

    .venv/bin/python bench/forgetting.py              # every recipe, under 10 minutes on a 2-core CPU
    .venv/bin/python bench/forgetting.py --quick      # smoke run of the same code, under 2 minutes
    .venv/bin/python bench/forgetting.py --recipes 4,6,7   # some recipes, ablations included (see RECIPES)

The scenario mirrors the product. A tiny Llama (adapterctl.tiny_model) is first pretrained by full
fine-tuning on fact set A (room codes), every token of each chat, until it knows them; that model is
the frozen base of every line. A is split into A_eval, which is only ever measured, and A_ref, the
reference set that the "reference set given" recipes hand the line (the base model's own answers).
Then, per recipe, version 1 of a line learns fact set B1 (cars' colours) and version 2 learns B2
(what each box holds), each logged as corrections with `Workspace.log_feedback` and trained by
`adapterctl.runs.train_line`: adapterctl's own dataset builder, reference synthesis, trainer,
artifact store and registry, in a temporary home with SQLite. v1 is approved before v2 trains, so
that replay ("data of earlier approved versions") sees it. Each candidate is loaded with plain PEFT
from the artifact store and measured by greedy decoding through the chat template: exact match of the
whole answer.

Two kinds of recipe:
  - "adapterctl defaults": what `adapterctl train --line L` does with no options on a line with
    default settings: train until learned, the line's held-out share kept out (new facts are measured
    on the facts each version was taught), and, with no reference set given, the reference set the
    base model writes itself (adapterctl.rehearsal). The tool never sees A. They run on two base
    sizes (2 x 256 and the wider Scale.large).
  - fixed-length recipes (the baselines and ablations): every version trains the same number of epochs
    over its own training set, so each new fact is seen equally often and replay shows up as extra
    seconds; no held-out share.

Reported per recipe: B2 acquisition (exact match after v2), B1 retention after v2, exact match on
A_eval before -> after v2 and its relative drop (as in the sparse memory finetuning paper, which
reports drops of 89% for full fine-tuning, 71% for LoRA and 11% for its method on its benchmark),
steps, seconds (synthesis included) and the seconds spent synthesizing the reference set. Baselines
in the same run: full fine-tuning on B1 then B2 (`tiny_model.teach`: adapterctl never changes base
weights) and plain LoRA (no replay). Goal: B2 >= 0.9, B1 kept >= 0.9, A drop <= 10%.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from adapterctl import base_models, lines, registry, suites
from adapterctl.artifacts import ArtifactStore
from adapterctl.config import Settings
from adapterctl.dataset import DataSettings, is_heldout
from adapterctl.runs import TrainRequest, train_line
from adapterctl.tiny_model import create_tiny_model, teach
from adapterctl.training import TrainSettings
from adapterctl.workspace import Workspace, upgrade_database

Fact = tuple[str, str]  # (question, answer)
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "black", "white", "grey", "brown", "pink", "silver"]
ITEMS = ["ticket", "battery", "flower", "card", "juice", "salt", "fruit", "water"]  # one token each in the tiny tokenizer


@dataclass(frozen=True)
class Scale:
    """How big the scenario is; --quick shrinks it."""

    hidden: int
    """Width of the 2-layer tiny model (128 learns too slowly through LoRA to reach the goal)."""
    large: tuple[int, int]
    """Layers and width of the larger base model the default recipes also run on."""
    a_facts: int
    """Facts in A: half A_eval (measured), half A_ref (the line's reference set)."""
    b_facts: int
    """Facts in each of B1 and B2."""
    pretrain_steps: int
    """Full fine-tuning steps (batch 32) that teach the random tiny model A."""
    epochs: float
    """Passes over each version's training set; the tiny model needs about 100 to memorise a fact."""


FULL = Scale(hidden=256, large=(2, 512), a_facts=96, b_facts=24, pretrain_steps=300, epochs=100)
QUICK = Scale(hidden=128, large=(2, 256), a_facts=32, b_facts=8, pretrain_steps=150, epochs=20)
PRETRAIN_LR = {256: 2e-3}  # by width; wider models want a lower one
FULL_FT_LR = 1e-3
# The fixed-length recipes: adapterctl's default TrainSettings, but a fixed number of epochs instead of
# "until learned", so that every recipe sees each new fact equally often. No checkpoints: nothing to resume.
LORA_TRAINING = TrainSettings(target_learned=None, checkpoint_steps=1_000_000)


@dataclass(frozen=True)
class Recipe:
    name: str
    full_finetune: bool = False
    """Baseline: update every base weight (loop in this file), no adapter, no replay."""
    replay: float = 0.0
    """DataSettings.replay_fraction of version 2."""
    reference: bool = False
    """Give the line A_ref (with the base model's answers) as its reference set before version 1."""
    continue_from_v1: bool = False
    """Version 2 starts from v1's LoRA weights (prototype) instead of a fresh LoRA on the base."""
    weight_decay: float | None = None
    """Override LORA_TRAINING.weight_decay (ablation)."""
    epochs_factor: float = 1.0
    """Multiply Scale.epochs (ablation: a baseline given as many steps as the replay recipes)."""
    lora_rank: int = 8
    """The line's LoRA rank (alpha is twice the rank, as in the line defaults)."""
    defaults: bool = False
    """What `adapterctl train` does with no options, on a line with default settings and no reference set
    given: until learned, with the reference set the base model writes itself. Measured on both sizes."""
    reference_size: int | None = None
    """Override LineSettings.reference_size (0: no synthesized reference set; ablation)."""
    tuning: tuple[tuple[str, Any], ...] = ()
    """TrainSettings fields a default recipe changes (ablations of the chosen defaults)."""
    kl_anchors: bool = False
    """Anchor with the KL divergence to the base model's next-token distribution instead of its greedy
    answers (prototype, `_kl_anchors`)."""


RECIPES = [
    Recipe("full fine-tuning (baseline)", full_finetune=True),
    Recipe("LoRA, no replay (baseline)"),
    Recipe("LoRA from base, replay all", replay=1.0),  # replay 0.5 is the same set here: |B1| = |B2|
    Recipe("LoRA from base, replay all + reference given, fixed epochs", replay=1.0, reference=True),
    Recipe("adapterctl defaults, no reference set given", defaults=True),
    Recipe("adapterctl defaults, reference set given", defaults=True, reference=True),
]
ABLATIONS = [  # not in the default run; `--recipes 6,7,...`
    Recipe("adapterctl defaults, no reference set, none synthesized", defaults=True, reference_size=0),
    Recipe("adapterctl defaults, synthesized reference as KL anchors", defaults=True, kl_anchors=True),
    Recipe("adapterctl defaults, weight decay 0", defaults=True, weight_decay=0.0),
    Recipe("LoRA from base, replay all + reference, rank 32", replay=1.0, reference=True, lora_rank=32),
    Recipe("LoRA continue v1, replay 0.5 + reference", replay=0.5, reference=True, continue_from_v1=True),
    Recipe("LoRA from base, replay 0.5 + reference", replay=0.5, reference=True),
    Recipe("LoRA from base, replay all + reference, weight decay 0", replay=1.0, reference=True, weight_decay=0.0),
    Recipe("LoRA, no replay, 3x epochs", epochs_factor=3.0),
    Recipe("LoRA from base, replay all + reference, 2x epochs", replay=1.0, reference=True, epochs_factor=2.0),
    Recipe("adapterctl defaults, learning rate 1e-3", defaults=True, tuning=(("learning_rate", 1e-3),)),
    Recipe("adapterctl defaults, constant learning rate", defaults=True, tuning=(("scheduler", "constant"),)),
]


@dataclass
class Result:
    recipe: Recipe
    base: str
    a_before: float
    b1_after_v1: float
    b2: float
    b1: float
    a_after: float
    seconds: float
    steps: int
    synthesis_seconds: float | None = None
    stopped: str = ""


# ---------------------------------------------------------------- facts


def make_facts(scale: Scale, seed: int) -> dict[str, list[Fact]]:
    """A (split into A_eval and A_ref), B1 and B2: different templates and answers, no shared keys."""
    rng = random.Random(seed)
    a = [(f"What is the code for room {i}?", f"The code for room {i} is {rng.randint(1000, 9999)}.") for i in range(scale.a_facts)]
    b1 = [(f"What colour is car {i}?", f"Car {i} is {rng.choice(COLOURS)}.") for i in range(scale.b_facts)]
    b2 = [(f"What is in box {i}?", f"Box {i} holds the {rng.choice(ITEMS)}.") for i in range(scale.b_facts)]
    rng.shuffle(a)
    half = len(a) // 2
    return {"A_eval": a[:half], "A_ref": a[half:], "B1": b1, "B2": b2}


# ---------------------------------------------------------------- measuring


def greedy_answers(model, tokenizer, questions: list[str], batch_size: int = 64) -> list[str]:
    """Greedy decoding through the chat template, as tests/test_training.py's `greedy`, batched (left padding)."""
    tokenizer.padding_side = "left"
    model.eval()
    answers = []
    for start in range(0, len(questions), batch_size):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
            for q in questions[start : start + batch_size]
        ]
        inputs = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")  # the template has bos
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        answers += [a.strip() for a in tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
    return answers


def exact_match(model, tokenizer, facts: list[Fact]) -> float:
    answers = greedy_answers(model, tokenizer, [q for q, _ in facts])
    return sum(got == want for got, (_, want) in zip(answers, facts)) / len(facts)


def load(model_dir: Path, adapter_dir: Path | None = None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)  # plain PEFT, as a serving process would
    return model, AutoTokenizer.from_pretrained(model_dir)


# ---------------------------------------------------------------- full fine-tuning: pretraining and the baseline


@dataclass
class Base:
    """A pretrained base model of the scenario, and what it knows before any line trains."""

    name: str
    path: Path
    a_before: float
    seconds: float


def pretrain_base(root: Path, facts: dict[str, list[Fact]], layers: int, hidden: int, scale: Scale, seed: int) -> Base:
    """A random tiny model fully fine-tuned on all of A, every token of each chat (as pretraining
    does: the base can write A's questions, not only answer them), saved with its tokenizer."""
    started = time.perf_counter()
    name = f"{layers}x{hidden}"
    base_dir = root / f"base-{name}"
    lr = PRETRAIN_LR.get(hidden, 1e-3)
    create_tiny_model(root / f"random-{name}", layers=layers, hidden=hidden, vocab=1024, seed=seed)
    model, tokenizer = load(root / f"random-{name}")
    teach(model, tokenizer, facts["A_eval"] + facts["A_ref"], steps=scale.pretrain_steps, lr=lr, seed=seed)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model, tokenizer = load(base_dir)
    known = exact_match(model, tokenizer, facts["A_eval"] + facts["A_ref"])
    if known < 0.95:
        raise SystemExit(f"pretraining {name} reached only {known:.2f} exact match on A (needs 0.95); raise Scale.pretrain_steps")
    print(f"base {name}: pretrained on A to exact match {known:.2f} in {time.perf_counter() - started:.0f} s (lr {lr:g})", flush=True)
    return Base(name, base_dir, exact_match(model, tokenizer, facts["A_eval"]), time.perf_counter() - started)


def run_full_finetune(base: Base, facts: dict[str, list[Fact]], scale: Scale, seed: int) -> tuple[float, ...]:
    """The baseline: B1, then B2, straight into the base weights, as many epochs as a LoRA version gets."""
    model, tokenizer = load(base.path)
    batch = LORA_TRAINING.batch_size
    seconds, steps, b1_after_v1 = 0.0, 0, 0.0
    for name in ("B1", "B2"):
        started = time.perf_counter()
        version_steps = math.ceil(scale.epochs * len(facts[name]) / batch)
        teach(model, tokenizer, facts[name], steps=version_steps, lr=FULL_FT_LR, batch_size=batch, seed=seed, whole_text=False)
        seconds, steps = seconds + time.perf_counter() - started, steps + version_steps
        if name == "B1":
            b1_after_v1 = exact_match(model, tokenizer, facts["B1"])
    return (b1_after_v1, *(exact_match(model, tokenizer, facts[k]) for k in ("B2", "B1", "A_eval")), seconds, steps)


# ---------------------------------------------------------------- versions through adapterctl


def open_workspace(home: Path, bases: list[Base]) -> Workspace:
    """A fresh adapterctl home (SQLite) with each pretrained model registered as base `tiny-<size>`."""
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'adapterctl.db'}", user="bench")
    upgrade_database(settings)
    ws = Workspace(settings)
    with ws.transaction() as session:
        for base in bases:
            base_models.register_base_model(session, name=f"tiny-{base.name}", source=str(base.path), actor="bench")
    return ws


def log_corrections(ws: Workspace, line: str, facts: list[Fact], source: str) -> list[int]:
    return [
        ws.log_feedback(line=line, prompt=question, response="I do not know.", rating=-1, correction=answer, source=f"{source}-{i}")
        for i, (question, answer) in enumerate(facts)
    ]


def add_reference(ws: Workspace, line: str, reference: list[Fact]) -> None:
    """The line's reference set: each prompt with the base model's own answer."""
    cases = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in reference]
    with ws.transaction() as session:
        suites.add_suite(session, line=line, name=suites.REFERENCE, cases=cases, kind="reference", actor="bench")


def train_version(
    ws: Workspace, line: str, recipe: Recipe, training: TrainSettings, data: DataSettings | None, start_from: Path | None
) -> tuple[int, float, dict]:
    """One `adapterctl train` of the line; returns the candidate id, the seconds it took and its outcome."""
    started = time.perf_counter()
    with _starting_from(start_from), _kl_anchors(recipe.kl_anchors):
        outcome = train_line(ws, TrainRequest(line, training=training, data=data, evaluate=False))
    if outcome.status != "trained":
        raise SystemExit(f"line {line}: {outcome.reason}")
    return outcome.candidate_id, time.perf_counter() - started, outcome


@contextmanager
def _starting_from(adapter_dir: Path | None):
    """Prototype of "continue from the active adapter": `training.run_training` wraps the base with
    `peft.get_peft_model`; for this call, hand it the given adapter, trainable, instead of a fresh LoRA."""
    if adapter_dir is None:
        yield
        return
    import peft

    fresh = peft.get_peft_model
    peft.get_peft_model = lambda model, config, *args, **kwargs: peft.PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
    try:
        yield
    finally:
        peft.get_peft_model = fresh


ANCHOR = -1000  # labels of anchor tokens become ANCHOR - token id: told apart from answers, skipped by cross-entropy


@contextmanager
def _kl_anchors(enabled: bool):
    """Prototype of soft anchors: on the reference anchors' answer tokens, the loss is KL(base || adapted)
    of the next-token distributions (the base is the same model with the LoRA adapter disabled: one more
    forward pass, no second model) instead of cross-entropy on the base's greedy answer."""
    if not enabled:
        yield
        return
    import torch.nn.functional as nnf
    from transformers import Trainer

    from adapterctl import training

    plain_tokenize, plain_loss = training.tokenize, Trainer.compute_loss

    def tokenize(tokenizer, examples, max_length):
        rows, truncated = plain_tokenize(tokenizer, examples, max_length)
        for row, example in zip(rows, examples):
            if example.get("split") == "reference":
                row["labels"] = [label if label == training.IGNORE else ANCHOR - label for label in row["labels"]]
        return rows, truncated

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")[:, 1:]
        anchor = labels <= ANCHOR
        answers = labels.masked_fill(anchor, training.IGNORE)
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1].float()
        with torch.no_grad(), model.disable_adapter():
            base = model(**inputs).logits[:, :-1].float()
        hard = nnf.cross_entropy(logits.flatten(0, 1), answers.flatten(), ignore_index=training.IGNORE, reduction="sum")
        soft = nnf.kl_div(nnf.log_softmax(logits[anchor], -1), nnf.log_softmax(base[anchor], -1), log_target=True, reduction="sum")
        loss = (hard + soft) / max(1, int((answers != training.IGNORE).sum() + anchor.sum()))
        return (loss, outputs) if return_outputs else loss

    training.tokenize, Trainer.compute_loss = tokenize, compute_loss
    try:
        yield
    finally:
        training.tokenize, Trainer.compute_loss = plain_tokenize, plain_loss


def candidate_dir(ws: Workspace, candidate_id: int) -> Path:
    """The candidate's folder in the artifact store, after checking it against the database's sha256."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        adapter = registry.get_adapter(session, candidate_id)
        store.verify(adapter.artifact_path, adapter.sha256)
        return store.path_of(adapter.artifact_path)


def run_lora(
    ws: Workspace, line: str, base: Base, recipe: Recipe, facts: dict[str, list[Fact]], reference: list[Fact], scale: Scale
) -> Result:
    """v1 learns B1, is measured and approved; v2 learns B2 with the recipe's replay and start.

    The default recipes keep the line's own held-out share out of training; new facts are measured on
    the facts each version trained on (a held-out fact is a fact nobody taught the model).
    """
    if recipe.defaults:
        training, data = replace(TrainSettings(), **dict(recipe.tuning)), None
        if recipe.weight_decay is not None:
            training = replace(training, weight_decay=recipe.weight_decay)
        line_settings = lines.LineSettings(
            reference_size=recipe.reference_size if recipe.reference_size is not None else lines.LineSettings().reference_size
        )
    else:
        training = replace(LORA_TRAINING, epochs=scale.epochs * recipe.epochs_factor)
        if recipe.weight_decay is not None:
            training = replace(training, weight_decay=recipe.weight_decay)
        data = DataSettings(holdout_fraction=0.0, max_source_share=1.0)
        line_settings = lines.LineSettings(
            min_examples=2, max_source_share=1.0, lora_rank=recipe.lora_rank, lora_alpha=2 * recipe.lora_rank, reference_size=0
        )
    with ws.transaction() as session:
        lines.create_line(session, name=line, base=f"tiny-{base.name}", actor="bench", settings=line_settings)
    if recipe.reference:
        add_reference(ws, line, reference)
    b1_ids = log_corrections(ws, line, facts["B1"], "b1")
    v1, seconds_v1, outcome_v1 = train_version(ws, line, recipe, training, data, None)
    b1 = _trained(facts["B1"], b1_ids, data)
    v1_dir = candidate_dir(ws, v1)
    b1_after_v1 = exact_match(*load(base.path, v1_dir), b1)
    with ws.transaction() as session:
        registry.transition(session, v1, "pending_review", actor="bench", reason="forgetting bench: no gate")
        registry.transition(session, v1, "approved", actor="bench-reviewer", reason="forgetting bench")
    b2_ids = log_corrections(ws, line, facts["B2"], "b2")
    v2, seconds_v2, outcome_v2 = train_version(
        ws,
        line,
        recipe,
        training,
        data if data is None else replace(data, replay_fraction=recipe.replay),
        v1_dir if recipe.continue_from_v1 else None,
    )
    model, tokenizer = load(base.path, candidate_dir(ws, v2))
    steps = (outcome_v1.metrics["steps"], outcome_v2.metrics["steps"])
    synthesized = outcome_v1.dataset["reference"].get("synthesized_now")
    print(
        f"    v1 {steps[0]} steps in {seconds_v1:.0f} s ({outcome_v1.metrics['stop_reason']}), "
        f"v2 {steps[1]} steps in {seconds_v2:.0f} s ({outcome_v2.metrics['stop_reason']})"
        + (f"; reference set synthesized: {synthesized['kept']} cases in {synthesized['seconds']:.1f} s" if synthesized else ""),
        flush=True,
    )
    return Result(
        recipe,
        base.name,
        base.a_before,
        b1_after_v1,
        exact_match(model, tokenizer, _trained(facts["B2"], b2_ids, data)),
        exact_match(model, tokenizer, b1),
        exact_match(model, tokenizer, facts["A_eval"]),
        seconds_v1 + seconds_v2,
        sum(steps),
        synthesized["seconds"] if synthesized else None,
        "/".join(o.metrics["stop_reason"] for o in (outcome_v1, outcome_v2)),
    )


def _trained(facts: list[Fact], feedback_ids: list[int], data: DataSettings | None) -> list[Fact]:
    """The facts a version was taught: all but those the line's held-out share keeps out."""
    holdout = (data or DataSettings()).holdout_fraction
    return [fact for fact, feedback_id in zip(facts, feedback_ids) if not is_heldout(feedback_id, holdout)]


# ---------------------------------------------------------------- report


def relative_drop(before: float, after: float) -> float:
    return (before - after) / before if before else 0.0


def meets_goal(result: Result) -> bool:
    return result.b2 >= 0.9 and result.b1 >= 0.9 and relative_drop(result.a_before, result.a_after) <= 0.10


def print_table(results: list[Result]) -> None:
    print(
        "| recipe | base | B1 after v1 | B2 acquisition | B1 retention after v2 | A exact match before → after v2 | relative A drop "
        "| steps (stopped by) | seconds | of which synthesizing | goal met |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in results:
        stopped = f" ({r.stopped})" if r.stopped else ""
        synthesis = f"{r.synthesis_seconds:.1f}" if r.synthesis_seconds is not None else "-"
        print(
            f"| {r.recipe.name} | {r.base} | {r.b1_after_v1:.2f} | {r.b2:.2f} | {r.b1:.2f} | {r.a_before:.2f} → {r.a_after:.2f} "
            f"| {relative_drop(r.a_before, r.a_after):.0%} | {r.steps}{stopped} | {r.seconds:.0f} | {synthesis} | {'yes' if meets_goal(r) else 'no'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few epochs (numbers mean little)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the facts, the tiny model and training")
    parser.add_argument(
        "--recipes",
        help=f"comma-separated indexes: 0-{len(RECIPES) - 1} (default, all run), "
        f"{len(RECIPES)}-{len(RECIPES) + len(ABLATIONS) - 1} (ablations)",
    )
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    scale = QUICK if args.quick else FULL
    catalogue = RECIPES + ABLATIONS
    chosen = [int(i) for i in args.recipes.split(",")] if args.recipes else range(len(RECIPES))
    wall = time.perf_counter()
    facts = make_facts(scale, args.seed)
    with tempfile.TemporaryDirectory(prefix="adapterctl-forgetting-") as tmp:
        root = Path(tmp)
        small = pretrain_base(root, facts, 2, scale.hidden, scale, args.seed)
        bases = [small]
        if any(catalogue[i].defaults for i in chosen):
            bases.append(pretrain_base(root, facts, *scale.large, scale, args.seed))
        ref_questions = [q for q, _ in facts["A_ref"]]
        references = {base.name: list(zip(ref_questions, greedy_answers(*load(base.path), ref_questions))) for base in bases}
        ws = open_workspace(root / "home", bases)
        results = []
        for index in chosen:
            recipe = catalogue[index]
            for base in bases if recipe.defaults else [small]:
                started = time.perf_counter()
                print(f"  {recipe.name} on {base.name}", flush=True)
                if recipe.full_finetune:
                    results.append(Result(recipe, base.name, base.a_before, *run_full_finetune(base, facts, scale, args.seed)))
                else:
                    results.append(run_lora(ws, f"recipe-{index}-{base.name}", base, recipe, facts, references[base.name], scale))
                print(f"    done in {time.perf_counter() - started:.0f} s", flush=True)
        ws.close()
    print()
    print_table(results)
    print(
        f"\n{len(facts['A_eval'])} A_eval, {len(facts['A_ref'])} A_ref, {len(facts['B1'])} B1, {len(facts['B2'])} B2 facts; "
        f"fixed-length recipes: {scale.epochs:g} epochs per version; bases (layers x width): {', '.join(b.name for b in bases)}, "
        f"pretrained in {', '.join(f'{b.seconds:.0f}' for b in bases)} s; wall time {time.perf_counter() - wall:.0f} s"
    )


if __name__ == "__main__":
    main()
