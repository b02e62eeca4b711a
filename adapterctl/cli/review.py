"""`adapterctl review …` and `adapterctl reviewer …`: the queue, the report, the decisions, and who may make them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from adapterctl import review
from adapterctl.cli._common import MAX_ID, JsonOption, print_json, print_table, workspace
from adapterctl.cli.eval import print_metric_table
from adapterctl.report_html import WITHHELD, candidate_changes, compared_role, write_html

app = typer.Typer(help="The review queue: read a candidate's report, then approve or reject it.", no_args_is_help=True)
reviewers_app = typer.Typer(help="Reviewers: the people who may approve or reject candidates.", no_args_is_help=True)
IdArgument = Annotated[int, typer.Argument(metavar="ID", help="Candidate (adapter) id.", min=1, max=MAX_ID)]
SPARK = "▁▂▃▄▅▆▇█"


@app.command("list")
def list_(
    ctx: typer.Context, line: Annotated[str | None, typer.Option(help="Only this line.")] = None, json_output: JsonOption = False
) -> None:
    """Candidates waiting for a decision (and any still being evaluated), oldest first."""
    with workspace(ctx).reading() as session:
        rows = review.queue(session, line=line)
    if json_output:
        print_json(rows)
        return
    for row in rows:
        row["approvals"] = f"{len(row['approvals'])}/{row['approvals_required']}" + (
            f" ({', '.join(row['approvals'])})" if row["approvals"] else ""
        )
    print_table(rows, ["id", "line", "status", "age", "gate", "approvals"], empty="nothing waits for review")


@app.command()
def show(
    ctx: typer.Context,
    adapter_id: IdArgument,
    html: Annotated[
        Path | None, typer.Option("--html", metavar="FILE", help="Also write the report as a self-contained HTML page.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """The report a reviewer decides from: evals against base and active, gate, training, data, samples."""
    with workspace(ctx).reading() as session:
        report = review.report(session, adapter_id)
    if html is not None:
        write_html(report, html)
    if json_output:
        print_json(report)
        return
    adapter = report["adapter"]
    typer.echo(
        f"candidate {adapter['id']} of {adapter['line']}: {adapter['status']}"
        + (f" as {adapter['version']}" if adapter["version"] else "")
        + f", trained by run {adapter['run']}; "
        f"approvals {report['approvals']['summary']}"
    )
    if report["evaluation"] is None:
        typer.echo("\nnot evaluated yet: `adapterctl eval run --candidate ID`")
    else:
        gate = report["gate"]  # the verdict first, then the measurements behind it
        typer.echo("\ngate: " + ("passed" if gate["passed"] else "failed"))
        for check in gate["checks"]:
            typer.echo(f"  {check_line(check)}")
        typer.echo("")
        print_metric_table(report["table"])
        _print_suite_cases(report["suite_cases"])
    training = report["training"]
    curve = [loss for _, loss in training["loss_curve"]]
    if curve:
        typer.echo(f"\nloss {curve[0]:.3f} {sparkline(curve)} {curve[-1]:.3f}  ({training['steps']} steps, {training['seconds']:.0f} s)")
    if training["summary"]:
        typer.echo(training["summary"])
    provenance = report["provenance"]
    typer.echo(
        "\ndata: "
        + ", ".join(f"{n} {split}" for split, n in provenance["examples"].items())
        + f"; duplicates removed {provenance['duplicates_removed']}"
    )
    typer.echo(
        "  sources: "
        + ", ".join(f"{s['source']} {s['share']:.0%}" for s in provenance["sources"][:8])
        + (" …" if len(provenance["sources"]) > 8 else "")
    )
    if reference := provenance.get("reference", {}).get("version"):
        made = "synthesized from the base model" if provenance["reference"].get("synthesized") else "given"
        typer.echo(f"  reference set v{reference} ({made}): {provenance['reference']['anchors']} anchors trained on")
    if provenance["capped_sources"]:
        typer.echo("  capped (excess dropped): " + ", ".join(f"{s} -{n}" for s, n in provenance["capped_sources"].items()))
    typer.echo(f"  hygiene: {report['hygiene']}")
    _print_poisoning(report["poisoning"])
    shown, total = len(report["training_examples"]), report["training_examples_total"]
    typer.echo(f"\ntraining examples (a sample of {shown} of {total}):" if shown < total else "\ntraining examples:")
    for example in report["training_examples"]:
        if example.get("forgotten"):
            typer.echo(f"  #{example['feedback_id']}: (forgotten)")
        else:
            typer.echo(
                f"  #{example['feedback_id']} [{example['source']}] {_short(example['prompt'][-1]['content'])} -> {_short(example['answer'])}"
            )
    if report["samples"]:
        against = compared_role(report["samples"])
        typer.echo(f"\nside by side (held-out prompts; candidate = or ≠ {against}):")
        for sample in report["samples"]:
            if sample.get("forgotten"):
                typer.echo(f"  #{sample['feedback_id']}: (forgotten)")
                continue
            typer.echo(f"  Q: {_short(sample['prompt'][-1]['content'])}")
            for role in ("base", "active", "candidate"):
                if role in sample:
                    mark = candidate_mark(sample, against) if role == "candidate" else ""
                    typer.echo(f"    {role:>9}{mark}: {WITHHELD if role in sample.get('withheld', ()) else _short(sample[role])}")
    decisions = report["decisions"]
    typer.echo(
        f"\ndecisions ({sum(d['decision'] == 'approve' for d in decisions)}/{report['approvals_required']} approvals): "
        + ("; ".join(f"{d['reviewer']} {d['decision']}d" + (f" ({d['note']})" if d["note"] else "") for d in decisions) or "none yet")
    )
    if report["canaries"]:
        typer.echo("\ncanary releases of this version:")
        for entry in report["canaries"]:
            typer.echo(
                f"  {entry['at'][:19]} {entry['kind']} by {entry['by']}: serves {entry['to']}"
                + (f", {entry['canary']}" if entry["canary"] else "")
                + (f"; {entry['reason']}" if entry["reason"] else "")
            )


def _print_poisoning(checks: dict) -> None:
    """One line per flag: the check, whether its records were held out or trained on, why, its sources and example ids."""
    typer.echo(f"\npoisoning checks: {checks['summary']}")
    for flag in checks["flags"]:
        more = flag["source_count"] - len(flag["sources"])
        typer.echo(
            f"  {flag['kind']:<7} {'held out' if flag['held'] else 'TRAINED ON'}: {flag['reason']}; "
            f"sources {', '.join(flag['sources'])}{f' (+{more})' if more else ''}; "
            f"e.g. {' '.join(f'#{i}' for i in flag['feedback_ids'][:5])}"
        )
    if sources := checks["quarantined"]["sources"]:
        typer.echo("  quarantined, kept out: " + ", ".join(f"{source} {n}" for source, n in sources.items()))


def _print_suite_cases(suite_cases: dict[str, list[dict]]) -> None:
    """Each regression suite per case: the cases some model passes and another fails, in full."""
    for name, cases in suite_cases.items():
        roles = [r for r in ("base", "active", "candidate", "version") if cases and r in cases[0]]
        differing = [c for c in cases if len({c[r] for r in roles}) > 1]
        typer.echo(
            f"\nsuite {name}: {len(cases) - len(differing)} of {len(cases)} cases alike for {', '.join(roles)}"
            + (", these differ:" if differing else "")
        )
        for case in differing:
            verdicts = ", ".join(f"{role} {'pass' if case[role] else 'FAIL'}" for role in roles)
            typer.echo(
                f"  case {case['case']}: {verdicts}  Q: {_short(case['prompt'], 50)} (expects {case['match']} {_short(case['expected'], 30)!r})"
            )


def check_line(check: dict) -> str:
    """'pass  learned 1.00 (at least 0.80)' or 'FAIL  keeps the reference set 0.25 (at most 0.10 against base): why',
    then the figures behind it on the next line."""
    verdict = check.get("verdict") or ("pass" if check.get("passed", "reason" not in check) else "fail")
    label = {"pass": "pass", "fail": "FAIL"}.get(verdict, "n/a ")
    bound = "at least" if check.get("bound") == "min" else "at most"
    against = f" against {check['against']}" if check.get("against") else ""
    line = f"{label}  {check['check']} {check['value']:g} ({bound} {check['limit']:g}{against})"
    if verdict != "pass":
        line += ": " + (check.get("reason", "") if verdict == "fail" else f"{verdict}, {check.get('reason', '')}")
    return line + (f"\n        {check['detail']}" if check.get("detail") else "")


def candidate_mark(sample: dict, against: str) -> str:
    """' =' when the candidate answers as `against` does (spacing aside), ' ≠' when not, '' when either answer is not shown."""
    changes = candidate_changes(sample, against)
    if changes is None:
        return ""
    return " =" if all(kind == "same" for kind, _ in changes) else " ≠"


def sparkline(values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = max(1, len(values) // 40)
    return "".join(SPARK[int((v - low) / span * (len(SPARK) - 1))] for v in values[::step])


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command()
def approve(
    ctx: typer.Context,
    adapter_id: IdArgument,
    note: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Approve a candidate as the acting reviewer; the last approval needed makes it the line's next version."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        adapter = review.approve(session, adapter_id, reviewer=ws.user, note=note)
        result: dict[str, Any] = {
            "id": adapter.id,
            "line": adapter.line.name,
            "status": adapter.status,
            "version": f"v{adapter.version}" if adapter.version else None,
            "approvals": review.approvers(session, adapter.id),
        }
    if json_output:
        print_json(result)
    elif result["version"]:
        typer.echo(f"candidate {adapter_id} approved: {result['line']} {result['version']} (by {', '.join(result['approvals'])})")
    else:
        typer.echo(f"approval recorded for candidate {adapter_id} ({len(result['approvals'])} so far); it waits for more reviewers")


@app.command()
def reject(
    ctx: typer.Context,
    adapter_id: IdArgument,
    reason: Annotated[str, typer.Option(help="Why (required; kept in the audit log).")],
    json_output: JsonOption = False,
) -> None:
    """Reject a candidate as the acting reviewer; one rejection is final."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        adapter = review.reject(session, adapter_id, reviewer=ws.user, reason=reason)
        result = {"id": adapter.id, "line": adapter.line.name, "status": adapter.status}
    if json_output:
        print_json(result)
    else:
        typer.echo(f"candidate {adapter_id} of {result['line']} rejected")


