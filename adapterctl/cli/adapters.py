"""`adapterctl adapters …`: candidates and versions."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adapterctl import registry
from adapterctl.cli._common import JsonOption, print_fields, print_json, print_table, workspace

app = typer.Typer(help="Adapters: candidates and the versions they become.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    line: Annotated[Optional[str], typer.Option(help="Only this line.")] = None,
    status: Annotated[Optional[str], typer.Option(help=f"Only this state: {', '.join(registry.STATES)}.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List adapters, newest first."""
    with workspace(ctx).transaction() as session:
        rows = [registry.as_dict(a) for a in registry.list_adapters(session, line=line, status=status)]
    if json_output:
        print_json(rows)
        return
    for row in rows:
        row["sha256"] = row["sha256"][:12]
    print_table(rows, ["id", "line", "status", "version", "run", "created_at", "sha256"], empty="no adapters; train one with `adapterctl train`")


@app.command()
def show(ctx: typer.Context, adapter_id: Annotated[int, typer.Argument(metavar="ID", help="Adapter (candidate) id.")], json_output: JsonOption = False) -> None:
    """Show an adapter: state, version, lineage and its run's metrics."""
    with workspace(ctx).transaction() as session:
        adapter = registry.get_adapter(session, adapter_id)
        result = {**registry.as_dict(adapter), "run_metrics": adapter.run.metrics, "dataset": adapter.run.dataset,
                  "params": adapter.run.params}
    if json_output:
        print_json(result)
    else:
        print_fields({k: v for k, v in result.items() if k not in ("run_metrics", "dataset", "params")})
