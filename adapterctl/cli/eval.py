"""`adapterctl eval …`: regression suites, the reference set, and evaluations on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapterctl import access, evaluation, registry, suites
from adapterctl.cli._common import MAX_ID, JsonOption, print_fields, print_json, print_table, work_progress, workspace

app = typer.Typer(help="Evaluation: suites of regression cases and evaluations of versions and candidates.", no_args_is_help=True)
suite_app = typer.Typer(help="Regression suites and the reference set of a line.", no_args_is_help=True)
app.add_typer(suite_app, name="suite")

LineOption = Annotated[str, typer.Option("--line", help="The line.")]


@suite_app.command("add")
def suite_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=f"Suite name; {suites.REFERENCE!r} is the line's reference set.")],
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.jsonl", help="One case per line: {prompt, expected, match?}; for the reference set {text} or {prompt, answer}."
        ),
    ],
    line: LineOption,
    match: Annotated[str, typer.Option(help=f"Match rule of cases that name none: {', '.join(suites.MATCH_RULES)}.")] = "normalised",
    json_output: JsonOption = False,
) -> None:
    """Add a suite, or its next version when the cases changed (the whole file is checked first)."""
    kind = "reference" if name == suites.REFERENCE else "regression"
    cases = suites.parse_cases(file, kind=kind, default_match=match)
    ws = workspace(ctx)
    with ws.transaction() as session:
        access.require(session, ws.user, "eval.suite.add")
        suite, created = suites.add_suite(session, line=line, name=name, cases=cases, kind=kind, actor=ws.user)
        result = {**suites.as_dict(suite), "created": created}
    if json_output:
        print_json(result)
    elif created:
        anchors = (
            f" ({result['training_anchors']} anchor training, the other {result['cases'] - result['training_anchors']} measure forgetting)"
            if kind == "reference"
            else ""
        )
        typer.echo(f"suite {name} v{result['version']} of {line}: {result['cases']} cases{anchors}")
    else:
        typer.echo(f"suite {name} of {line} is unchanged (v{result['version']}, {result['cases']} cases)")


@suite_app.command("list")
def suite_list(ctx: typer.Context, line: LineOption, json_output: JsonOption = False) -> None:
    """The newest version of each suite of a line."""
    with workspace(ctx).reading() as session:
        from adapterctl.lines import get_line

        rows = [suites.as_dict(s) for s in suites.current_suites(session, get_line(session, line).id)]
    if json_output:
        print_json(rows)
    else:
        print_table(
            rows,
            ["name", "version", "kind", "cases", "created_at", "created_by"],
            empty=f"no suites on {line}; add one with `adapterctl eval suite add NAME FILE.jsonl --line {line}`",
        )


@suite_app.command("show")
def suite_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Suite name.")],
    line: LineOption,
    version: Annotated[int | None, typer.Option(help="A version other than the newest.", min=1, max=MAX_ID)] = None,
    json_output: JsonOption = False,
) -> None:
    """A suite's cases."""
    with workspace(ctx).reading() as session:
        result = suites.as_dict(suites.get_suite(session, line=line, name=name, version=version), with_cases=True)
    if json_output:
        print_json(result)
        return
    print_fields({k: v for k, v in result.items() if k not in ("cases", "provenance")})
    if made := result["provenance"]:
        typer.echo(
            f"provenance: {made['method']} from base model {made['base_model_hash'][:16]}, seed {made['settings']['seed']}, "
            f"temperature {made['settings']['temperature']}, top_p {made['settings']['top_p']}: "
            f"{made['kept']} cases kept of {made['sampled']} prompts sampled ({made['seeded']} with the line's feedback in context)"
        )
        if made.get("forgotten_cases"):
            typer.echo(f"  {made['forgotten_cases']} cases removed since: written with feedback that was forgotten")
    for number, case in enumerate(result["cases"], start=1):
        prompt = case.get("text") or case["prompt"][-1]["content"]
        expected = f"  [{case['match']}] {case['expected']}" if "expected" in case else f"  -> {case['answer']}" if "answer" in case else ""
        typer.echo(f"{number:>4}. {prompt}{expected}")