@reviewers_app.command("add")
def reviewer_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The person's login, as ADAPTERCTL_USER or the OS login gives it.")],
    role: Annotated[str, typer.Option(help="reviewer (approve/reject) or admin (also manages reviewers).")] = "reviewer",
    json_output: JsonOption = False,
) -> None:
    """Register a reviewer (once an admin exists, only admins may)."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        reviewer = review.add_reviewer(session, name=name, role=role, actor=ws.user)
        result = {"name": reviewer.name, "role": reviewer.role}
    if json_output:
        print_json(result)
    else:
        typer.echo(f"{result['name']} is now a{'n' if role == 'admin' else ''} {role}")


@reviewers_app.command("list")
def reviewer_list(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """Registered reviewers."""
    with workspace(ctx).reading() as session:
        rows = [
            {"name": r.name, "role": r.role, "created_at": r.created_at.isoformat(), "created_by": r.created_by}
            for r in review.list_reviewers(session)
        ]
    if json_output:
        print_json(rows)
    else:
        print_table(
            rows,
            ["name", "role", "created_at", "created_by"],
            empty="no reviewers; add one with `adapterctl reviewer add NAME --role admin`",
        )


@reviewers_app.command("remove")
def reviewer_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The reviewer.")]) -> None:
    """Remove a reviewer (admins only); their past decisions stay."""
    ws = workspace(ctx)
    with ws.transaction() as session:
        review.remove_reviewer(session, name=name, actor=ws.user)
    typer.echo(f"{name} is no longer a reviewer")
