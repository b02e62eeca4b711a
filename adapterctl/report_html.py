"""A review report as one self-contained HTML page (no server, no scripts, no external files)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from adapterctl.errors import InvalidInput

STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0;width:100%;table-layout:fixed}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
.better{color:#12702a}.worse{color:#b3261e;font-weight:600}.pass{color:#12702a}.fail{color:#b3261e}
pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}"""
WITHHELD = "(withheld: trained on forgotten feedback)"


def write_html(report: dict[str, Any], path: Path) -> None:
    """Write the page to a temporary file beside `path`, then rename: never a half-written report."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(render(report), encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from None


def render(report: dict[str, Any]) -> str:
    adapter = report["adapter"]
    parts = [f"<h1>Candidate {adapter['id']} of {escape(adapter['line'])}</h1>",
             f"<p>status <b>{escape(adapter['status'])}</b>{' as ' + escape(adapter['version']) if adapter['version'] else ''}, "
             f"run {adapter['run']}, sha256 <code>{adapter['sha256'][:16]}…</code>; "
             f"approvals <b>{escape(report['approvals']['summary'])}</b></p>"]
    if report["gate"] is not None:
        gate = report["gate"]
        parts.append(f"<h2>Gate: <span class=\"{'pass' if gate['passed'] else 'fail'}\">{'passed' if gate['passed'] else 'failed'}</span></h2>")
        parts.append(_table(["check", "value", "limit", "against", "verdict"], [
            [c["check"], c["value"], ("≥ " if c.get("bound") == "min" else "≤ ") + f"{c['limit']:g}", c.get("against"),
             "pass" if c.get("passed", "reason" not in c) else "FAIL: " + c.get("reason", "")] for c in gate["checks"]]))
    parts += ["<h2>Evaluation</h2>", _metric_table(report["table"])]
    curve = report["training"]["loss_curve"]
    parts += ["<h2>Training loss</h2>", _loss_plot(curve) if curve else "<p>no loss recorded</p>"]
    if report["training"].get("summary"):
        parts.append(f"<p>{escape(report['training']['summary'])}</p>")
    provenance = report["provenance"]
    parts += ["<h2>Data</h2>", f"<p>examples: {escape(json.dumps(provenance['examples']))}; duplicates removed: "
              f"{escape(json.dumps(provenance['duplicates_removed']))}; capped sources: {escape(json.dumps(provenance['capped_sources']))}</p>",
              _table(["source", "examples", "share"], [[s["source"], s["examples"], f"{s['share']:.1%}"] for s in provenance["sources"]])]
    shown, total = len(report["training_examples"]), report["training_examples_total"]
    parts += [f"<p>hygiene: {escape(report['hygiene'])}</p>"]
    parts += [f"<h2>Training examples{f' (a sample of {shown} of {total})' if shown < total else ''}</h2>", _table(["#", "source", "prompt", "answer"], [
        [e["feedback_id"], e.get("source"), e["prompt"][-1]["content"] if "prompt" in e else "(forgotten)", e.get("answer", "")]
        for e in report["training_examples"]])]
    parts += ["<h2>Side by side</h2>", _samples_table(report["samples"])]
    parts += ["<h2>Decisions</h2>", _table(["reviewer", "decision", "note", "at"], [[d["reviewer"], d["decision"], d["note"], d["at"]] for d in report["decisions"]])]
    title = f"adapterctl review: candidate {adapter['id']} of {adapter['line']}"
    return f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"


def _samples_table(samples: list[dict[str, Any]]) -> str:
    roles = [r for r in ("base", "active", "candidate") if any(r in s for s in samples)]
    rows = [[f"#{s['feedback_id']} (forgotten)", *("" for _ in roles)] if s.get("forgotten")
            else [s["prompt"][-1]["content"], *(WITHHELD if r in s.get("withheld", ()) else s.get(r) for r in roles)]
            for s in samples]
    return _table(["prompt", *roles], rows)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape('-' if c is None else str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metric_table(table: list[dict[str, Any]]) -> str:
    roles = [r for r in ("base", "active", "candidate", "version") if any(r in row for row in table)]
    rows = []
    for row in table:
        cells = [f"<td>{escape(row['metric'])}</td>"] + [f"<td>{_number(row.get(r))}</td>" for r in roles]
        for other in ("base", "active"):
            delta = row.get(f"delta_vs_{other}")
            good = delta is not None and delta != 0 and (delta > 0) == row["higher_is_better"]
            css = "" if not delta else ("better" if good else "worse")
            cells.append(f"<td class=\"{css}\">{'' if delta is None else f'{delta:+.4g}'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ["metric", *roles, "Δ vs base", "Δ vs active"])
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>" if rows else "<p>not evaluated</p>"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _loss_plot(curve: list[list[float]], width: int = 600, height: int = 160) -> str:
    steps, losses = [p[0] for p in curve], [p[1] for p in curve]
    x0, x1, y0, y1 = min(steps), max(steps) or 1, min(losses), max(losses)
    def x(s: float) -> float:
        return 40 + (s - x0) / ((x1 - x0) or 1) * (width - 50)

    def y(v: float) -> float:
        return 10 + (y1 - v) / ((y1 - y0) or 1) * (height - 30)

    points = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, losses))
    return (f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
            f'<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{points}"/>'
            f'<text x="0" y="16" font-size="11">{y1:.3f}</text><text x="0" y="{height - 20}" font-size="11">{y0:.3f}</text>'
            f'<text x="40" y="{height - 4}" font-size="11">step {x0}</text><text x="{width - 70}" y="{height - 4}" font-size="11">step {x1}</text></svg>')