@app.command("run")
def run(
    ctx: typer.Context,
    line: Annotated[str | None, typer.Option("--line", help="Re-evaluate this line's active version.")] = None,
    version: Annotated[str | None, typer.Option(help="This version (v3 or 3) instead of the active one.")] = None,
    candidate: Annotated[
        int | None, typer.Option(help="Evaluate this candidate now; one that is evaluating then meets the gate.", min=1, max=MAX_ID)
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="New tokens per greedy answer.")] = evaluation.EvalSettings.max_new_tokens,
    json_output: JsonOption = False,
) -> None:
    """Evaluate a version on the line's current suites (cron-friendly; kept as history), or a candidate."""
    if (line is None) == (candidate is None):
        raise typer.BadParameter("give --line (with --version, optionally) or --candidate")
    settings = evaluation.EvalSettings(max_new_tokens=max_new_tokens)
    if problems := settings.problems():
        raise typer.BadParameter("; ".join(problems))
    ws = workspace(ctx)
    with work_progress() as update:
        if candidate is not None:
            evaluation_id = evaluation.evaluate_candidate(
                ws, candidate, settings=settings, progress=lambda done, total: update(f"evaluating candidate {candidate}", done, total)
            )
        else:
            assert line is not None  # one of --line and --candidate, checked above
            evaluation_id = evaluation.evaluate_version(
                ws,
                line,
                registry.parse_version(version) if version else None,
                settings=settings,
                progress=lambda done, total: update(f"evaluating {line} {version or 'active version'}", done, total),
            )
    with ws.reading() as session:
        from adapterctl.review import comparison_table

        stored = evaluation.get_evaluation(session, evaluation_id)
        report = {**evaluation.as_dict(stored), "table": comparison_table(stored)}
        assert stored.adapter_id is not None  # a candidate or a version: never the base model
        status = registry.get_adapter(session, stored.adapter_id).status
    if json_output:
        print_json({**report, "adapter_status": status})
        return
    print_metric_table(report["table"])
    if report["gate"] is not None:
        gate = report["gate"]
        typer.echo(f"gate: {'passed' if gate['passed'] else 'failed'}" + "".join(f"\n  - {r}" for r in gate["reasons"]))
    typer.echo(f"adapter {stored.adapter_id} is {status}; evaluation {report['id']} took {report['seconds']:.1f} s")


def print_metric_table(table: list[dict]) -> None:
    """Metrics by model, the change coloured green when better and red when worse (on a terminal)."""
    roles = [r for r in ("base", "active", "candidate", "version") if any(r in row for row in table)]
    rows = []
    for row in table:
        entry = {"metric": row["metric"], **{role: row.get(role) for role in roles}}
        for other in ("base", "active"):
            delta = row.get(f"delta_vs_{other}")
            if delta is not None:
                better = (delta > 0) == row["higher_is_better"] and delta != 0
                colour = "green" if better else ("red" if delta != 0 else "white")
                entry[f"Δ vs {other}"] = f"[{colour}]{delta:+.4g}[/{colour}]"
        rows.append(entry)
    columns = ["metric", *roles, *[f"Δ vs {o}" for o in ("base", "active") if any(f"Δ vs {o}" in r for r in rows)]]
    print_table(rows, columns, markup=True)


@app.command("history")
def history(ctx: typer.Context, line: LineOption, json_output: JsonOption = False) -> None:
    """Scores of the line's versions over time, per suite; flags a drop since the version was approved."""
    with workspace(ctx).reading() as session:
        entries = evaluation.history(session, line)
    if json_output:
        print_json(entries)
        return
    rows = []
    for entry in entries:
        for name, score in entry["suites"].items():
            flag = "DROPPED" if score["dropped"] else ""
            rows.append(
                {
                    "when": entry["created_at"][:19],
                    "version": entry["version"],
                    "suite": f"{name} v{score['version']}",
                    "score": score["score"],
                    "at approval": score["at_approval"],
                    "flag": flag,
                }
            )
    print_table(
        rows,
        ["when", "version", "suite", "score", "at approval", "flag"],
        empty=f"no re-evaluations of {line} yet; run `adapterctl eval run --line {line}`",
    )
