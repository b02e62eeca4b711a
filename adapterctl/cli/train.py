"""`adapterctl train`: the batch job cron runs; new feedback in, one candidate adapter out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Annotated

import typer

from adapterctl.cli._common import JsonOption, parse_duration, print_json, work_progress, workspace
from adapterctl.dataset import DataSettings
from adapterctl.learning import summary
from adapterctl.rehearsal import reference_line
from adapterctl.runs import TrainRequest, train_line
from adapterctl.training import TrainSettings

defaults = TrainSettings()
data_defaults = DataSettings()


def train(
    ctx: typer.Context,
    line: Annotated[str, typer.Option("--line", help="Line to train.")],
    min_examples: Annotated[int | None, typer.Option(help="Fewest new examples worth a run [default: the line's setting].")] = None,
    max_steps: Annotated[
        int, typer.Option(help="Most optimizer steps; training stops earlier once the training answers are learned.")
    ] = defaults.max_steps,
    epochs: Annotated[float | None, typer.Option(help="Train this many passes over the examples instead of --max-steps.")] = None,
    target_learned: Annotated[
        float | None,
        typer.Option(help="Stop once this share of the sampled training answers is answered exactly (greedy); 0 trains the whole length."),
    ] = defaults.target_learned,
    time_budget: Annotated[str | None, typer.Option(help="Stop and save after this long: 900, 15m, 2h.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA in bf16 when available, else CPU), cpu or cuda.")] = defaults.device,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = defaults.learning_rate,
    batch_size: Annotated[int, typer.Option(help="Examples per device and step.")] = defaults.batch_size,
    grad_accumulation: Annotated[int, typer.Option(help="Batches per optimizer step.")] = defaults.grad_accumulation,
    scheduler: Annotated[str, typer.Option(help="cosine, linear or constant, after warmup.")] = defaults.scheduler,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on the LoRA weights.")] = defaults.weight_decay,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps spent warming up.")] = defaults.warmup_ratio,
    max_length: Annotated[int, typer.Option(help="Longest example in tokens.")] = defaults.max_length,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling and replay choice.")] = defaults.seed,
    holdout_fraction: Annotated[
        float, typer.Option(help="Share of new examples held out for evaluation.")
    ] = data_defaults.holdout_fraction,
    replay_fraction: Annotated[
        float, typer.Option(help="Share of the training set replayed from approved versions' data; 1 = all.")
    ] = data_defaults.replay_fraction,
    processes: Annotated[int, typer.Option(help="Training processes (torchrun, DDP; gloo on CPU).")] = 1,
    checkpoint_steps: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = defaults.checkpoint_steps,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the line's interrupted run if there is one.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Train a candidate adapter from a line's new feedback (exit 0 with "nothing to do" when too little)."""
    ws = workspace(ctx)
    with ws.reading() as session:
        from adapterctl.lines import get_line, settings_of

        line_settings = settings_of(get_line(session, line))
    request = TrainRequest(
        line=line,
        min_examples=min_examples,
        training=TrainSettings(
            learning_rate=learning_rate,
            epochs=epochs,
            max_steps=max_steps,
            target_learned=target_learned or None,
            time_budget_s=parse_duration(time_budget),
            batch_size=batch_size,
            grad_accumulation=grad_accumulation,
            warmup_ratio=warmup_ratio,
            scheduler=scheduler,
            weight_decay=weight_decay,
            max_length=max_length,
            seed=seed,
            device=device,
            checkpoint_steps=checkpoint_steps,
        ),
        data=DataSettings(
            holdout_fraction=holdout_fraction,
            replay_fraction=replay_fraction,
            max_source_share=line_settings.max_source_share,
            seed=seed,
            reference_anchor_share=line_settings.reference_anchor_share,
        ),
        processes=processes,
        resume=resume,
    )
    with _job_progress() as progress:
        outcome = train_line(ws, request, progress=progress)
    if json_output:
        print_json(asdict(outcome))
        return
    for leftover in outcome.leftovers:
        verdict = leftover.get("error") or (
            "gate passed: it waits for review"
            if leftover["status"] == "pending_review"
            else "gate failed: " + "; ".join(leftover["gate"]["reasons"])
        )
        typer.echo(f"candidate {leftover['candidate_id']} of {line} was left evaluating by an interrupted job; evaluated now: {verdict}")
    if skipped := outcome.dataset.get("unrenderable", {}).get("count"):
        ids = ", ".join(f"#{i}" for i in outcome.dataset["unrenderable"]["feedback_ids"][:10])
        typer.echo(
            f"left out {skipped} feedback records the base model's chat template cannot render ({ids}): "
            f"{'; '.join(outcome.dataset['unrenderable']['reasons'])}",
            err=True,
        )
    if outcome.status == "nothing_to_do":
        typer.echo(f"nothing to do for {line}: {outcome.reason}")
    else:
        m, splits = outcome.metrics, outcome.dataset.get("splits", {})
        final_loss = m["loss_curve"][-1][1] if m["loss_curve"] else float("nan")
        typer.echo(
            f"candidate {outcome.candidate_id} of {line} trained{' (resumed)' if outcome.resumed else ''}: "
            f"{splits.get('train', 0)} train, {splits.get('heldout', 0)} held-out, {splits.get('replay', 0)} replay, {splits.get('reference', 0)} reference examples; "
            f"{m['steps']} steps in {m['seconds']:.0f} s on {m['device']} ({m['tokens_per_second']:,.0f} tokens/s), final loss {final_loss:.3f}"
        )
        typer.echo(summary(m))
        if synthesized := outcome.dataset.get("reference", {}).get("synthesized_now"):
            typer.echo(reference_line(synthesized))
        if outcome.gate is not None:
            verdict = "passed: it waits for review" if outcome.gate["passed"] else "failed: " + "; ".join(outcome.gate["reasons"])
            typer.echo(f"evaluation gate {verdict} (`adapterctl review show {outcome.candidate_id}`)")


@contextmanager
def _job_progress() -> Iterator[Callable[[dict], None]]:
    """The job's events as progress on stderr: training steps with loss and tokens/s, then evaluation."""
    with work_progress() as update:
        learned = ""

        def on_event(event: dict) -> None:
            nonlocal learned
            if "evaluated" in event:
                update(f"evaluating candidate {event['candidate']}", event["evaluated"], event["total"])
            elif "learned" in event:
                learned = f"  learned {event['learned']:.0%}"
            else:
                update(
                    "training", event["step"], event["total"], f"loss {event['loss']:.3f}  {event['tokens_per_second']:,.0f} tok/s{learned}"
                )

        yield on_event
