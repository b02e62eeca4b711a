"""`adapterctl backup DIR` and `adapterctl restore DIR` (adapterctl.backup)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterctl import backup as backups
from adapterctl.cli._common import JsonOption, display_url, print_json, settings, work_progress

Directory = Annotated[Path, typer.Argument(metavar="DIR", help="The backup folder (for a backup: new or empty).", show_default=False)]


def backup(ctx: typer.Context, directory: Directory, json_output: JsonOption = False) -> None:
    """Write the database and every candidate's artifact, with a manifest of their sha256, to DIR (new or empty).
    Consistent while servers serve and feedback is written; writes nothing to the database."""
    with work_progress() as update:
        manifest = backups.create_backup(settings(ctx), directory, progress=update)
    shown = backups.summary(manifest, directory.absolute())
    for skipped in manifest["skipped_artifacts"]:
        typer.echo(f"adapterctl: warning: not in the backup: {skipped['problem']}", err=True)
    if json_output:
        print_json(shown)
        return
    counts = manifest["counts"]
    typer.echo(
        f"backup written to {shown['directory']}: {shown['files']} files, {shown['bytes'] / 2**20:.1f} MiB; {manifest['backend']} "
        f"at schema {manifest['schema_revision']}, {counts.get('feedback', 0)} feedback records, {counts.get('adapters', 0)} candidates, "
        f"audit head {manifest['audit_head'][:12]}"
    )


def restore(ctx: typer.Context, directory: Directory, json_output: JsonOption = False) -> None:
    """Restore a backup into an empty home and an empty database (ADAPTERCTL_HOME, ADAPTERCTL_DB_URL), after checking
    every file's sha256; an older schema is upgraded. Refused, with nothing written, when either is not empty."""
    target = settings(ctx)
    with work_progress() as update:
        restored = backups.restore_backup(target, directory, progress=update)
    if json_output:
        print_json(restored)
        return
    revision = restored["schema_revision"]
    upgraded = f", upgraded from schema {revision['backup']} to {revision['now']}" if revision["backup"] != revision["now"] else ""
    typer.echo(
        f"restored the backup of {restored['backup_created_at']} into {target.home} ({display_url(target.db_url)}): "
        f"{restored['files']} files{upgraded}; check it with `adapterctl doctor`"
    )
