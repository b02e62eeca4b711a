"""`adapterctl promote | rollback | history`: which version each line serves."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl import access, activations, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.canary import parse_share, percent
from adapterctl.cli._common import JsonOption, print_json, print_table, workspace
from adapterctl.faults import crash_point

LineArgument = Annotated[str, typer.Argument(metavar="LINE", help="The line.")]
ReasonOption = Annotated[str | None, typer.Option(help="Why, for the history and the audit log.")]


def promote(
    ctx: typer.Context,
    line: LineArgument,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="An approved version: v3 or 3.")],
    canary: Annotated[
        str | None,
        typer.Option(
            "--canary",
            metavar="SHARE",
            help="Serve it to this share of end users only (10%), the active version to the rest; see `adapterctl canary`.",
        ),
    ] = None,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve an approved version (its artifact hash is checked first); running servers follow at once."""
    share = parse_share(canary) if canary is not None else None
    ws = workspace(ctx)
    store = ArtifactStore(ws.settings.artifacts_dir)
    with ws.transaction() as session:
        access.require(session, ws.user, "promote" if share is None else "canary.start")
        if share is None:
            activation = activations.promote(
                session, store, line=line, version=registry.parse_version(version), actor=ws.user, reason=reason
            )
        else:
            activation = activations.start_canary(
                session, store, line=line, version=registry.parse_version(version), share=share, actor=ws.user, reason=reason
            )
        result = activation_result(line, activation)
    report_activation(result, json_output)


def rollback(
    ctx: typer.Context,
    line: LineArgument,
    to: Annotated[str | None, typer.Option("--to", help="A version (v2) or 'base' [default: the version served before].")] = None,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve the previous version again (or --to a version, or the bare base model)."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "rollback")
        activation = activations.rollback(session, ArtifactStore(ws.settings.artifacts_dir), line=line, to=to, actor=ws.user, reason=reason)
        result = activation_result(line, activation)
    report_activation(result, json_output)


def history(ctx: typer.Context, line: LineArgument, json_output: JsonOption = False) -> None:
    """Every activation of a line: from what to what, who, when and why."""
    with workspace(ctx).reading() as session:
        entries = activations.history(session, line)
    if json_output:
        print_json(entries)
    else:
        columns = ["at", "kind", "from", "to", *(["canary"] if any(e["canary"] for e in entries) else []), "by", "reason"]
        print_table(entries, columns, empty=f"{line} has never been promoted; it serves the base model")


def activation_result(line: str, activation) -> dict:
    return {
        "line": line,
        "serves": activations.describe(activation.adapter),
        "adapter_id": activation.adapter_id,
        "canary": activations.describe(activation.canary_adapter) if activation.canary_adapter else None,
        "canary_share": activation.canary_share,
        "activation": activation.id,
        "kind": activation.kind,
        "at": activation.created_at.isoformat(),
        "reason": activation.reason,
    }


def report_activation(result: dict, json_output: bool) -> None:
    crash_point("activation.committed")  # called after the commit, which also sent the NOTIFY: nothing else follows
    if json_output:
        print_json(result)
        return
    canary = f", and {result['canary']} to {percent(result['canary_share'])} of its end users" if result["canary"] else ""
    typer.echo(f"{result['line']} now serves {result['serves']}{canary} ({result['kind']}, activation {result['activation']})")
