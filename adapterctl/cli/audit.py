"""`adapterctl audit …`: read and verify the hash-chained audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl import audit
from adapterctl.cli._common import JsonOption, print_json, print_table, workspace

app = typer.Typer(help="The append-only, hash-chained audit log.", no_args_is_help=True)


@app.command()
def log(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Events to show, newest first.")] = 50,
    action: Annotated[str | None, typer.Option(help="Only actions starting with this, e.g. feedback.")] = None,
    subject: Annotated[str | None, typer.Option(help="Only this subject, e.g. line:support-bot.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Show audit events, newest first."""
    with workspace(ctx).reading() as session:
        events = [audit.as_dict(e) for e in audit.list_events(session, limit=limit, action=action, subject=subject)]
    if json_output:
        print_json(events)
        return
    for event in events:
        event["hash"] = event["hash"][:12]
    print_table(events, ["seq", "created_at", "actor", "action", "subject", "payload", "hash"], empty="no audit events")


@app.command()
def verify(
    ctx: typer.Context,
    anchor: Annotated[str | None, typer.Option(help="A head hash recorded earlier; fail if it is no longer in the chain.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Check the hash chain; exit 1 naming the first edited or deleted event."""
    with workspace(ctx).reading() as session:
        result = audit.verify(session, anchor=anchor)
    if json_output:
        print_json(result.__dict__)
    elif result.ok:
        typer.echo(f"audit log intact: {result.events} events, head {result.head}")
    else:
        typer.echo(f"adapterctl: audit log broken at event #{result.broken_seq}: {result.reason}", err=True)
    if not result.ok:
        raise typer.Exit(1)
