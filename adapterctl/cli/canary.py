"""`adapterctl canary …`: change a running canary's share, complete or abort it, compare it live, watch it."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import typer

from adapterctl import access, activations, canary_watch, lines
from adapterctl.artifacts import ArtifactStore
from adapterctl.canary import parse_share, percent
from adapterctl.cli._common import JsonOption, parse_duration, print_json, print_table, workspace
from adapterctl.cli.versions import LineArgument, ReasonOption, activation_result, report_activation

app = typer.Typer(
    no_args_is_help=True,
    help="Canary releases: a version served to a share of end users, judged by their feedback. "
    "Start one with `adapterctl promote LINE vN --canary 10%`.",
)
log = logging.getLogger("adapterctl.canary")


@app.command("set")
def set_share(
    ctx: typer.Context,
    line: LineArgument,
    share: Annotated[str, typer.Argument(metavar="SHARE", help="The new share of end users: 50%.")],
    reason: ReasonOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve the canary to another share of end users; raising it keeps everyone who had it."""
    new_share = parse_share(share)
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "canary.set")
        result = activation_result(line, activations.set_canary_share(session, line=line, share=new_share, actor=ws.user, reason=reason))
    report_activation(result, json_output)


@app.command()
def complete(ctx: typer.Context, line: LineArgument, reason: ReasonOption = None, json_output: JsonOption = False) -> None:
    """Serve the canary's version to everyone: an ordinary promote."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "canary.complete")
        activation = activations.complete_canary(session, ArtifactStore(ws.settings.artifacts_dir), line=line, actor=ws.user, reason=reason)
        result = activation_result(line, activation)
    report_activation(result, json_output)


@app.command()
def abort(ctx: typer.Context, line: LineArgument, reason: ReasonOption = None, json_output: JsonOption = False) -> None:
    """Everyone back on the active version."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "canary.abort")
        result = activation_result(line, activations.abort_canary(session, line=line, actor=ws.user, reason=reason))
    report_activation(result, json_output)


@app.command()
def status(ctx: typer.Context, line: LineArgument, json_output: JsonOption = False) -> None:
    """The live comparison: per version requests, failures, latency, feedback with confidence bounds, and the test's verdict."""
    with workspace(ctx).reading() as session:
        comparison = canary_watch.compare(session, line)
    if json_output:
        print_json({"line": line, "canary": comparison.as_dict() if comparison else None})
    elif comparison is None:
        typer.echo(f"{line} runs no canary; start one with `adapterctl promote {line} vN --canary 10%`")
    else:
        print_comparison(comparison.as_dict())


def print_comparison(c: dict) -> None:
    """The live comparison as `canary status` and `adapterctl status` show it."""
    typer.echo(
        f"canary {c['canary']['version']} to {percent(c['share'])} of end users since {c['started_at'][:19]}, "
        f"against {c['baseline']['version']}; bounds hold with {1 - c['settings']['alpha']:.0%} at any time"
    )
    rows = [{"side": side, "version": c[side]["version"], **_cells(c[side])} for side in canary_watch.ARMS]
    print_table(
        rows, ["side", "version", "requests", "failed", "p50 ms", "p99 ms", "rated", "thumbs up", "bounds", "mean rating", "corrected"]
    )
    typer.echo(f"verdict: {c['verdict']}{' (unhealthy)' if c['unhealthy'] else ''}: {c['why']}")


def _cells(arm: dict) -> dict:
    def share(value):
        return "-" if value is None else f"{value:.1%}"

    def ms(value):
        return "-" if value is None else f"{value:.0f}"

    low, high = arm["thumbs_up_bounds"]
    return {
        "requests": arm["requests"],
        "failed": share(arm["error_rate"]),
        "p50 ms": ms(arm["p50_ms"]),
        "p99 ms": ms(arm["p99_ms"]),
        "rated": arm["rated"],
        "thumbs up": share(arm["thumbs_up_rate"]),
        "bounds": f"{low:.1%}..{high:.1%}",
        "mean rating": "-" if arm["mean_rating"] is None else f"{arm['mean_rating']:+.2f}",
        "corrected": share(arm["correction_rate"]),
    }


@app.command()
def watch(
    ctx: typer.Context,
    line: Annotated[list[str] | None, typer.Option("--line", help="A line to watch (repeat); default: every line.")] = None,
    poll: Annotated[str, typer.Option(help="Time between looks (5s, 1m).")] = "5s",
    auto_complete: Annotated[bool, typer.Option("--auto-complete", help="Also complete a canary the test finds not worse.")] = False,
    once: Annotated[bool, typer.Option("--once", help="Look once, act, print what was found and exit; for cron.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Abort a canary as soon as the live comparison finds it worse, failing requests or slow (and, with
    --auto-complete, complete one found not worse); each action an activation with the evidence."""
    seconds = parse_duration(poll) or 0.0
    if not 0.05 <= seconds <= 3600:
        raise typer.BadParameter("--poll must be between 0.05 s and 1 h")
    ws = workspace(ctx)
    with ws.reading() as session:
        if auto_complete:  # checked once: the watcher then acts under the line's rules, as `serve --auto-complete` does
            access.require(session, ws.user, "canary.auto_complete")
        watched = line or [row.name for row in lines.list_lines(session)]
        for name in watched:
            lines.get_line(session, name)  # an unknown line is an error now, not at every look
    if once:
        outcomes = {name: canary_watch.check(ws, name, auto_complete=auto_complete) for name in watched}
        if json_output:
            print_json(
                [
                    {
                        "line": name,
                        "action": o.action,
                        "activation": o.activation,
                        "canary": o.comparison.as_dict() if o.comparison else None,
                    }
                    for name, o in outcomes.items()
                ]
            )
        else:
            for name, outcome in outcomes.items():
                typer.echo(outcome.message() if outcome.comparison else f"{name}: no canary runs")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(f"watching the canaries of {', '.join(watched)} every {seconds:g} s", err=True)
    try:
        while True:
            for name in watched:
                try:
                    outcome = canary_watch.check(ws, name, auto_complete=auto_complete)
                except Exception:
                    log.exception("checking %s's canary failed; will retry", name)
                    continue
                if outcome.action:
                    log.warning("%s", outcome.message())
                    if json_output:
                        print_json(
                            {
                                "line": name,
                                "action": outcome.action,
                                "activation": outcome.activation,
                                "canary": outcome.comparison.as_dict() if outcome.comparison else None,
                            }
                        )
            time.sleep(seconds)
    except KeyboardInterrupt:
        pass
