"""A review report as one self-contained HTML page (no server, no scripts, no external files)."""

from __future__ import annotations

import difflib
import json
from html import escape
from pathlib import Path
from typing import Any

from adapterctl.errors import InvalidInput

# overflow-wrap on the body reaches every element: a 300-character word in a prompt, a source or a line name wraps
# instead of widening the page beyond a 1280-pixel screen (tests/test_report_layout.py measures it in Chromium).
STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5em 0;width:100%;table-layout:fixed}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
.better{color:#12702a}.worse{color:#b3261e;font-weight:600}.pass{color:#12702a}.fail{color:#b3261e}
ins{background:#d3f3da;color:#0b4d1c;text-decoration:none}del{background:#fde0de;color:#8c1d18;text-decoration:line-through}
svg{max-width:100%;height:auto}
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
    parts = [
        f"<h1>Candidate {adapter['id']} of {escape(adapter['line'])}</h1>",
        f"<p>status <b>{escape(adapter['status'])}</b>{' as ' + escape(adapter['version']) if adapter['version'] else ''}, "
        f"run {adapter['run']}, sha256 <code>{adapter['sha256'][:16]}…</code>; "
        f"approvals <b>{escape(report['approvals']['summary'])}</b></p>",
    ]
    if report["gate"] is not None:
        gate = report["gate"]
        parts.append(
            f'<h2>Gate: <span class="{"pass" if gate["passed"] else "fail"}">{"passed" if gate["passed"] else "failed"}</span></h2>'
        )
        parts.append(
            _table(
                ["check", "value", "limit", "against", "verdict"],
                [
                    [c["check"], c["value"], ("≥ " if c.get("bound") == "min" else "≤ ") + f"{c['limit']:g}", c.get("against"), _verdict(c)]
                    for c in gate["checks"]
                ],
            )
        )
    parts += ["<h2>Evaluation</h2>", _metric_table(report["table"])]
    for name, cases in report.get("suite_cases", {}).items():
        roles = [r for r in ("base", "active", "candidate", "version") if cases and r in cases[0]]
        parts += [
            f"<h3>Suite {escape(name)}, per case</h3>",
            _table(
                ["#", "prompt", "expects", *roles],
                [[c["case"], c["prompt"], f"{c['match']}: {c['expected']}", *("pass" if c[r] else "FAIL" for r in roles)] for c in cases],
            ),
        ]
    curve = report["training"]["loss_curve"]
    parts += ["<h2>Training loss</h2>", _loss_plot(curve) if curve else "<p>no loss recorded</p>"]
    if report["training"].get("summary"):
        parts.append(f"<p>{escape(report['training']['summary'])}</p>")
    provenance = report["provenance"]
    parts += [
        "<h2>Data</h2>",
        f"<p>examples: {escape(json.dumps(provenance['examples']))}; duplicates removed: "
        f"{escape(json.dumps(provenance['duplicates_removed']))}; capped sources: {escape(json.dumps(provenance['capped_sources']))}</p>",
        _table(["source", "examples", "share"], [[s["source"], s["examples"], f"{s['share']:.1%}"] for s in provenance["sources"]]),
    ]
    shown, total = len(report["training_examples"]), report["training_examples_total"]
    parts += [f"<p>hygiene: {escape(report['hygiene'])}</p>"]
    if "poisoning" in report:
        parts += _poisoning(report["poisoning"])
    parts += [
        f"<h2>Training examples{f' (a sample of {shown} of {total})' if shown < total else ''}</h2>",
        _table(
            ["#", "source", "prompt", "answer"],
            [
                [e["feedback_id"], e.get("source"), e["prompt"][-1]["content"] if "prompt" in e else "(forgotten)", e.get("answer", "")]
                for e in report["training_examples"]
            ],
        ),
    ]
    parts += ["<h2>Side by side</h2>", _samples_table(report["samples"]) + _diff_legend(report["samples"])]
    parts += [
        "<h2>Decisions</h2>",
        _table(["reviewer", "decision", "note", "at"], [[d["reviewer"], d["decision"], d["note"], d["at"]] for d in report["decisions"]]),
    ]
    if report.get("canaries"):
        parts += [
            "<h2>Canary releases of this version</h2>",
            _table(
                ["at", "kind", "by", "serves", "canary", "reason"],
                [[e["at"], e["kind"], e["by"], e["to"], e["canary"], e["reason"]] for e in report["canaries"]],
            ),
        ]
    title = f"adapterctl review: candidate {adapter['id']} of {adapter['line']}"
    return f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title><style>{STYLE}</style></head><body>{"".join(parts)}</body></html>\n'


def _poisoning(checks: dict[str, Any]) -> list[str]:
    flags = [
        [
            f["kind"],
            f["count"],
            _Html("held out") if f["held"] else _Html('<b class="fail">trained on</b>'),
            f["reason"],
            ", ".join(f["sources"]) + (f" (+{f['source_count'] - len(f['sources'])})" if f["source_count"] > len(f["sources"]) else ""),
            " ".join(f"#{i}" for i in f["feedback_ids"]),
        ]
        for f in checks["flags"]
    ]
    quarantined = checks["quarantined"]["sources"]
    return [
        "<h2>Poisoning checks</h2>",
        f"<p>{escape(checks['summary'])}</p>",
        _table(["check", "records", "held out?", "why", "sources", "example ids"], flags) if flags else "",
        _table(["quarantined source", "records kept out"], [[source, n] for source, n in quarantined.items()]) if quarantined else "",
    ]


def compared_role(samples: list[dict[str, Any]]) -> str:
    """The model whose answers the candidate's are diffed against: the active version, or without one the base model."""
    return "active" if any("active" in s for s in samples) else "base"


def candidate_changes(sample: dict[str, Any], against: str) -> list[tuple[str, str]] | None:
    """The candidate's answer in word_diff pieces against `against`'s, or None where either answer is not shown."""
    if not (_shown(sample, "candidate") and _shown(sample, against)):
        return None
    return word_diff(sample[against], sample["candidate"])


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """`after` against `before` word by word, as ("same" | "removed" | "added", words) pieces; spacing is no change."""
    old, new = before.split(), after.split()
    pieces = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.append(("same", " ".join(new[j1:j2])))
        if op in ("replace", "delete"):
            pieces.append(("removed", " ".join(old[i1:i2])))
        if op in ("replace", "insert"):
            pieces.append(("added", " ".join(new[j1:j2])))
    return pieces


def _shown(sample: dict[str, Any], role: str) -> bool:
    return isinstance(sample.get(role), str) and role not in sample.get("withheld", ())


class _Html(str):
    """Markup already escaped, which _table puts in as it is."""


def _samples_table(samples: list[dict[str, Any]]) -> str:
    roles = [r for r in ("base", "active", "candidate") if any(r in s for s in samples)]
    against = compared_role(samples)
    header = [f"candidate (changes vs {against})" if r == "candidate" and against in roles else r for r in roles]
    rows = [
        [f"#{s['feedback_id']} (forgotten)", *("" for _ in roles)]
        if s.get("forgotten")
        else [s["prompt"][-1]["content"], *(_answer_cell(s, r, against) for r in roles)]
        for s in samples
    ]
    return _table(["prompt", *header], rows)


def _answer_cell(sample: dict[str, Any], role: str, against: str) -> Any:
    if role in sample.get("withheld", ()):
        return WITHHELD
    changes = candidate_changes(sample, against) if role == "candidate" else None
    if changes is None:
        return sample.get(role)
    tags = {"added": "ins", "removed": "del"}
    return _Html(" ".join(escape(words) if kind == "same" else f"<{tags[kind]}>{escape(words)}</{tags[kind]}>" for kind, words in changes))


def _diff_legend(samples: list[dict[str, Any]]) -> str:
    against = compared_role(samples)
    if not any(candidate_changes(s, against) for s in samples):
        return ""
    return (
        f"<p>In the candidate's answers, <ins>words it adds or changes</ins> and <del>words of the {against} "
        f"{'version' if against == 'active' else 'model'}'s answer it drops</del> are marked.</p>"
    )


def _verdict(check: dict[str, Any]) -> str:
    verdict = check.get("verdict") or ("pass" if check.get("passed", "reason" not in check) else "fail")
    shown = "FAIL: " + check.get("reason", "") if verdict == "fail" else verdict
    return shown + (f" ({check['detail']})" if check.get("detail") else "")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    return value if isinstance(value, _Html) else escape("-" if value is None else str(value))


def _metric_table(table: list[dict[str, Any]]) -> str:
    roles = [r for r in ("base", "active", "candidate", "version") if any(r in row for row in table)]
    rows = []
    for row in table:
        cells = [f"<td>{escape(row['metric'])}</td>"] + [f"<td>{_number(row.get(r))}</td>" for r in roles]
        for other in ("base", "active"):
            delta = row.get(f"delta_vs_{other}")
            good = delta is not None and delta != 0 and (delta > 0) == row["higher_is_better"]
            css = "" if not delta else ("better" if good else "worse")
            cells.append(f'<td class="{css}">{"" if delta is None else f"{delta:+.4g}"}</td>')
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
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{points}"/>'
        f'<text x="0" y="16" font-size="11">{y1:.3f}</text><text x="0" y="{height - 20}" font-size="11">{y0:.3f}</text>'
        f'<text x="40" y="{height - 4}" font-size="11">step {x0}</text><text x="{width - 70}" y="{height - 4}" font-size="11">step {x1}</text></svg>'
    )
