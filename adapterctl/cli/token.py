"""`adapterctl token …`: bearer tokens for the HTTP server."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl import access, tokens
from adapterctl.cli._common import MAX_ID, JsonOption, print_json, print_table, workspace

app = typer.Typer(help="API tokens of `adapterctl serve` (stored as sha256; shown once).", no_args_is_help=True)


@app.command()
def create(
    ctx: typer.Context,
    scope: Annotated[str, typer.Option(help="generate (completions, models), feedback (the feedback endpoint) or admin (all).")],
    name: Annotated[str | None, typer.Option(help="What the token is for.")] = None,
    expires_in: Annotated[str | None, typer.Option(help="Expire this long from now: 30d, 12h, 90m [default: never].")] = None,
    expires_at: Annotated[str | None, typer.Option(help="Expire at this ISO 8601 time (UTC unless it names a zone).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a token and print it once, alone on stdout (or as `token` with --json)."""
    until = tokens.expiry(expires_in=expires_in, expires_at=expires_at)
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "token.create")
        token, secret = tokens.create_token(session, scope=scope, actor=ws.user, name=name, expires_at=until)
        result = {
            "id": token.id,
            "scope": token.scope,
            "name": token.name,
            "expires_at": until.isoformat() if until else None,
            "token": secret,
        }
    if json_output:
        print_json(result)
    else:
        typer.echo(secret)


@app.command("list")
def list_(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Tokens (never their secrets), with their state: active, expired or revoked."""
    with workspace(ctx).reading() as session:
        rows = tokens.list_tokens(session)
    if json_output:
        print_json(rows)
    else:
        print_table(rows, ["id", "name", "scope", "state", "created_at", "created_by", "expires_at", "revoked_at"], empty="no tokens")


@app.command()
def revoke(ctx: typer.Context, token_id: Annotated[int, typer.Argument(metavar="ID", min=1, max=MAX_ID)]) -> None:
    """Revoke a token; servers refuse it within 5 s (the time they cache a token's lookup)."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "token.revoke")
        tokens.revoke_token(session, token_id, actor=ws.user)
    typer.echo(f"token {token_id} revoked")
