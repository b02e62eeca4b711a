"""Training throughput: adapterctl's trainer against a minimal hand-written PEFT loop with padded batches.

    .venv/bin/python bench/train_throughput.py [--examples 256] [--steps 40] [--batch-size 8]

Both train the same LoRA (rank 8, all linear layers) on the same tiny model, the same variable-length
chat examples (prompts of 5-250 words, answers of 3-120), the same number of steps, batch size,
learning rate and seed. The baseline draws random batches and pads each to its longest row, as a
first loop usually does; adapterctl draws the same kind of random batches and packs each into rows of
up to max_length tokens (block-diagonal attention, no cross-talk). Each side runs in its own
process, so peak RSS is its own. Reported: non-padding tokens trained per second, padding
efficiency, peak RSS, and the ratio of adapterctl's tokens/s to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = [
    "account",
    "billing",
    "refund",
    "password",
    "order",
    "shipping",
    "invoice",
    "plan",
    "upgrade",
    "cancel",
    "login",
    "error",
    "screen",
    "phone",
    "email",
    "card",
    "bank",
    "transfer",
    "delivery",
    "address",
    "receipt",
    "support",
    "team",
    "settings",
    "profile",
    "security",
    "export",
    "data",
]


def make_examples(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        prompt = " ".join(rng.choices(WORDS, k=min(250, int(rng.paretovariate(1.2) * 5))))
        answer = " ".join(rng.choices(WORDS, k=min(120, int(rng.paretovariate(1.3) * 3))))
        examples.append({"feedback_id": i, "split": "train", "prompt": [{"role": "user", "content": f"#{i} {prompt}?"}], "answer": answer})
    return examples


def run_adapterctl(model: Path, examples_file: Path, args) -> dict:
    from adapterctl.training import LoraSettings, TrainingJob, TrainSettings, run_training

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "examples.jsonl").write_text(examples_file.read_text())
        settings = TrainSettings(
            learning_rate=args.learning_rate,
            max_steps=args.steps,
            batch_size=args.batch_size,
            scheduler="constant",
            warmup_ratio=0.0,
            checkpoint_steps=10**6,
            seed=0,
            max_length=1024,
            device=args.device,
        )
        TrainingJob(str(model), LoraSettings(8, 16, 0.0, None), settings, str(work / "adapter")).save(work)
        result = run_training(work)
    return {
        "tokens": result.train_tokens,
        "seconds": result.seconds,
        "padding_efficiency": result.padding_efficiency,
        "dtype": result.dtype,
        "device": result.device,
    }


def run_baseline(model: Path, examples_file: Path, args) -> dict:
    """The loop a first implementation would write: shuffle, pad each batch to its longest row, step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapterctl.training import IGNORE, resolve_device, tokenize

    device, dtype = resolve_device(args.device)  # the same device and dtype as adapterctl picks
    tokenizer = AutoTokenizer.from_pretrained(model)
    examples = [json.loads(line) for line in examples_file.read_text().splitlines()]
    rows, _ = tokenize(tokenizer, examples, 1024)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(device),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=args.learning_rate)
    rng = random.Random(0)
    order: list[int] = []
    real = padded = 0
    peft_model.train()
    started = time.perf_counter()
    for _ in range(args.steps):
        if len(order) < args.batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        batch, order = [rows[i] for i in order[: args.batch_size]], order[args.batch_size :]
        width = max(len(r["input_ids"]) for r in batch)
        real += sum(len(r["input_ids"]) for r in batch)
        padded += width * len(batch)
        input_ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * (width - len(r["input_ids"])) for r in batch], device=device)
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in batch], device=device)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch], device=device)
        loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"tokens": real, "seconds": seconds, "padding_efficiency": real / padded, "dtype": dtype, "device": device}


def child(args) -> None:
    runner = run_adapterctl if args.child == "adapterctl" else run_baseline
    result = runner(Path(args.model), Path(args.examples_file), args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto: both sides train there (bf16 on CUDA)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the tiny model")
    parser.add_argument("--hidden", type=int, default=256, help="width of the tiny model")
    parser.add_argument("--child", choices=["adapterctl", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--examples-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from adapterctl.tiny_model import create_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model, examples_file = Path(tmp) / "model", Path(tmp) / "examples.jsonl"
        summary = create_tiny_model(model, layers=args.layers, hidden=args.hidden)
        examples_file.write_text("".join(json.dumps(e) + "\n" for e in make_examples(args.examples)))
        results = {}
        for side in ("baseline", "adapterctl"):
            command = [
                sys.executable,
                __file__,
                "--child",
                side,
                "--model",
                str(model),
                "--examples-file",
                str(examples_file),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--learning-rate",
                str(args.learning_rate),
                "--device",
                args.device,
            ]
            completed = subprocess.run(command, capture_output=True, text=True, check=True)
            results[side] = json.loads(completed.stdout.strip().splitlines()[-1])

    print(
        f"LoRA training throughput: {args.examples} examples, {args.steps} steps of {args.batch_size}, tiny model "
        f"({args.layers} x {args.hidden}, {summary['parameters'] / 1e6:.1f}M parameters) on {results['adapterctl']['device']} "
        f"in {results['adapterctl']['dtype']}"
    )
    print(f"{'':<36}{'tokens/s':>10}{'padding eff.':>14}{'peak RSS MB':>13}{'peak GPU MB':>13}{'seconds':>9}")
    for side, label in (("baseline", "hand-written loop, padded batches"), ("adapterctl", "adapterctl (Trainer, packed rows)")):
        r = results[side]
        print(
            f"{label:<36}{r['tokens'] / r['seconds']:>10,.0f}{r['padding_efficiency']:>14.2f}{r['peak_rss_mb']:>13,.0f}"
            f"{r['peak_gpu_mb']:>13,.0f}{r['seconds']:>9.1f}"
        )
    ratio = (results["adapterctl"]["tokens"] / results["adapterctl"]["seconds"]) / (
        results["baseline"]["tokens"] / results["baseline"]["seconds"]
    )
    print(f"ratio adapterctl / baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
