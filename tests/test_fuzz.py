"""Hostile input, generated (hypothesis): the JSON reader, the feedback record parser and the JSONL import
either accept a value or refuse it with InvalidInput; nothing else escapes, and a refused import leaves
the database as it was. What is accepted is stored verbatim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapterctl import feedback, json_input
from adapterctl.db.models import AuditEvent, Feedback
from adapterctl.errors import InvalidInput
from adapterctl.feedback_io import import_feedback

FIELDS = feedback.RECORD_FIELDS  # every field a record may name
hostile_text = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=40) | st.sampled_from(
    ["", "\x00", "a\x00b", "\u202e", "\ud7ff", "\ufeff", "🙂" * 10, "'; DROP TABLE feedback; --", "x" * 70_000, "\r\n\t", "null"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
records = st.dictionaries(
    st.sampled_from(FIELDS) | hostile_text,
    json_values
    | st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "robot", ""]), "content": json_values})
    ),
    max_size=6,
)
fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(st.binary(max_size=200) | hostile_text.map(str.encode))
def test_the_json_reader_refuses_what_it_does_not_accept_with_invalid_input(raw):
    try:
        json_input.loads(raw)
    except InvalidInput:
        pass


@pytest.mark.parametrize(
    "text, named",
    [
        ('{"a": 1, "a": 2}', "appears twice"),
        ("[NaN]", "NaN is not a number"),
        ("[Infinity]", "Infinity"),
        ("[1e999]", "out of range"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("9" * 5000, "more than"),
        ('"\\ud800"', "half of a surrogate pair"),
        ('{"\\udfff": 1}', "half of a surrogate pair"),
        (b'"\xff"', "UTF-8"),
    ],
)
def test_json_edge_cases_are_named(text, named):
    with pytest.raises(InvalidInput, match=named):
        json_input.loads(text)


@fuzz
@given(records)
def test_the_record_parser_accepts_or_names_what_is_wrong(raw):
    try:
        record = feedback.parse_record(raw)
    except InvalidInput as exc:
        assert str(exc) and "\n" not in str(exc)[:200]
        return
    assert record.response == raw["response"] and record.content_hash  # accepted text is kept as given


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lines=st.lists(records.map(lambda r: json.dumps(r, ensure_ascii=False)) | hostile_text, min_size=1, max_size=6))
def test_an_import_of_hostile_lines_is_all_or_nothing(ws, line, tmp_path, lines):
    path = Path(tmp_path) / "hostile.jsonl"
    path.write_text("\n".join(text.replace("\n", " ").replace("\r", " ") for text in lines) + "\n", encoding="utf-8")
    before = counts(ws)
    try:
        report = import_feedback(ws.db, path, actor="tester", line="support-bot")
    except InvalidInput:
        assert counts(ws) == before  # nothing half-written
        return
    assert counts(ws)[0] == before[0] + report.imported


def counts(ws) -> tuple[int, int]:
    with ws.reading() as session:
        return session.scalar(select(func.count()).select_from(Feedback)), session.scalar(select(func.count()).select_from(AuditEvent))


def test_hostile_text_that_is_accepted_is_stored_and_read_back_verbatim(ws, line):
    texts = [
        "'; DROP TABLE feedback; --",
        "Robert'); DELETE FROM lines;--",
        "\u202eevil\u202c",
        "tab\tand\r\nnewline",
        "🙂 ünïcödé 中文",
        "\\x00 is not a NUL",
        "%s %(name)s {0}",
    ]
    ids = [ws.log_feedback(line=line, prompt=text, response=text, correction=text, source=f"user-{i}") for i, text in enumerate(texts)]
    with ws.reading() as session:
        stored = [session.get(Feedback, i) for i in ids]
    assert [(f.prompt[-1]["content"], f.response, f.correction) for f in stored] == [(t, t, t) for t in texts]
    with pytest.raises(InvalidInput, match="NUL"):
        ws.log_feedback(line=line, prompt="a\x00b", response="x", rating=1)
    with pytest.raises(InvalidInput, match="source contains control characters"):  # a source is an identifier: shown in reports
        ws.log_feedback(line=line, prompt="q", response="x", rating=1, source="\u202eevil")
