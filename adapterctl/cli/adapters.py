"""`adapterctl adapters …`: candidates and versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterctl import registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.cli._common import MAX_ID, JsonOption, print_fields, print_json, print_table, workspace
from adapterctl.errors import InvalidTransition

app = typer.Typer(help="Adapters: candidates and the versions they become.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    line: Annotated[str | None, typer.Option(help="Only this line.")] = None,
    status: Annotated[str | None, typer.Option(help=f"Only this state: {', '.join(registry.STATES)}.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List adapters, newest first."""
    with workspace(ctx).reading() as session:
        rows = [registry.as_dict(a) for a in registry.list_adapters(session, line=line, status=status)]
    if json_output:
        print_json(rows)
        return
    for row in rows:
        row["sha256"] = row["sha256"][:12]
    print_table(
        rows, ["id", "line", "status", "version", "run", "created_at", "sha256"], empty="no adapters; train one with `adapterctl train`"
    )


@app.command()
def show(
    ctx: typer.Context,
    adapter_id: Annotated[int, typer.Argument(metavar="ID", help="Adapter (candidate) id.", min=1, max=MAX_ID)],
    json_output: JsonOption = False,
) -> None:
    """Show an adapter: state, version, lineage, evaluations, reviews and activations."""
    with workspace(ctx).reading() as session:
        result = registry.details(session, adapter_id)
    if json_output:
        print_json(result)
    else:
        print_fields(
            {k: v for k, v in result.items() if k not in ("run_metrics", "dataset", "params", "evaluations", "decisions", "activations")}
        )
        for activation in result["activations"]:
            typer.echo(
                f"  {activation['at'][:19]}  {activation['kind']:<8} by {activation['by']}"
                + (f": {activation['reason']}" if activation["reason"] else "")
            )


@app.command()
def export(
    ctx: typer.Context,
    adapter_id: Annotated[int, typer.Argument(metavar="ID", help="Adapter (candidate or version) id.", min=1, max=MAX_ID)],
    destination: Annotated[Path, typer.Argument(metavar="DIR", help="A new or empty folder.")],
) -> None:
    """Write the adapter as a plain PEFT folder (after checking its hash), for vLLM, LoRAX or PEFT."""
    ws = workspace(ctx)
    with ws.reading() as session:
        adapter = registry.get_adapter(session, adapter_id)
        if adapter.status == "revoked":
            raise InvalidTransition(f"adapter {adapter_id} is revoked; it must not be served anywhere")
        path, sha256 = adapter.artifact_path, adapter.sha256
    ArtifactStore(ws.settings.artifacts_dir).export(path, sha256, destination)
    typer.echo(f"adapter {adapter_id} written to {destination}")
