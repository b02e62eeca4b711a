"""`adapterctl promote | rollback | history`: which version each line serves."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adapterctl import activations, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.cli._common import JsonOption, print_json, print_table, workspace

LineArgument = Annotated[str, typer.Argument(metavar="LINE", help="The line.")]
ReasonOption = Annotated[Optional[str], typer.Option(help="Why, for the history and the audit log.")]


def promote(
    ctx: typer.Context,
    line: LineArgument,
    version: Annotated[str, typer.Argument(metavar="VERSION", help="An approved version: v3 or 3.")],
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve an approved version (its artifact hash is checked first); running servers follow at once."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        activation = activations.promote(session, ArtifactStore(ws.settings.artifacts_dir), line=line,
                                         version=registry.parse_version(version), actor=ws.user, reason=reason)
        result = _result(line, activation)
    _report(result, json_output)


def rollback(
    ctx: typer.Context,
    line: LineArgument,
    to: Annotated[Optional[str], typer.Option("--to", help="A version (v2) or 'base' [default: the version served before].")] = None,
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve the previous version again (or --to a version, or the bare base model)."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        activation = activations.rollback(session, ArtifactStore(ws.settings.artifacts_dir), line=line, to=to, actor=ws.user, reason=reason)
        result = _result(line, activation)
    _report(result, json_output)


def history(ctx: typer.Context, line: LineArgument, json_output: JsonOption = False) -> None:
    """Every activation of a line: from what to what, who, when and why."""
    with workspace(ctx).reading() as session:
        entries = activations.history(session, line)
    if json_output:
        print_json(entries)
    else:
        print_table(entries, ["at", "kind", "from", "to", "by", "reason"], empty=f"{line} has never been promoted; it serves the base model")


def _result(line: str, activation) -> dict:
    return {"line": line, "serves": activations.describe(activation.adapter), "adapter_id": activation.adapter_id,
            "activation": activation.id, "kind": activation.kind, "at": activation.created_at.isoformat()}


def _report(result: dict, json_output: bool) -> None:
    if json_output:
        print_json(result)
    else:
        typer.echo(f"{result['line']} now serves {result['serves']} ({result['kind']}, activation {result['activation']})")
