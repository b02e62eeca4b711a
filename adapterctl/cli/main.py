"""`adapterctl`: the root command, its global flags, and the mapping of errors to exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from adapterctl import __version__
from adapterctl.cli import (
    adapters,
    audit,
    backup,
    base,
    canary,
    db,
    doctor,
    eval,
    feedback,
    line,
    review,
    serve,
    status,
    token,
    train,
    versions,
    vllm,
)
from adapterctl.cli._common import Invocation
from adapterctl.errors import AdapterctlError

app = typer.Typer(
    name="adapterctl",
    help="Improve a served LLM from feedback through evaluated, approved, versioned, revocable LoRA adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"adapterctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        str | None, typer.Option("--home", help="adapterctl home folder [env: ADAPTERCTL_HOME; default: ~/.adapterctl]")
    ] = None,
    db_url: Annotated[
        str | None, typer.Option("--db-url", help="Database URL [env: ADAPTERCTL_DB_URL; default: SQLite in the home]")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", help="Act as this person [env: ADAPTERCTL_USER; default: OS login]")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = Invocation(home=home, db_url=db_url, user=user)
    ctx.call_on_close(ctx.obj.close)


app.command("init", help="Create or upgrade the database and the home folder.")(db.init)
app.add_typer(db.app, name="db")
app.add_typer(base.app, name="base")
app.add_typer(line.app, name="line")
app.add_typer(feedback.app, name="feedback")
app.command("train", help="Train a candidate adapter from a line's new feedback (the cron job).")(train.train)
app.add_typer(eval.app, name="eval")
app.add_typer(review.app, name="review")
app.add_typer(review.reviewers_app, name="reviewer")
app.add_typer(adapters.app, name="adapters")
app.command("promote", help="Serve an approved version of a line; running servers follow without a restart.")(versions.promote)
app.command("rollback", help="Serve the previous version of a line again (or --to a version, or base).")(versions.rollback)
app.command("history", help="Every activation of a line: from what to what, who, when and why.")(versions.history)
app.add_typer(canary.app, name="canary")
app.add_typer(token.app, name="token")
app.command("serve", help="Serve lines over HTTP (OpenAI-compatible); follows promotions without a restart.")(serve.serve)
app.add_typer(audit.app, name="audit")
app.command("status", help="The whole deployment on one screen: what each line serves, waits for, trained last; warnings.")(status.status)
app.add_typer(vllm.app, name="vllm")
app.command("doctor", help="Check that the database and the artifact store agree; --repair removes what a crash left behind.")(
    doctor.doctor
)
app.command("backup", help="Back up the database and artifacts, with a manifest of their sha256, while servers run.")(backup.backup)
app.command("restore", help="Restore a backup into an empty home and database, after checking every file.")(backup.restore)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: known errors become one line on stderr and an exit code; ADAPTERCTL_DEBUG=1 shows tracebacks.

    Usage errors are click's own (exit 2); typer.Exit carries its code.
    """
    from sqlalchemy.exc import OperationalError

    debug = os.environ.get("ADAPTERCTL_DEBUG") == "1"
    try:
        app(args=argv, prog_name="adapterctl")
    except AdapterctlError as exc:
        if debug:
            raise
        typer.echo(f"adapterctl: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("adapterctl: interrupted", err=True)
        sys.exit(130)
    except OperationalError as exc:
        if debug:
            raise
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        typer.echo(f"adapterctl: database error: {reason}", err=True)
        sys.exit(1)
