"""`adapterctl doctor [--repair]`: whether the database and the artifact store agree."""

from __future__ import annotations

from typing import Annotated

import typer

from adapterctl import access
from adapterctl import doctor as checks
from adapterctl.artifacts import ArtifactStore
from adapterctl.cli._common import JsonOption, print_json, workspace


def doctor(
    ctx: typer.Context,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove what a crash provably left behind (orphan folders, leases that "
            "expired or whose process on this host is gone); each removal is an "
            "audit event.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Check the schema, every artifact's hash, orphan folders, expired leases and the audit chain; exit 1 when
    a problem is left. A database at another schema revision is refused before any check, naming the fix."""
    ws = workspace(ctx)
    store = ArtifactStore(ws.settings.artifacts_dir)
    repaired: list[str] = []
    if repair:
        with ws.transaction() as session:  # examined again under the write lock: what is repaired is still wrong
            access.require(session, ws.user, "doctor.repair")
            repaired = checks.repair(session, store, checks.examine(session, store), actor=ws.user)
    with ws.reading() as session:
        findings = checks.examine(session, store)
    problems = [f for f in findings if f.severity != "ok"]
    if json_output:
        print_json({"ok": not problems, "findings": [f.as_dict() for f in findings], "repaired": repaired})
    else:
        for done in repaired:
            typer.echo(f"repaired: {done}")
        for finding in findings:
            mark = {"ok": "ok  ", "warning": "WARN", "error": "FAIL"}[finding.severity]
            hint = "  (`adapterctl doctor --repair` fixes it)" if finding.repair else ""
            typer.echo(f"{mark}  {finding.check}: {finding.detail}{hint}")
    raise typer.Exit(1 if problems else 0)
