"""`adapterctl init` and `adapterctl db …`: schema migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl.cli._common import (
    JsonOption,
    display_url,
    print_json,
    print_table,
    settings,
)
from adapterctl.db import migrate
from adapterctl.db.engine import Database, sqlite_path
from adapterctl.workspace import upgrade_database

app = typer.Typer(help="Schema migrations (Alembic): upgrade, current, history.", no_args_is_help=True)


def init(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Create or upgrade the database and the home folder."""
    _upgrade(ctx, "head", json_output)


@app.command()
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    json_output: JsonOption = False,
) -> None:
    """Migrate the database schema to the newest (or given) revision."""
    _upgrade(ctx, revision, json_output)


def _upgrade(ctx: typer.Context, revision: str, json_output: bool) -> None:
    current = settings(ctx)
    before, after = upgrade_database(current, revision)
    if json_output:
        print_json({"home": str(current.home), "database": display_url(current.db_url), "from": before, "to": after})
    elif before == after:
        typer.echo(f"database {display_url(current.db_url)} is at schema {after}; nothing to do")
    else:
        typer.echo(f"database {display_url(current.db_url)} upgraded from {before or 'empty'} to schema {after}")


@app.command()
def current(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Show the schema revision of the database and the one this adapterctl needs."""
    url = settings(ctx).db_url
    database_file = sqlite_path(url)
    revision = None
    if database_file is None or database_file.exists():  # never create an SQLite file just to look
        db = Database(url)
        try:
            revision = migrate.current_revision(db.engine)
        finally:
            db.dispose()
    head = migrate.head_revision()
    if json_output:
        print_json({"current": revision, "head": head, "up_to_date": revision == head})
    else:
        typer.echo(f"{revision or 'empty'} (needed: {head}{', up to date' if revision == head else ', run `adapterctl db upgrade`'})")


@app.command()
def history(json_output: JsonOption = False) -> None:
    """List the schema migrations this adapterctl knows, newest first."""
    revisions = [r.__dict__ for r in migrate.history()]
    if json_output:
        print_json(revisions)
    else:
        print_table(revisions, ["revision", "down_revision", "is_head", "message"])
