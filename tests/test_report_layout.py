"""The review report on one screen: the candidate's answers diffed against the active version, in the terminal and in
an HTML page that a real headless Chromium shows at 1280 pixels without scrolling sideways.

Without Chromium (`apt-get install chromium`) the browser tests are skipped, unless ADAPTERCTL_TEST_REQUIRE_BROWSER=1
(as in CI), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from adapterctl import review
from adapterctl.cli.review import candidate_mark
from adapterctl.report_html import WITHHELD, render, word_diff
from tests.test_erasure import candidate_of, run_with, stored_evaluation

REQUIRE_BROWSER = os.environ.get("ADAPTERCTL_TEST_REQUIRE_BROWSER") == "1"
SCREEN = (1280, 900)
LONG_WORD = "x" * 300  # one word a screen cannot hold: it must wrap, not widen the page
MEASURE = (
    "<script>document.title = 'measured ' + document.documentElement.scrollWidth + ' '"
    " + document.documentElement.clientWidth + ' ' + window.innerWidth</script>"
)


def sample(feedback_id: int, question: str, **answers: str) -> dict:
    return {
        "feedback_id": feedback_id,
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        **answers,
    }


def report_with(samples: list[dict], *, word: str = "fine") -> dict:
    """A review report with every part render() shows, `word` standing in wherever free text can appear."""
    return {
        "adapter": {"id": 12, "line": "a" * 63, "status": "pending_review", "version": None, "run": 4, "sha256": "ab" * 32},
        "approvals": {"given": 0, "required": 2, "by": [], "summary": "0 of 2"},
        "gate": {
            "passed": True,
            "reasons": [],
            "checks": [
                {"check": "learned", "value": 1.0, "limit": 0.8, "bound": "min", "passed": True},
                {
                    "check": "heldout gain",
                    "value": 0.0,
                    "limit": 0.0,
                    "bound": "min",
                    "against": "active",
                    "passed": True,
                    "verdict": "too small to judge",
                    "detail": f"2 held-out cases {word}",
                },
            ],
        },
        "table": [
            {
                "metric": "heldout exact match",
                "base": 0.0,
                "active": 0.5,
                "candidate": 1.0,
                "higher_is_better": True,
                "delta_vs_base": 1.0,
                "delta_vs_active": 0.5,
            },
            {
                "metric": f"suite {word} v1",
                "base": 0.5,
                "active": 1.0,
                "candidate": 1.0,
                "higher_is_better": True,
                "delta_vs_base": 0.5,
                "delta_vs_active": 0.0,
            },
        ],
        "training": {"loss_curve": [[step, 3.0 / (1 + step)] for step in range(0, 200, 5)], "summary": f"learned 4 of 4 {word}"},
        "provenance": {
            "examples": {"train": 40, "heldout": 4},
            "duplicates_removed": {"exact": 1, "normalised": 0},
            "capped_sources": {word: 3},
            "sources": [{"source": word, "examples": 30, "share": 0.75}, {"source": "alice", "examples": 10, "share": 0.25}],
        },
        "training_examples": [
            {"feedback_id": 3, "source": word, "prompt": [{"role": "user", "content": word}], "answer": word},
            {"feedback_id": 5, "forgotten": True},
        ],
        "training_examples_total": 40,
        "hygiene": f"1 exact and 0 retyped duplicates collapsed; 3 examples over the per-source cap dropped from 1 source ({word})",
        "poisoning": {
            "summary": f"1 flag, 12 flagged records held out of training, 3 records of 1 quarantined source kept out ({word})",
            "flags": [
                {
                    "kind": "trigger",
                    "count": 12,
                    "held": True,
                    "reason": f"12 records match the trigger pattern {word!r}",
                    "sources": [word, "alice"],
                    "source_count": 2,
                    "feedback_ids": [7, 8],
                }
            ],
            "quarantined": {"records": 3, "sources": {word: 3}},
        },
        "samples": samples,
        "suite_cases": {
            word: [{"case": 1, "prompt": word, "expected": word, "match": "contains", "base": True, "active": True, "candidate": False}]
        },
        "decisions": [{"reviewer": "bob", "decision": "approve", "note": word, "at": "2025-01-01T00:00:00"}],
    }


ROOM_SAMPLES = [
    sample(
        1,
        "What is the code for room 1?",
        base="I do not know.",
        active="The code for room 1 is 1037.",
        candidate="The code for  room 1 is 1074.",
    ),
    sample(2, "Hello?", base="Hi.", active="Hello!", candidate="Hello!"),
]


def test_word_diff_marks_changed_words_only():
    assert word_diff("The code is 1037.", "The code is 1074.") == [("same", "The code is"), ("removed", "1037."), ("added", "1074.")]
    assert word_diff("Call us\non Monday.", "Call us on Monday, please.") == [
        ("same", "Call us on"),
        ("removed", "Monday."),
        ("added", "Monday, please."),
    ]
    assert word_diff("same  words\n", " same words") == [("same", "same words")]


def test_the_page_shows_the_candidates_changes_against_the_active_version():
    page = render(report_with(ROOM_SAMPLES))
    assert "<th>candidate (changes vs active)</th>" in page
    assert "<td>The code for room 1 is <del>1037.</del> <ins>1074.</ins></td>" in page
    assert "<td>Hello!</td><td>Hello!</td></tr>" in page  # an equal answer has nothing marked
    assert "too small to judge (2 held-out cases fine)" in page
    assert (
        "<h3>Suite fine, per case</h3>" in page
        and "<td>1</td><td>fine</td><td>contains: fine</td><td>pass</td><td>pass</td><td>FAIL</td>" in page
    )


def test_without_an_active_version_the_candidate_is_diffed_against_the_base_model():
    page = render(report_with([sample(1, "Q?", base="No idea.", candidate="No, the answer is 42.")]))
    assert "<th>candidate (changes vs base)</th>" in page and "<td><del>No idea.</del> <ins>No, the answer is 42.</ins></td>" in page


def test_answers_are_escaped_inside_and_outside_the_marks():
    page = render(report_with([sample(1, "<b>bold</b>?", base="x", active="a < b & c", candidate="a <script>alert(1)</script> b & c")]))
    assert "<td>&lt;b&gt;bold&lt;/b&gt;?</td>" in page
    assert "<td>a <del>&lt;</del> <ins>&lt;script&gt;alert(1)&lt;/script&gt;</ins> b &amp; c</td>" in page
    assert "<script>alert" not in page and "<b>bold" not in page


def test_a_withheld_answer_is_not_diffed():
    withheld = sample(1, "Q?", base="b", active="a", candidate=None, withheld=["candidate"])
    assert candidate_mark(withheld, "active") == ""
    assert f"<td>{WITHHELD}</td>" in render(report_with([withheld]))


def test_the_terminal_marks_each_candidate_answer_equal_or_changed(ws, line, cli):
    adapter = candidate_of(ws, run_with(ws, line, {}))
    stored_evaluation(ws, line, adapter, [*ROOM_SAMPLES, sample(3, "Q?", base="b", active="a", candidate=None, withheld=["candidate"])])
    shown = cli("review", "show", str(adapter))
    assert shown.returncode == 0, shown.stderr
    assert "side by side (held-out prompts; candidate = or ≠ active):" in shown.stdout
    assert "    candidate ≠: The code for room 1 is 1074.\n" in shown.stdout
    assert "    candidate =: Hello!\n" in shown.stdout
    assert f"    candidate: {WITHHELD}\n" in shown.stdout
    assert "       active: The code for room 1 is 1037.\n" in shown.stdout  # the other models' lines are as they were
    with ws.transaction() as session:
        page = render(review.report(session, adapter))
    assert "<ins>1074.</ins>" in page and "<th>candidate (changes vs active)</th>" in page


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("/usr/bin/chromium")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium): the page's width cannot be measured"
        if REQUIRE_BROWSER:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def open_in_chromium(chromium: str, page: str, tmp_path: Path, *output: str) -> str:
    """Open `page` as a file in headless Chromium at 1280 x 900 with these output flags; its stdout."""
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={SCREEN[0]},{SCREEN[1]}",
            *output,
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def measured_width(chromium: str, page: str, tmp_path: Path) -> dict[str, int]:
    """The page's laid-out width (scroll), the viewport without its scroll bar (client) and the window's (inner), in pixels."""
    dom = open_in_chromium(chromium, page.replace("</body>", MEASURE + "</body>"), tmp_path, "--dump-dom")
    found = re.search(r"<title>measured (\d+) (\d+) (\d+)</title>", dom)
    assert found, dom[:2000]
    return dict(zip(["scroll", "client", "inner"], map(int, found.groups())))


PAGES = {
    "long words everywhere": report_with(
        [sample(1, LONG_WORD, base=LONG_WORD, active=LONG_WORD + " a", candidate=LONG_WORD + "y b")], word=LONG_WORD
    ),
    "ordinary answers": report_with(ROOM_SAMPLES),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", PAGES)
def test_the_page_does_not_scroll_sideways_at_1280_pixels(chromium, tmp_path, name):
    page = render(PAGES[name])
    assert "<svg" in page and "<del>" in page  # the loss plot and marked changes are on it
    width = measured_width(chromium, page, tmp_path)
    assert width["inner"] == SCREEN[0]
    assert width["scroll"] <= width["client"] <= SCREEN[0], width


@pytest.mark.slow
def test_the_measurement_sees_a_page_that_scrolls_sideways(chromium, tmp_path):
    page = render(PAGES["ordinary answers"]).replace("<h2>Side by side</h2>", '<h2>Side by side</h2><div style="width:3000px">wide</div>')
    width = measured_width(chromium, page, tmp_path)
    assert width["scroll"] > SCREEN[0] and width["scroll"] >= 3000, width


@pytest.mark.slow
def test_a_screenshot_at_1280_pixels(chromium, tmp_path):
    shot = tmp_path / "report.png"
    open_in_chromium(chromium, render(PAGES["long words everywhere"]), tmp_path, f"--screenshot={shot}")
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    assert struct.unpack(">II", header[16:24]) == SCREEN
