"""`adapterctl status`: the whole deployment on one screen (adapterctl.status)."""

from __future__ import annotations

from typing import Any

import typer

from adapterctl.artifacts import ArtifactStore
from adapterctl.canary import percent
from adapterctl.cli._common import JsonOption, print_json, workspace


def status(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Every line: what it serves, what waits for review, the last training run, new feedback, and warnings."""
    from adapterctl import status as deployment_status

    ws = workspace(ctx)
    with ws.reading() as session:
        report = deployment_status.deployment(session, ArtifactStore(ws.settings.artifacts_dir))
    if json_output:
        print_json(report)
        return
    if not report["lines"]:
        typer.echo("no lines yet; create one with `adapterctl line create`")
    for line in report["lines"]:
        _show(line)
    for warning in report["warnings"]:
        typer.secho(f"WARNING: {warning}", fg="yellow")


def _show(line: dict[str, Any]) -> None:
    serving, run = line["serving"], line["last_run"]
    since = f" since {_when(serving['since'])} ({serving['how']} by {serving['by']})" if serving["since"] else ""
    typer.secho(
        f"{line['line']}: serves {serving['version']}{since}; base model {line['base_model']['name']} ({line['base_model']['hash']})",
        bold=True,
    )
    if canary := line["canary"]:
        up = canary["canary"]["thumbs_up_rate"], canary["baseline"]["thumbs_up_rate"]
        rates = "thumbs up " + " vs ".join("-" if rate is None else f"{rate:.0%}" for rate in up)
        typer.echo(
            f"  canary: {canary['canary']['version']} to {percent(canary['share'])} since {_when(canary['started_at'])}; "
            f"{canary['canary']['rated']} vs {canary['baseline']['rated']} rated, {rates}; {canary['verdict']} "
            f"(`adapterctl canary status {line['line']}`)"
        )
    waiting = ", ".join(f"candidate {w['candidate']} for {_duration(w['waiting_s'])}" for w in line["waiting_for_review"])
    typer.echo(f"  waiting for review: {waiting or 'none'}")
    if run is None:
        typer.echo("  last training run: none")
    else:
        outcome = f", candidate {run['candidate']} {run['candidate_status'].replace('_', ' ')}" if run["candidate"] else ""
        failure = f": {run['error']}" if run["error"] else ""
        typer.echo(f"  last training run: #{run['run']} {run['status']} {_when(run['finished'] or run['started'])}{outcome}{failure}")
    typer.echo(f"  new eligible feedback since: {line['new_feedback']}")
    for warning in line["warnings"]:
        typer.secho(f"  WARNING: {warning}", fg="yellow")


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ") + " UTC"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return (
        f"{minutes // 1440} d {minutes // 60 % 24} h"
        if minutes >= 1440
        else f"{minutes // 60} h {minutes % 60} min"
        if minutes >= 60
        else f"{minutes} min"
    )
