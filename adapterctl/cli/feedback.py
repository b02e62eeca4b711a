"""`adapterctl feedback …`: log, import, list, show, stats, export and forget feedback; quarantine sources."""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from adapterctl import access, erasure, feedback, feedback_io, quarantine
from adapterctl.cli._common import (
    MAX_BIG_ID,
    JsonOption,
    byte_progress,
    parse_since,
    print_fields,
    print_json,
    print_table,
    workspace,
)
from adapterctl.errors import InvalidInput
from adapterctl.feedback import FeedbackQuery

app = typer.Typer(help="Feedback: records about model answers that training learns from.", no_args_is_help=True)

LineOption = Annotated[str | None, typer.Option("--line", help="Only this line.")]
SourceOption = Annotated[str | None, typer.Option("--source", help="Only this source (pseudonymous user or system id).")]
SinceOption = Annotated[str | None, typer.Option("--since", help="Only records created since: 7d, 12h, 30m or an ISO date.")]


@app.command()
def log(
    ctx: typer.Context,
    line: Annotated[str, typer.Option("--line", help="Line the answer came from.")],
    response: Annotated[str, typer.Option("--response", help="The model's answer.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="The user's prompt as plain text.")] = None,
    messages: Annotated[
        str | None, typer.Option("--messages", help='The prompt as JSON chat messages: [{"role": "user", "content": "..."}].')
    ] = None,
    rating: Annotated[float | None, typer.Option("--rating", help="-1, 0, +1 or a score in [-1, 1].")] = None,
    correction: Annotated[str | None, typer.Option("--correction", help="The answer the model should have given.")] = None,
    chosen: Annotated[str | None, typer.Option("--chosen", help="Preferred answer of a pair.")] = None,
    rejected: Annotated[str | None, typer.Option("--rejected", help="Rejected answer of a pair.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Pseudonymous user or system id.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeat for several.")] = None,
    adapter_version: Annotated[str | None, typer.Option("--adapter-version", help="Version that produced the answer, e.g. v3.")] = None,
    request_id: Annotated[str | None, typer.Option("--request-id", help="Id of the response, as the server issued it.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Record one piece of feedback."""
    if (prompt is None) == (messages is None):
        raise InvalidInput("give exactly one of --prompt and --messages")
    if messages is not None:
        try:
            prompt_value = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--messages is not valid JSON: {exc.msg}") from None
    else:
        prompt_value = prompt
    ws = workspace(ctx)
    feedback_id = ws.log_feedback(
        line=line,
        prompt=prompt_value,
        response=response,
        rating=rating,
        correction=correction,
        chosen=chosen,
        rejected=rejected,
        source=source,
        tags=tag,
        adapter_version=adapter_version,
        request_id=request_id,
    )
    with ws.reading() as session:
        times_seen = feedback.get_feedback(session, feedback_id).times_seen
    if json_output:
        print_json({"id": feedback_id, "times_seen": times_seen, "duplicate": times_seen > 1})
    elif times_seen > 1:
        typer.echo(f"duplicate of feedback #{feedback_id} (seen {times_seen} times)")
    else:
        typer.echo(f"recorded feedback #{feedback_id}")


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL file, one feedback record per line.", dir_okay=False)],
    line: Annotated[str | None, typer.Option("--line", help="Line for records without a 'line' field.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Import the valid lines and report the invalid ones.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Import a JSONL file: all of it, or nothing if any line is invalid; other writers go on meanwhile."""
    ws = workspace(ctx)
    size = file.stat().st_size if file.is_file() else 0
    with byte_progress(size, f"importing {file.name}") as progress:
        report = feedback_io.import_feedback(
            ws.db,
            file,
            actor=ws.user,
            line=line,
            skip_invalid=skip_invalid,
            max_field_bytes=ws.settings.max_field_bytes,
            progress=progress,
        )
    if json_output:
        print_json(report.__dict__)
        return
    typer.echo(
        f"imported {report.imported} records from {file} ({report.duplicates} duplicates counted, {report.skipped} invalid lines skipped)"
    )
    for error in report.errors:
        typer.echo(f"skipped {error}", err=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    line: LineOption = None,
    source: SourceOption = None,
    rating: Annotated[str | None, typer.Option(help="positive, negative, neutral, none, or a number.")] = None,
    since: SinceOption = None,
    status: Annotated[str, typer.Option(help="active, forgotten or all.")] = "active",
    limit: Annotated[int, typer.Option(help="Records per page.")] = 50,
    offset: Annotated[int, typer.Option(help="Records to skip (paging).")] = 0,
    json_output: JsonOption = False,
) -> None:
    """List feedback, newest first."""
    filters = FeedbackQuery(line=line, source=source, rating=rating, since=parse_since(since), status=None if status == "all" else status)
    with workspace(ctx).reading() as session:
        rows, total = feedback.list_feedback(session, filters, limit=limit, offset=offset)
        records = [feedback.as_dict(row) for row in rows]
    if json_output:
        print_json({"total": total, "limit": limit, "offset": offset, "records": records})
        return
    for record in records:
        record["prompt"] = record["prompt"][-1]["content"] if record["prompt"] else None
        record["signal"] = _signal(record)
    print_table(records, ["id", "line", "created_at", "source", "signal", "prompt", "response"], empty="no feedback matches")
    if total > offset + len(records):
        typer.echo(f"{offset + 1}-{offset + len(records)} of {total}; next page: --offset {offset + limit}")


def _signal(record: dict) -> str:
    parts = []
    if record["rating"] is not None:
        parts.append(f"rating {record['rating']:+g}")
    if record["correction"] is not None:
        parts.append("correction")
    if record["chosen"] is not None:
        parts.append("pair")
    return ", ".join(parts) or record["status"]


@app.command()
def show(
    ctx: typer.Context,
    feedback_id: Annotated[int, typer.Argument(metavar="ID", help="Feedback id.", min=1, max=MAX_BIG_ID)],
    json_output: JsonOption = False,
) -> None:
    """Show one feedback record (or its tombstone)."""
    with workspace(ctx).reading() as session:
        record = feedback.as_dict(feedback.get_feedback(session, feedback_id))
    if json_output:
        print_json(record)
    else:
        print_fields(record)


@app.command()
def stats(
    ctx: typer.Context,
    line: LineOption = None,
    by_source: Annotated[bool, typer.Option("--by-source", help="One row per line and source.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Count feedback per line (and source): records, duplicates, ratings, corrections, pairs."""
    with workspace(ctx).reading() as session:
        rows = feedback.feedback_stats(session, line=line, by_source=by_source)
    if json_output:
        print_json(rows)
        return
    columns = (
        ["line"]
        + (["source"] if by_source else [])
        + ["records", "active", "forgotten", "times_seen", "positive", "neutral", "negative", "corrections", "pairs"]
    )
    print_table(rows, columns, empty="no feedback yet")


@app.command()
def export(
    ctx: typer.Context,
    line: LineOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of standard output.")] = None,
) -> None:
    """Write active feedback as JSONL in the format `feedback import` reads."""
    filters = FeedbackQuery(line=line, source=source, since=parse_since(since))
    with workspace(ctx).reading() as session:
        if output is None:
            feedback_io.export_feedback(session, sys.stdout, filters)
            return
        # Write beside the target and rename, so a failed export never leaves a truncated file.
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=output.parent, prefix=f".{output.name}.", delete=False)
        try:
            with handle:
                count = feedback_io.export_feedback(session, handle, filters)
            os.replace(handle.name, output)
        except BaseException:
            os.unlink(handle.name)
            raise
    typer.echo(f"exported {count} records to {output}", err=True)


@app.command()
def forget(
    ctx: typer.Context,
    feedback_id: Annotated[
        list[int] | None, typer.Option("--id", help="Feedback id to forget; repeat for several.", min=1, max=MAX_BIG_ID)
    ] = None,
    source: Annotated[str | None, typer.Option("--source", help="Forget everything from this source.")] = None,
    line: Annotated[str | None, typer.Option("--line", help="With --source: only on this line.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record (e.g. a ticket id).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be forgotten; change nothing.")] = False,
    vacuum: Annotated[
        bool,
        typer.Option(
            help="Rebuild an SQLite database file afterwards (VACUUM); it holds the write lock meanwhile, about 0.7 s per 100 MB."
        ),
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Erase feedback content for privacy, keeping a tombstone (id, line, content hash, when, who).

    Also erases the records' other copies: evaluation samples, source names in run reports, reference
    set cases the base model wrote from them, the source's quarantines, run folders, and old pages of
    an SQLite database (see docs/security.md).
    """
    ws = workspace(ctx)
    with ws.transaction() as session:
        if not dry_run:
            access.require(session, ws.user, "feedback.forget")
        report = feedback.forget_feedback(
            session, actor=ws.user, ids=feedback_id or (), source=source, line=line, reason=reason, dry_run=dry_run
        )
    # again for forgotten ones: finishes a clean-up cut short
    found = report.forgotten or report.already_forgotten or report.redacted.quarantines_deleted
    scrubbed = erasure.scrub(ws, vacuum=vacuum) if found and not dry_run else erasure.Scrubbed()
    if json_output:
        print_json({**asdict(report), "scrubbed": asdict(scrubbed), "dry_run": dry_run})
        return
    verb = "would forget" if dry_run else "forgot"
    if not report.forgotten:
        typer.echo(f"nothing to forget ({len(report.already_forgotten)} already forgotten)")
    else:
        typer.echo(f"{verb} {len(report.forgotten)} feedback records on {', '.join(report.lines)}")
    if report.revoked:
        typer.echo(f"revoked adapters trained on them: {', '.join(map(str, report.revoked))}")
    for fallback in report.fallbacks:
        typer.echo(f"{fallback['line']} served a revoked version; it now serves {fallback['to']}")
    if found and not dry_run:
        _echo_erased(report.redacted, scrubbed, report.responses_deleted)


def _echo_erased(redacted: erasure.Redacted, scrubbed: erasure.Scrubbed, responses_deleted: int) -> None:
    counts = {
        "issued responses": responses_deleted,
        "evaluation samples": redacted.samples_redacted,
        "samples with answers withheld": redacted.samples_withheld,
        "run reports naming the source": redacted.runs_cleaned,
        "reference set cases written from them": redacted.reference_cases_removed,
        "quarantines of the source": redacted.quarantines_deleted,
        "unfinished runs stopped": len(redacted.runs_stopped),
        "run folders": scrubbed.folders_removed,
        "run logs": scrubbed.logs_removed,
    }
    parts = [f"{what}: {n}" for what, n in counts.items() if n]
    if scrubbed.vacuumed and scrubbed.wal_truncated:
        parts.append("old database pages (vacuumed, WAL truncated)")
    typer.echo("also erased: " + ("; ".join(parts) or "nothing else held them"))
    for note in scrubbed.notes:
        typer.echo(f"adapterctl: warning: {note}", err=True)


QuarantineSource = Annotated[str, typer.Option("--source", help="The feedback source (pseudonymous user or system id).")]


@app.command("quarantine")
def quarantine_(
    ctx: typer.Context,
    source: QuarantineSource,
    line: Annotated[str | None, typer.Option("--line", help="Only on this line [default: every line].")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the record (e.g. the flag or a ticket id).")] = None,
    json_output: JsonOption = False,
) -> None:
    """Keep a source's feedback out of training (new and replayed) until released; the records stay stored."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "feedback.quarantine")
        change = quarantine.quarantine_source(session, source=source, line=line, reason=reason, actor=ws.user)
        rows = [quarantine.as_dict(session, row) for row in change.rows]
    if json_output:
        print_json({"quarantined": rows, "note": change.note})
    elif rows:
        typer.echo(
            f"quarantined {source} on {rows[0]['line'] or 'every line'}: "
            f"its {rows[0]['records']} active records are kept out of training "
            f"(quarantine {rows[0]['id']}; `adapterctl feedback release --source {shlex.quote(source)}` lets them back)"
        )
    else:
        typer.echo(f"nothing to do: {change.note}")


@app.command("release")
def release(
    ctx: typer.Context,
    source: QuarantineSource,
    line: Annotated[str | None, typer.Option("--line", help="Only its quarantine on this line [default: all of the source's].")] = None,
    json_output: JsonOption = False,
) -> None:
    """Let a quarantined source's feedback train again."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "feedback.release")
        change = quarantine.release_source(session, source=source, line=line, actor=ws.user)
        rows = [quarantine.as_dict(session, row) for row in change.rows]
    if json_output:
        print_json({"released": rows, "note": change.note})
        return
    where = ", ".join(row["line"] or "every line" for row in rows)
    typer.echo(f"released {source} on {where}: the next run may train on its feedback" + (f"; but {change.note}" if change.note else ""))


@app.command("quarantines")
def quarantines(
    ctx: typer.Context,
    line: Annotated[str | None, typer.Option("--line", help="Only those that hold on this line.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Released ones too.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Quarantined sources, newest first, with the active records each keeps out of training."""
    with workspace(ctx).reading() as session:
        rows = quarantine.list_quarantines(session, line=line, include_released=all_)
    if json_output:
        print_json(rows)
        return
    for row in rows:
        row["line"] = row["line"] or quarantine.EVERY_LINE
    columns = ["id", "source", "line", "records", "reason", "created_at", "created_by"] + (["released_at", "released_by"] if all_ else [])
    print_table(rows, columns, empty="no quarantined sources")
