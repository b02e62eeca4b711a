"""Forgetting across versions of a line: does version 2 learn B2 while keeping B1 and what the base knew (A)?

    .venv/bin/python bench/forgetting.py            # every recipe, under 10 minutes on a 2-core CPU
    .venv/bin/python bench/forgetting.py --quick    # smoke run of the same code, under 2 minutes
    .venv/bin/python bench/forgetting.py --recipes 4,6,7 # some recipes, ablations included (see RECIPES)

The scenario mirrors the product. A tiny Llama (adapterctl.tiny_model) is first pretrained by full
fine-tuning on fact set A (room codes) until it knows them; that model is the frozen base of every
line. A is split into A_eval, which is only ever measured, and A_ref, the line's reference set, the
only part of A that a recipe may train on. Then, per recipe, version 1 of a line learns fact set B1
(cars' colours) and version 2 learns B2 (what each box holds), each logged as corrections with
`Workspace.log_feedback` and trained by `adapterctl.runs.train_line`: adapterctl's own dataset
builder, trainer, artifact store and registry, in a temporary home with SQLite. v1 is approved
before v2 trains, so that replay ("data of earlier approved versions") sees it. Each candidate is
loaded with plain PEFT from the artifact store and measured by greedy decoding through the chat
template: exact match of the whole answer.

Reported per recipe: B2 acquisition (exact match after v2), B1 retention after v2, exact match on
A_eval before -> after v2 and its relative drop (as in the sparse memory finetuning paper, which
reports drops of 89% for full fine-tuning, 71% for LoRA and 11% for its method on its benchmark),
and the training seconds of both versions. Baselines in the same run: full fine-tuning on B1 then B2
(a loop in this file: adapterctl never changes base weights) and plain LoRA (no replay).

Every version trains the same number of epochs over its own training set (new examples plus replay),
so each new fact is seen equally often and replay shows up as extra seconds. Recipes "+ reference"
give the line A_ref as its reference set (`adapterctl eval suite add reference`): each A_ref prompt
with the base model's own greedy answer. adapterctl mixes the anchor half of it (by a hash of each
case) into every training run, a hard-label self-distillation; the other half is its own forgetting
measure, which this benchmark does not use (it measures A_eval). "continue" recipes start v2 from v1's LoRA weights rather than a fresh LoRA; adapterctl
cannot do that yet, so `_starting_from` prototypes it. Goal for the default recipe: B2 >= 0.9, B1 kept >= 0.9,
A drop <= 10%.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from adapterctl import base_models, lines, registry, suites  # noqa: E402
from adapterctl.artifacts import ArtifactStore  # noqa: E402
from adapterctl.config import Settings  # noqa: E402
from adapterctl.dataset import DataSettings  # noqa: E402
from adapterctl.runs import TrainRequest, train_line  # noqa: E402
from adapterctl.tiny_model import create_tiny_model  # noqa: E402
from adapterctl.training import PadCollator, TrainSettings, tokenize  # noqa: E402
from adapterctl.workspace import Workspace, upgrade_database  # noqa: E402

Fact = tuple[str, str]  # (question, answer)
COLOURS = "red blue green yellow orange purple black white grey brown pink silver".split()
ITEMS = "ticket battery flower card juice salt fruit water".split()  # one token each in the tiny tokenizer


@dataclass(frozen=True)
class Scale:
    """How big the scenario is; --quick shrinks it."""

    hidden: int
    """Width of the 2-layer tiny model (128 learns too slowly through LoRA to reach the goal)."""
    a_facts: int
    """Facts in A: half A_eval (measured), half A_ref (the line's reference set)."""
    b_facts: int
    """Facts in each of B1 and B2."""
    pretrain_steps: int
    """Full fine-tuning steps (batch 32) that teach the random tiny model A."""
    epochs: float
    """Passes over each version's training set; the tiny model needs about 100 to memorise a fact."""


FULL = Scale(hidden=256, a_facts=96, b_facts=24, pretrain_steps=300, epochs=100)
QUICK = Scale(hidden=128, a_facts=32, b_facts=8, pretrain_steps=150, epochs=20)
PRETRAIN_LR = 2e-3
FULL_FT_LR = 1e-3
# adapterctl's TrainSettings with what the tiny model needs: a high learning rate (its docstring says
# so), batches of 16, and weight decay on the LoRA weights, which keeps the update small where the
# data does not ask for it (see the "weight decay 0" ablation). No checkpoints: nothing to resume here.
LORA_TRAINING = TrainSettings(learning_rate=3e-3, batch_size=16, weight_decay=1.0, checkpoint_steps=1_000_000)


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


RECIPES = [
    Recipe("full fine-tuning (baseline)", full_finetune=True),
    Recipe("LoRA, no replay (baseline)"),
    Recipe("LoRA from base, replay all", replay=1.0),  # replay 0.5 is the same set here: |B1| = |B2|
    Recipe("LoRA from base, replay all + reference (adapterctl's default)", replay=1.0, reference=True),
    Recipe("LoRA from base, replay all + reference, rank 32", replay=1.0, reference=True, lora_rank=32),
    Recipe("LoRA continue v1, replay 0.5 + reference", replay=0.5, reference=True, continue_from_v1=True),
]
ABLATIONS = [  # not in the default run; `--recipes 6,7,8,9`
    Recipe("LoRA from base, replay 0.5 + reference", replay=0.5, reference=True),
    Recipe("LoRA from base, replay all + reference, weight decay 0", replay=1.0, reference=True, weight_decay=0.0),
    Recipe("LoRA, no replay, 3x epochs", epochs_factor=3.0),
    Recipe("LoRA from base, replay all + reference, 2x epochs", replay=1.0, reference=True, epochs_factor=2.0),
]


@dataclass
class Result:
    recipe: Recipe
    b1_after_v1: float
    b2: float
    b1: float
    a_after: float
    seconds: float
    steps: int


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
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
                 for q in questions[start : start + batch_size]]
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


