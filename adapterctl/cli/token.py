"""`adapterctl token …`: bearer tokens for the HTTP server."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from adapterctl import tokens
from adapterctl.cli._common import MAX_ID, JsonOption, print_json, print_table, workspace

app = typer.Typer(help="API tokens of `adapterctl serve` (stored as sha256; shown once).", no_args_is_help=True)


@app.command()
def create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option(help="generate (completions, models), feedback (the feedback endpoint) or admin (all).")],
    name: Annotated[Optional[str], typer.Option(help="What the token is for.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a token and print it once, alone on stdout (or as `token` with --json)."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        token, secret = tokens.create_token(session, scope=scope, actor=ws.user, name=name)
        result = {"id": token.id, "scope": token.scope, "name": token.name, "token": secret}
    if json_output:
        print_json(result)
    else:
        typer.echo(secret)


@app.command("list")
def list_(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Tokens (never their secrets)."""
    with workspace(ctx).reading() as session:
        rows = tokens.list_tokens(session)
    if json_output:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "scope", "created_at", "created_by", "revoked_at"], empty="no tokens")


@app.command()
def revoke(ctx: typer.Context, token_id: Annotated[int, typer.Argument(metavar="ID", min=1, max=MAX_ID)]) -> None:
    """Revoke a token; servers refuse it from their next request on."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        tokens.revoke_token(session, token_id, actor=ws.user)
    typer.echo(f"token {token_id} revoked")
