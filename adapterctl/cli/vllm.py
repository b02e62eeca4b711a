"""`adapterctl vllm`: drive vLLM servers so they hold each line's active version (`sync`), and say what they hold (`status`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Annotated

import typer

from adapterctl.cli._common import JsonOption, parse_duration, print_json, print_table, workspace

app = typer.Typer(no_args_is_help=True, help="Drive vLLM servers: load each line's active version, unload replaced and revoked ones.")

Urls = Annotated[list[str], typer.Option("--url", help="A vLLM server (http://host:port; repeat for a fleet).")]
Lines = Annotated[list[str] | None, typer.Option("--line", help="A line to sync (repeat); default: every line.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="ADAPTERCTL_VLLM_API_KEY", show_envvar=True, help="The vLLM servers' --api-key, if they have one."),
]


def _sync(ctx: typer.Context, url: list[str], line: list[str] | None, api_key: str | None, **options):
    from adapterctl.serving.vllm_client import VllmServer
    from adapterctl.vllm_sync import Sync

    return Sync(workspace(ctx), [VllmServer(u, api_key=api_key) for u in url], line or [], **options)


@app.command()
def sync(
    ctx: typer.Context,
    url: Urls,
    line: Lines = None,
    api_key: ApiKey = None,
    grace: Annotated[str, typer.Option(help="How long a replaced version stays loaded for requests in flight (30s, 2m).")] = "30s",
    keep: Annotated[list[str] | None, typer.Option("--keep", help="Also keep LINE@vN loaded, for requests that name it (repeat).")] = None,
    export_dir: Annotated[
        str | None,
        typer.Option(help="Where versions are exported for vLLM to read; the servers must see the same path [default: HOME/vllm-exports]."),
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between passes (PostgreSQL also wakes it at once on a promote).")] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="One pass, then print the status and exit (1 when a server failed); for cron.")
    ] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port (/metrics).")] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics port.")] = "127.0.0.1",
    as_json: JsonOption = False,
) -> None:
    """Keep vLLM servers holding each line's active version as `line@vN`: new versions loaded from verified exports,
    replaced ones unloaded after --grace, revoked ones at once, restarted servers brought back."""
    if not 0.05 <= poll <= 60:
        raise typer.BadParameter("--poll must be between 0.05 and 60 seconds")
    syncer = _sync(ctx, url, line, api_key, grace_s=parse_duration(grace), keep=keep or [], export_dir=export_dir)
    if once:
        events = syncer.step()
        _report(syncer, events, as_json)
        raise typer.Exit(1 if any(e.action in ("failed", "unreachable") for e in events) else 0)
    _follow(syncer, poll, as_json, metrics_port, metrics_host)


@app.command()
def status(ctx: typer.Context, url: Urls, line: Lines = None, api_key: ApiKey = None, as_json: JsonOption = False) -> None:
    """What each vLLM server holds, and whether it holds each line's active version (and canary); changes nothing."""
    syncer = _sync(ctx, url, line, api_key)
    syncer.step(act=False)
    _report(syncer, [], as_json)
    raise typer.Exit(0 if all(state.up for state in syncer.state.values()) else 1)


def _report(syncer, events, as_json: bool) -> None:
    plan = syncer.plan()
    in_step = syncer.in_step(plan)
    servers = [
        {"url": s.url, "up": s.up, "base": s.base, "holds": s.holds, "in_step": in_step[s.url], "error": s.error}
        for s in syncer.state.values()
    ]
    if as_json:
        print_json(
            {
                "lines": {line: version.name if version else f"{line}@base" for line, version in plan.active.items()},
                "canaries": {line: version.name for line, version in plan.canaries.items()},
                "servers": servers,
                "events": [vars(e) for e in events],
            }
        )
        return
    for event in events:
        typer.echo(str(event), err=True)
    rows = [
        {
            "server": s["url"],
            "up": "yes" if s["up"] else "NO",
            "holds": s["holds"],
            "behind": [line for line, ok in s["in_step"].items() if not ok] or "-",
            "error": s["error"],
        }
        for s in servers
    ]
    print_table(rows, ["server", "up", "holds", "behind", "error"])


def _follow(syncer, poll: float, as_json: bool, metrics_port: int | None, metrics_host: str) -> None:
    from adapterctl.serving.follower import Follower

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if metrics_port is not None:
        _serve_metrics(syncer, metrics_host, metrics_port)

    def sync_vllm() -> None:
        for event in syncer.step():
            if as_json:
                typer.echo(json.dumps(vars(event)))
            else:
                typer.echo(str(event), err=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    follower = Follower(syncer.ws, [sync_vllm], poll)
    typer.echo(
        f"syncing {', '.join(syncer.lines)} to {', '.join(s.url for s in syncer.servers)} (grace {syncer.grace_s:g} s, "
        f"exports in {syncer.export_dir})",
        err=True,
    )
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    follower.close()


def _serve_metrics(syncer, host: str, port: int) -> None:
    from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self):
            plan = syncer.plan()
            in_step = syncer.in_step(plan)
            up = GaugeMetricFamily("adapterctl_vllm_up", "Whether the vLLM server answered the last pass.", labels=["server"])
            holds = GaugeMetricFamily(
                "adapterctl_vllm_holds", "The versions each vLLM server holds (1).", labels=["server", "line", "version"]
            )
            current = GaugeMetricFamily(
                "adapterctl_vllm_in_step", "Whether the server holds the line's active version.", labels=["server", "line"]
            )
            counters = {
                name: CounterMetricFamily(f"adapterctl_vllm_{name}", meaning, labels=["server"])
                for name, meaning in (
                    ("loads", "Versions loaded."),
                    ("unloads", "Versions unloaded."),
                    ("failures", "Loads and unloads that failed."),
                )
            }
            for state in syncer.state.values():
                up.add_metric([state.url], int(bool(state.up)))
                for name in state.holds:
                    line, _, version = name.rpartition("@")
                    holds.add_metric([state.url, line, version], 1)
                for line, ok in in_step[state.url].items():
                    current.add_metric([state.url, line], int(ok))
                for name, family in counters.items():
                    family.add_metric([state.url], getattr(state, name))
            return [up, holds, current, *counters.values()]

    disable_created_metrics()
    registry = CollectorRegistry()
    registry.register(Collector())
    start_http_server(port, addr=host, registry=registry)