def full_finetune(model, tokenizer, facts: list[Fact], *, steps: int, lr: float, batch_size: int, seed: int) -> None:
    """AdamW on every weight, loss on the answer tokens only, linear warmup then cosine decay."""
    rows, _ = tokenize(tokenizer, [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in facts], 256)
    collate = PadCollator(tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    sampler = random.Random(seed)
    model.train()
    for _ in range(steps):
        model(**collate(sampler.sample(rows, min(batch_size, len(rows))))).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()


def pretrain_base(root: Path, facts: dict[str, list[Fact]], scale: Scale, seed: int) -> tuple[Path, float]:
    """The base model of every line: the random tiny model fully fine-tuned on all of A, saved with its tokenizer."""
    random_dir, base_dir = root / "random", root / "base"
    create_tiny_model(random_dir, layers=2, hidden=scale.hidden, vocab=1024, seed=seed)
    model, tokenizer = load(random_dir)
    a = facts["A_eval"] + facts["A_ref"]
    full_finetune(model, tokenizer, a, steps=scale.pretrain_steps, lr=PRETRAIN_LR, batch_size=32, seed=seed)
    known = exact_match(model, tokenizer, a)
    if known < 0.95:
        raise SystemExit(f"pretraining reached only {known:.2f} exact match on A (needs 0.95); raise Scale.pretrain_steps")
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    return base_dir, known


def run_full_finetune(base_dir: Path, facts: dict[str, list[Fact]], scale: Scale, seed: int) -> tuple[float, ...]:
    """The baseline: B1, then B2, straight into the base weights, as many epochs as a LoRA version gets."""
    model, tokenizer = load(base_dir)
    seconds, steps, b1_after_v1 = 0.0, 0, 0.0
    for name in ("B1", "B2"):
        started = time.perf_counter()
        version_steps = math.ceil(scale.epochs * len(facts[name]) / LORA_TRAINING.batch_size)
        full_finetune(model, tokenizer, facts[name], steps=version_steps, lr=FULL_FT_LR, batch_size=LORA_TRAINING.batch_size, seed=seed)
        seconds, steps = seconds + time.perf_counter() - started, steps + version_steps
        if name == "B1":
            b1_after_v1 = exact_match(model, tokenizer, facts["B1"])
    return (b1_after_v1, *(exact_match(model, tokenizer, facts[k]) for k in ("B2", "B1", "A_eval")), seconds, steps)


# ---------------------------------------------------------------- versions through adapterctl


def open_workspace(home: Path, base_dir: Path) -> Workspace:
    """A fresh adapterctl home (SQLite) with the pretrained model registered as base `tiny-a`."""
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'adapterctl.db'}", user="bench")
    upgrade_database(settings)
    ws = Workspace(settings)
    with ws.transaction() as session:
        base_models.register_base_model(session, name="tiny-a", source=str(base_dir), actor="bench")
    return ws


def log_corrections(ws: Workspace, line: str, facts: list[Fact], source: str) -> None:
    for i, (question, answer) in enumerate(facts):
        ws.log_feedback(line=line, prompt=question, response="I do not know.", rating=-1, correction=answer, source=f"{source}-{i}")


def add_reference(ws: Workspace, line: str, reference: list[Fact]) -> None:
    """The line's reference set: each prompt with the base model's own answer."""
    cases = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in reference]
    with ws.transaction() as session:
        suites.add_suite(session, line=line, name=suites.REFERENCE, cases=cases, kind="reference", actor="bench")


def train_version(ws: Workspace, line: str, recipe: Recipe, training: TrainSettings, replay: float,
                  start_from: Path | None) -> tuple[int, float, int]:
    """One `adapterctl train` of the line; returns the candidate id, the seconds it took and its steps."""
    data = DataSettings(holdout_fraction=0.0, replay_fraction=replay, max_source_share=1.0)
    started = time.perf_counter()
    with _starting_from(start_from):
        outcome = train_line(ws, TrainRequest(line, training=training, data=data, evaluate=False))
    if outcome.status != "trained":
        raise SystemExit(f"line {line}: {outcome.reason}")
    return outcome.candidate_id, time.perf_counter() - started, outcome.metrics["steps"]


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


