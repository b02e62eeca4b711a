"""Evaluation speed: batched greedy generation against one prompt at a time, in the same run.

    .venv/bin/python bench/eval_speed.py [--heldout 50] [--suite-cases 25] [--batch-size 16]

One candidate on the default tiny model (`adapterctl base create-tiny`): a LoRA adapter (rank 8, all
linear layers, weights perturbed so that it changes the answers) loaded the way `adapterctl` loads
candidates, measured by `adapterctl.evaluation.measure_model` on 50 held-out examples and 2 suites
(25 cases each): answer-token loss, greedy answers (32 new tokens), suite scores and the reference
loss. The baseline is the same measurement with a batch size of 1. Reported: cases per second
(held-out examples plus suite cases), the ratio, and whether both produced the same answers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapterctl.evaluation import Cases, EvalSettings, builtin_reference, generate, load_models, measure_model, using
from adapterctl.tiny_model import create_tiny_model


class Suite:
    """What measure_model reads of a stored suite."""

    def __init__(self, name: str, cases: list[dict]) -> None:
        self.name, self.version, self.cases = name, 1, cases


def make_adapter(model_dir: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)  # a trained adapter's B is not zero
    model.save_pretrained(out)


def make_cases(heldout: int, suite_cases: int) -> Cases:
    def chat(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    held = [
        {
            "prompt": chat(f"What is the code for room {i}?" + " Please answer briefly." * (i % 4)),
            "answer": f"The code for room {i} is {1000 + 37 * i}.",
        }
        for i in range(heldout)
    ]
    suites = [
        Suite(
            "policies",
            [
                {"prompt": chat(f"What is the refund window for order {i}?"), "expected": "30 days", "match": "contains"}
                for i in range(suite_cases)
            ],
        ),
        Suite(
            "formats",
            [
                {"prompt": chat(f"Give the order number format, case {i}."), "expected": r"[A-Z]{2}\d{8}", "match": "regex"}
                for i in range(suite_cases)
            ],
        ),
    ]
    return Cases(held, suites, builtin_reference(), "built-in")


def timed(model, tokenizer, cases: Cases, settings: EvalSettings) -> tuple[float, list[str]]:
    started = time.perf_counter()
    with using(model, "candidate"):
        measure_model(model, tokenizer, cases, settings)  # metrics and reference answers
    seconds = time.perf_counter() - started
    with using(model, "candidate"):
        answers = generate(model, tokenizer, [c["prompt"] for c in cases.heldout], settings)
    return seconds, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", type=int, default=50)
    parser.add_argument("--suite-cases", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=EvalSettings.batch_size)
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    with tempfile.TemporaryDirectory(prefix="adapterctl-eval-speed-") as tmp:
        model_dir, adapter_dir = Path(tmp) / "tiny", Path(tmp) / "adapter"
        create_tiny_model(model_dir)
        make_adapter(model_dir, adapter_dir)
        model, tokenizer = load_models(str(model_dir), {"candidate": str(adapter_dir)})
        cases = make_cases(args.heldout, args.suite_cases)
        generated = len(cases.heldout) + sum(len(s.cases) for s in cases.suites)
        timed(model, tokenizer, make_cases(4, 2), EvalSettings(batch_size=4))  # warm-up
        one_s, one_answers = timed(model, tokenizer, cases, EvalSettings(batch_size=1))
        batch_s, batch_answers = timed(model, tokenizer, cases, EvalSettings(batch_size=args.batch_size))
    same = sum(a == b for a, b in zip(one_answers, batch_answers)) / len(one_answers)
    print(
        f"evaluation of one candidate: {len(cases.heldout)} held-out examples + {len(cases.suites)} suites x {args.suite_cases} cases, "
        f"{EvalSettings.max_new_tokens} new tokens, tiny model"
    )
    print(f"{'':34}{'cases/s':>9}{'seconds':>9}")
    print(f"{'one prompt at a time (baseline)':34}{generated / one_s:>9.1f}{one_s:>9.1f}")
    print(f"{f'batched ({args.batch_size} per batch)':34}{generated / batch_s:>9.1f}{batch_s:>9.1f}")
    print(f"ratio batched / one at a time: {one_s / batch_s:.2f}x; same held-out answers: {same:.0%}")


if __name__ == "__main__":
    main()
