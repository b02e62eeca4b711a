"""What every command group shares: the workspace of the invocation, options, and output."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import typer

from adapterctl.config import Settings, load_settings
from adapterctl.errors import InvalidInput
from adapterctl.workspace import Workspace

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document and nothing else.")]
MAX_ID = 2**31 - 1
"""The largest id of a candidate, version or token (32-bit in the database): a larger one is refused as usage."""
MAX_BIG_ID = 2**63 - 1
"""The largest feedback id (64-bit)."""


@dataclass
class Invocation:
    """The global flags of one command line; the workspace opens on first use."""

    home: str | None = None
    db_url: str | None = None
    user: str | None = None
    _workspace: Workspace | None = None

    def settings(self) -> Settings:
        return load_settings(home=self.home, db_url=self.db_url, user=self.user)

    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace(self.settings())
        return self._workspace

    def close(self) -> None:
        if self._workspace is not None:
            self._workspace.close()


def workspace(ctx: typer.Context) -> Workspace:
    return ctx.find_root().obj.workspace()


def settings(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj.settings()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    empty: str = "nothing to show",
    markup: bool = False,
) -> None:
    """Rows as a table; with markup, cells may hold rich colour tags (dropped when stdout is not a terminal)."""
    if not rows:
        typer.echo(empty)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns, title=title, show_edge=False, header_style="bold")
    for row in rows:
        cells = (_cell(row.get(column)) for column in columns)
        table.add_row(*(cells if markup else map(Text, cells)))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def print_fields(values: dict[str, Any]) -> None:
    """A record as 'key: value' lines, nested values as JSON."""
    width = max(len(key) for key in values)
    for key, value in values.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else ("-" if value is None else value)
        typer.echo(f"{key:<{width}}  {shown}")


@contextmanager
def byte_progress(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (only on a terminal); yields a function to call with bytes done."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


PROGRESS_SECONDS = "ADAPTERCTL_PROGRESS_SECONDS"
"""Environment variable: seconds between progress log lines when stderr is not a terminal (default 10)."""

Stage = Callable[..., None]
"""update(stage, done, total, status=""): the work named `stage` has done `done` of `total` (None: unknown)."""


@contextmanager
def work_progress() -> Iterator[Stage]:
    """Progress of long work on stderr: a bar on a terminal; when piped (cron, CI, a log file), a line at
    each new stage, every ADAPTERCTL_PROGRESS_SECONDS seconds (10) and when a stage completes."""
    if sys.stderr.isatty():
        with _progress_bar() as update:
            yield update
        return
    every = float(os.environ.get(PROGRESS_SECONDS) or 10)
    started = time.monotonic()
    last: dict[str, Any] = {"stage": None, "at": 0.0, "finished": False}

    def log(stage: str, done: int, total: int | None, status: str = "") -> None:
        now, finished = time.monotonic(), total is not None and done >= total
        new_stage = stage != last["stage"]
        if not (new_stage or now - last["at"] >= every or (finished and not last["finished"])):
            return
        last.update(stage=stage, at=now, finished=finished)
        share = f" ({done / total:.0%})" if total else ""
        print(
            f"{stage}: {done}{f'/{total}' if total else ''}{share}{'  ' + status if status else ''}, {now - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    yield log


@contextmanager
def _progress_bar() -> Iterator[Stage]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        "{task.fields[status]}",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None, status="")

        def update(stage: str, done: int, total: int | None, status: str = "") -> None:
            bar.update(task, description=stage, completed=done, total=total, status=status)

        yield update


_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | None) -> datetime | None:
    """'7d', '12h', '30m' ago, or an ISO 8601 date/time (UTC when no zone is given)."""
    if value is None:
        return None
    if match := _RELATIVE.fullmatch(value.strip()):
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--since {value!r} is neither a duration like 7d/12h/30m nor an ISO 8601 date") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def parse_duration(value: str | None) -> float | None:
    """Seconds from '900', '15m', '2h' or '30s'."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise InvalidInput(f"{value!r} is not a duration like 900, 30s, 15m or 2h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