def candidate_dir(ws: Workspace, candidate_id: int) -> Path:
    """The candidate's folder in the artifact store, after checking it against the database's sha256."""
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        adapter = registry.get_adapter(session, candidate_id)
        store.verify(adapter.artifact_path, adapter.sha256)
        return store.path_of(adapter.artifact_path)


def run_lora(ws: Workspace, line: str, base_dir: Path, recipe: Recipe, facts: dict[str, list[Fact]],
             reference: list[Fact], scale: Scale) -> tuple[float, ...]:
    """v1 learns B1, is measured and approved; v2 learns B2 with the recipe's replay and start."""
    training = replace(LORA_TRAINING, epochs=scale.epochs * recipe.epochs_factor)
    if recipe.weight_decay is not None:
        training = replace(training, weight_decay=recipe.weight_decay)
    with ws.transaction() as session:
        lines.create_line(session, name=line, base="tiny-a", actor="bench", settings=lines.LineSettings(
            min_examples=2, max_source_share=1.0, lora_rank=recipe.lora_rank, lora_alpha=2 * recipe.lora_rank))
    if recipe.reference:
        add_reference(ws, line, reference)
    log_corrections(ws, line, facts["B1"], "b1")
    v1, seconds_v1, steps_v1 = train_version(ws, line, recipe, training, 0.0, None)
    v1_dir = candidate_dir(ws, v1)
    b1_after_v1 = exact_match(*load(base_dir, v1_dir), facts["B1"])
    with ws.transaction() as session:
        registry.transition(session, v1, "pending_review", actor="bench", reason="forgetting bench: no gate")
        registry.transition(session, v1, "approved", actor="bench-reviewer", reason="forgetting bench")
    log_corrections(ws, line, facts["B2"], "b2")
    v2, seconds_v2, steps_v2 = train_version(ws, line, recipe, training, recipe.replay, v1_dir if recipe.continue_from_v1 else None)
    model, tokenizer = load(base_dir, candidate_dir(ws, v2))
    print(f"    v1 {steps_v1} steps in {seconds_v1:.0f} s, v2 {steps_v2} steps in {seconds_v2:.0f} s", flush=True)
    return (b1_after_v1, *(exact_match(model, tokenizer, facts[k]) for k in ("B2", "B1", "A_eval")),
            seconds_v1 + seconds_v2, steps_v1 + steps_v2)


# ---------------------------------------------------------------- report


def relative_drop(before: float, after: float) -> float:
    return (before - after) / before if before else 0.0


def meets_goal(result: Result, a_before: float) -> bool:
    return result.b2 >= 0.9 and result.b1 >= 0.9 and relative_drop(a_before, result.a_after) <= 0.10


def print_table(results: list[Result], a_before: float) -> None:
    print("| recipe | B1 after v1 | B2 acquisition | B1 retention after v2 | A exact match before → after v2 | relative A drop | steps | seconds | goal met |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |")
    for r in results:
        print(f"| {r.recipe.name} | {r.b1_after_v1:.2f} | {r.b2:.2f} | {r.b1:.2f} | {a_before:.2f} → {r.a_after:.2f} "
              f"| {relative_drop(a_before, r.a_after):.0%} | {r.steps} | {r.seconds:.0f} | {'yes' if meets_goal(r, a_before) else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few epochs (numbers mean little)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the facts, the tiny model and training")
    parser.add_argument("--recipes", help=f"comma-separated indexes: 0-{len(RECIPES) - 1} (default, all run), "
                                          f"{len(RECIPES)}-{len(RECIPES) + len(ABLATIONS) - 1} (ablations)")
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
        started = time.perf_counter()
        base_dir, known = pretrain_base(root, facts, scale, args.seed)
        model, tokenizer = load(base_dir)
        a_before = exact_match(model, tokenizer, facts["A_eval"])
        ref_questions = [q for q, _ in facts["A_ref"]]
        reference = list(zip(ref_questions, greedy_answers(model, tokenizer, ref_questions)))
        print(f"base: pretrained on A to exact match {known:.2f} in {time.perf_counter() - started:.0f} s", flush=True)
        ws = open_workspace(root / "home", base_dir)
        results = []
        for index in chosen:
            recipe, started = catalogue[index], time.perf_counter()
            print(f"  {recipe.name}", flush=True)
            if recipe.full_finetune:
                numbers = run_full_finetune(base_dir, facts, scale, args.seed)
            else:
                numbers = run_lora(ws, f"recipe-{index}", base_dir, recipe, facts, reference, scale)
            results.append(Result(recipe, *numbers))
            print(f"    done in {time.perf_counter() - started:.0f} s", flush=True)
        ws.close()
    print()
    print_table(results, a_before)
    print(f"\n{len(facts['A_eval'])} A_eval, {len(facts['A_ref'])} A_ref, {len(facts['B1'])} B1, {len(facts['B2'])} B2 facts; "
          f"{scale.epochs:g} epochs per version; tiny model 2 x {scale.hidden}; wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
