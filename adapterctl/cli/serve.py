"""`adapterctl serve`: the HTTP server; follows activations without a restart."""

from __future__ import annotations

import logging
import re
from enum import Enum
from typing import Annotated

import typer

from adapterctl import access
from adapterctl.cli._common import workspace
from adapterctl.registry import parse_version
from adapterctl.serving.engine import Engine as EngineProtocol
from adapterctl.serving.gateway import DEFAULT_RETRIES
from adapterctl.serving.runtime import DEFAULT_DEADLINE_S, DEFAULT_MAX_VERSIONS


class Engine(str, Enum):
    peft = "peft"
    vllm = "vllm"


def serve(
    ctx: typer.Context,
    line: Annotated[list[str] | None, typer.Option("--line", help="A line to serve (repeat); default: every line.")] = None,
    pin: Annotated[list[str] | None, typer.Option("--pin", help="Keep LINE@vN loaded from the start, never unloaded (repeat).")] = None,
    max_versions: Annotated[
        int,
        typer.Option(help="Versions kept loaded for requests naming LINE@vN, beyond the pinned ones; the least recently used is unloaded."),
    ] = DEFAULT_MAX_VERSIONS,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    poll: Annotated[float, typer.Option(help="Seconds between checks for new activations.")] = 0.5,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Accept requests without a token (local experiments only).")] = False,
    request_deadline: Annotated[
        float, typer.Option(help="Seconds one request may generate for; its answer is cut there (finish_reason length).")
    ] = DEFAULT_DEADLINE_S,
    max_context_tokens: Annotated[
        int | None, typer.Option(help="Most tokens of prompt plus answer [default: the model's context length].")
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            help="peft: generate here, adapters hot-swapped in memory; vllm: forward generation "
            "to --upstream vLLM servers (kept in step by `adapterctl vllm sync`)."
        ),
    ] = Engine.peft,
    upstream: Annotated[
        list[str] | None, typer.Option("--upstream", help="A vLLM server to forward to (http://host:port; repeat). --engine vllm only.")
    ] = None,
    upstream_key: Annotated[
        str | None, typer.Option(envvar="ADAPTERCTL_VLLM_API_KEY", show_envvar=True, help="The vLLM servers' --api-key, if they have one.")
    ] = None,
    retries: Annotated[int, typer.Option(help="Other vLLM servers a request is sent to when one cannot take it.")] = DEFAULT_RETRIES,
    canary_key_header: Annotated[
        str | None,
        typer.Option(help="Header naming the end user, for canary assignment when a request has no `user` field (e.g. X-User-Id)."),
    ] = None,
    canary_watch: Annotated[
        bool, typer.Option(help="Check the served lines' canaries and abort one the live comparison finds worse.")
    ] = True,
    auto_complete: Annotated[
        bool, typer.Option("--auto-complete", help="Also complete a canary the live comparison finds not worse.")
    ] = False,
) -> None:
    """Serve lines over an OpenAI-compatible HTTP API; promote/rollback/forget take effect without a restart."""
    import uvicorn

    from adapterctl.serving.server import create_app

    if not 0.05 <= poll <= 60:
        raise typer.BadParameter("--poll must be between 0.05 and 60 seconds")
    if not request_deadline > 0:
        raise typer.BadParameter("--request-deadline must be more than 0 seconds")
    if max_versions < 0:
        raise typer.BadParameter("--max-versions must be 0 or more")
    if max_context_tokens is not None and max_context_tokens < 2:
        raise typer.BadParameter("--max-context-tokens must be at least 2")
    if engine is Engine.vllm and not upstream:
        raise typer.BadParameter("--engine vllm needs at least one --upstream URL")
    if engine is Engine.peft and upstream:
        raise typer.BadParameter("--upstream needs --engine vllm")
    if engine is Engine.vllm and pin:
        raise typer.BadParameter("--pin is for --engine peft; with vllm, `adapterctl vllm sync --keep LINE@vN` keeps a version loaded")
    if retries < 0:
        raise typer.BadParameter("--retries must be 0 or more")
    if auto_complete and not canary_watch:
        raise typer.BadParameter("--auto-complete needs --canary-watch")
    if canary_key_header is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", canary_key_header):
        raise typer.BadParameter("--canary-key-header must be a header name (letters, digits, '-')")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ws = workspace(ctx)
    if auto_complete:  # checked once, at the start: the watcher then completes canaries under the lines' settings
        with ws.reading() as session:
            access.require(session, ws.user, "canary.auto_complete")
    if engine is Engine.vllm:
        from adapterctl.serving.gateway import Gateway

        runtime: EngineProtocol = Gateway(
            ws,
            line or None,
            upstream or [],
            api_key=upstream_key,
            max_context_tokens=max_context_tokens,
            request_deadline_s=request_deadline,
            retries=retries,
        )
    else:
        from adapterctl.serving.runtime import Runtime

        embedded = Runtime(
            ws,
            line or None,
            device=device,
            max_context_tokens=max_context_tokens,
            request_deadline_s=request_deadline,
            max_versions=max_versions,
        )
        for pinned in pin or []:
            name, _, version = pinned.partition("@")
            embedded.pin(name, parse_version(version))
        runtime = embedded
    if no_auth:
        typer.secho(
            "WARNING: --no-auth: anyone who can reach this port can generate and log feedback. Use it for local experiments only.",
            err=True,
            fg="red",
            bold=True,
        )
    through = f" through {', '.join(upstream)}" if upstream else ""
    typer.echo(f"serving {', '.join(runtime.served().values())} on http://{host}:{port}{through}", err=True)
    app = create_app(
        ws, runtime, auth=not no_auth, poll_s=poll, canary_key_header=canary_key_header, watch=canary_watch, auto_complete=auto_complete
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
