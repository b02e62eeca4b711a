"""Evaluation suites: validation that names the line and field, versions, match rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapterctl import lines, suites
from adapterctl.errors import InvalidInput
from tests.test_cli import one_line_error


def write(path, *records) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


GOOD = [
    {"prompt": "What is 2+2?", "expected": "4", "match": "contains"},
    {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}], "expected": "Paris."},
]


@pytest.mark.parametrize(
    "record, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ({"prompt": "q"}, "line 2: field 'expected' must be a non-empty string"),
        ({"prompt": "", "expected": "a"}, "line 2: prompt is empty"),
        ({"prompt": "q", "expected": "a", "match": "fuzzy"}, "line 2: field 'match' must be one of exact, normalised, contains, regex"),
        ({"prompt": "q", "expected": "(unclosed", "match": "regex"}, "line 2: field 'expected' is not a valid regular expression"),
        ({"prompt": "q", "expected": "a", "weight": 2}, "line 2: unknown field 'weight'"),
        ({"prompt": [{"role": "robot", "content": "hi"}], "expected": "a"}, "line 2: prompt[0].role 'robot'"),
        ('{"prompt": "q", "expected": "a", "expected": "b"}', "line 2: not valid JSON: key 'expected' appears twice"),
    ],
)
def test_a_bad_case_is_named_by_line_and_field(tmp_path, record, message):
    write(tmp_path / "suite.jsonl", GOOD[0], record)
    with pytest.raises(InvalidInput) as caught:
        suites.parse_cases(tmp_path / "suite.jsonl", kind="regression", default_match="normalised")
    assert str(caught.value).startswith("suite.jsonl " + message)


def test_a_bad_file_exits_2_and_stores_nothing(ready, tmp_path):
    path = write(tmp_path / "suite.jsonl", *GOOD, {"prompt": "q"})
    error = one_line_error(ready("eval", "suite", "add", "smoke", path, "--line", "support-bot"), 2)
    assert error.startswith("adapterctl: suite.jsonl line 3: field 'expected'")
    assert ready.json("eval", "suite", "list", "--line", "support-bot") == []


def test_unknown_line_empty_file_and_non_utf8_are_refused(ready, tmp_path):
    path = write(tmp_path / "suite.jsonl", *GOOD)
    assert "line 'nope' does not exist" in one_line_error(ready("eval", "suite", "add", "smoke", path, "--line", "nope"), 2)
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "holds no cases" in one_line_error(
        ready("eval", "suite", "add", "smoke", str(tmp_path / "empty.jsonl"), "--line", "support-bot"), 2
    )
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "expected": "x"}\n')
    assert "line 1: not valid UTF-8" in one_line_error(
        ready("eval", "suite", "add", "s", str(tmp_path / "latin1.jsonl"), "--line", "support-bot"), 2
    )


def test_changing_a_suite_makes_a_new_version_and_the_same_cases_do_not(ready, tmp_path):
    first = ready.json("eval", "suite", "add", "smoke", write(tmp_path / "a.jsonl", *GOOD), "--line", "support-bot")
    assert (first["version"], first["created"], first["cases"]) == (1, True, 2)
    again = ready.json("eval", "suite", "add", "smoke", write(tmp_path / "b.jsonl", *GOOD), "--line", "support-bot")
    assert (again["version"], again["created"]) == (1, False)
    changed = ready.json("eval", "suite", "add", "smoke", write(tmp_path / "c.jsonl", GOOD[0]), "--line", "support-bot")
    assert (changed["version"], changed["cases"]) == (2, 1)
    [listed] = ready.json("eval", "suite", "list", "--line", "support-bot")
    assert (listed["name"], listed["version"]) == ("smoke", 2)
    old = ready.json("eval", "suite", "show", "smoke", "--line", "support-bot", "--version", "1")
    assert old["cases"][1] == {"prompt": GOOD[1]["prompt"], "expected": "Paris.", "match": "normalised"}  # the default rule
    events = [e["action"] for e in ready.json("audit", "log")]
    assert events.count("suite.add") == 2


def test_the_reference_set_takes_texts_or_prompt_answer_pairs(ready, tmp_path):
    path = write(tmp_path / "ref.jsonl", {"text": "General knowledge."}, {"prompt": "Hi", "answer": "Hello."})
    added = ready.json("eval", "suite", "add", "reference", path, "--line", "support-bot")
    assert added["kind"] == "reference" and added["cases"] == 2
    bad = write(tmp_path / "bad.jsonl", {"text": "x", "prompt": "y"})
    assert "line 1: field 'text' must be a non-empty string, alone" in one_line_error(
        ready("eval", "suite", "add", "reference", bad, "--line", "support-bot"), 2
    )


@pytest.mark.parametrize(
    "answer, expected, rule, passed",
    [
        ("Paris.", "Paris.", "exact", True),
        ("paris", "Paris.", "exact", False),
        ("  PARIS!  ", "Paris.", "normalised", True),
        ("It is Paris, France.", "paris", "contains", True),
        ("It is Lyon.", "paris", "contains", False),
        ("The code is 1037.", r"\b1037\b", "regex", True),
        ("The code is 10370.", r"\b1037\b", "regex", False),
    ],
)
def test_match_rules(answer, expected, rule, passed):
    assert suites.passes(answer, {"expected": expected, "match": rule}) is passed


def test_parse_refuses_an_unknown_default_rule(tmp_path):
    with pytest.raises(InvalidInput, match="--match must be one of"):
        suites.parse_cases(tmp_path / "x.jsonl", kind="regression", default_match="fuzzy")


def test_a_case_the_chat_template_cannot_render_is_refused_before_it_can_fail_every_evaluation(ws, tiny_line, tmp_path):
    tool = {
        "prompt": [{"role": "user", "content": "Open it"}, {"role": "assistant", "content": "open()"}, {"role": "tool", "content": "{}"}],
        "expected": "Opened.",
    }
    cases = suites.parse_cases(Path(write(tmp_path / "suite.jsonl", GOOD[0], tool)), kind="regression", default_match="normalised")
    with (
        ws.transaction() as session,
        pytest.raises(InvalidInput, match=r"case 2: prompt\[2\]\.role 'tool' is not rendered by base model tiny's chat template"),
    ):
        suites.add_suite(session, line=tiny_line, name="smoke", cases=cases, kind="regression", actor="tester")
    with ws.reading() as session:
        assert suites.current_suites(session, lines.get_line(session, tiny_line).id) == []
