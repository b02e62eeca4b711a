"""`adapterctl line …`: create and inspect lines."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl import access, lines
from adapterctl.canary import CanarySettings
from adapterctl.cli._common import (
    JsonOption,
    print_fields,
    print_json,
    print_table,
    workspace,
)
from adapterctl.errors import InvalidInput
from adapterctl.lines import GateThresholds, LineSettings

app = typer.Typer(help="Lines: named streams of adapters on one base model.", no_args_is_help=True)
defaults = LineSettings()


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Line name, e.g. support-bot.")],
    base: Annotated[str, typer.Option("--base", help="Registered base model the line's adapters sit on.")],
    description: Annotated[str | None, typer.Option(help="What the line is for.")] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank r.")] = defaults.lora_rank,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha (scaling numerator).")] = defaults.lora_alpha,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout during training.")] = defaults.lora_dropout,
    target_modules: Annotated[
        str | None, typer.Option(help="Comma-separated module names for LoRA [default: every linear projection].")
    ] = None,
    approvals: Annotated[int, typer.Option(help="Distinct reviewer approvals a candidate needs.")] = defaults.approvals_required,
    min_examples: Annotated[int, typer.Option(help="Fewest new examples for which training runs.")] = defaults.min_examples,
    max_source_share: Annotated[float, typer.Option(help="Largest share of a run's examples from one source.")] = defaults.max_source_share,
    reference_anchor_share: Annotated[
        float, typer.Option(help="Share of the reference set mixed into training; the rest measures forgetting.")
    ] = defaults.reference_anchor_share,
    reference_size: Annotated[
        int, typer.Option(help="Cases the reference set should hold; the base model writes the missing ones (0: never).")
    ] = defaults.reference_size,
    max_suite_drop: Annotated[
        float, typer.Option(help="Gate: largest allowed drop of a regression suite score.")
    ] = defaults.gate.max_suite_drop,
    max_reference_drop: Annotated[
        float, typer.Option(help="Gate: largest allowed drop of agreement with the reference set's answers, against the base model.")
    ] = defaults.gate.max_reference_drop,
    max_forgetting_increase: Annotated[
        float, typer.Option(help="Gate: largest allowed relative increase of reference-set loss (a reference set of text only).")
    ] = defaults.gate.max_forgetting_increase,
    min_heldout_gain: Annotated[
        float, typer.Option(help="Gate: smallest required held-out exact-match gain.")
    ] = defaults.gate.min_heldout_gain,
    min_heldout_cases: Annotated[
        int, typer.Option(help="Gate: fewest held-out cases to judge the held-out gain on; with fewer it is 'too small to judge'.")
    ] = defaults.gate.min_heldout_cases,
    max_version_drop: Annotated[
        float, typer.Option(help="Gate: largest allowed drop of exact match on an earlier version's data, against the active version.")
    ] = defaults.gate.max_version_drop,
    min_learned: Annotated[
        float, typer.Option(help="Gate: smallest share of its own training answers a candidate must reproduce.")
    ] = defaults.gate.min_learned,
    max_degenerate_share: Annotated[
        float, typer.Option(help="Gate: largest share of empty or repetitive answers.")
    ] = defaults.gate.max_degenerate_share,
    canary_max_drop: Annotated[
        float, typer.Option(help="Canary: worst acceptable drop of the thumbs-up rate (0.05: 5 points).")
    ] = defaults.canary.max_drop,
    canary_alpha: Annotated[
        float, typer.Option(help="Canary: highest chance of rolling back a canary that is no worse.")
    ] = defaults.canary.alpha,
    canary_beta: Annotated[
        float, typer.Option(help="Canary: highest chance of completing a canary worse by max-drop.")
    ] = defaults.canary.beta,
    canary_min_feedback: Annotated[
        int, typer.Option(help="Canary: ratings each version needs before the test judges.")
    ] = defaults.canary.min_feedback,
    json_output: JsonOption = False,
) -> None:
    """Create a line on a registered base model."""
    settings = LineSettings(
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=tuple(m.strip() for m in target_modules.split(",") if m.strip()) if target_modules is not None else None,
        approvals_required=approvals,
        min_examples=min_examples,
        max_source_share=max_source_share,
        reference_anchor_share=reference_anchor_share,
        reference_size=reference_size,
        gate=GateThresholds(
            max_suite_drop=max_suite_drop,
            max_reference_drop=max_reference_drop,
            max_forgetting_increase=max_forgetting_increase,
            min_heldout_gain=min_heldout_gain,
            min_heldout_cases=min_heldout_cases,
            max_version_drop=max_version_drop,
            min_learned=min_learned,
            max_degenerate_share=max_degenerate_share,
        ),
        canary=CanarySettings(max_drop=canary_max_drop, alpha=canary_alpha, beta=canary_beta, min_feedback=canary_min_feedback),
    )
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "line.create")
        result = lines.as_dict(lines.create_line(session, name=name, base=base, actor=ws.user, settings=settings, description=description))
    if json_output:
        print_json(result)
    else:
        typer.echo(f"created line {name} on base model {base}")


@app.command("list")
def list_(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List lines."""
    with workspace(ctx).reading() as session:
        rows = [lines.as_dict(line) for line in lines.list_lines(session)]
    if json_output:
        print_json(rows)
    else:
        print_table(
            rows,
            ["name", "base_model", "description", "created_by", "created_at"],
            empty="no lines; create one with `adapterctl line create`",
        )


@app.command()
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Line name.")], json_output: JsonOption = False) -> None:
    """Show a line and its settings (LoRA, approvals, gate thresholds)."""
    with workspace(ctx).reading() as session:
        result = lines.as_dict(lines.get_line(session, name))
    if json_output:
        print_json(result)
        return
    flat = {k: v for k, v in result.items() if k != "settings"}
    flat.update(lines.flat_settings(result["settings"]))
    print_fields(flat)


@app.command("set")
def set_(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Line name.")],
    assignments: Annotated[
        list[str],
        typer.Argument(
            metavar="KEY=VALUE...",
            help="Settings to change, named as `line show` names them: min_examples=16 gate.min_learned=0.9 canary.alpha=0.01.",
        ),
    ],
    json_output: JsonOption = False,
) -> None:
    """Change a line's settings; the next run, evaluation and canary check use them (audited)."""
    pairs = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise InvalidInput(f"{assignment!r} is not KEY=VALUE, e.g. canary.max_drop=0.03")
        pairs[key.strip()] = value.strip()
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "line.set")
        result = lines.as_dict(lines.update_settings(session, name=name, assignments=pairs, actor=ws.user))
    if json_output:
        print_json(result)
    else:
        typer.echo(f"{name}: " + ", ".join(f"{key} = {lines.flat_settings(result['settings'])[key]}" for key in pairs))
