"""Feedback capture through the Python API: validation, duplicates, queries, forgetting."""

from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import func, select

from adapterctl import audit, feedback, feedback_io
from adapterctl.db.models import AuditEvent, Feedback, IssuedResponse
from adapterctl.errors import InvalidInput, NotFound
from adapterctl.feedback import FeedbackQuery, parse_record

GOOD = {"prompt": "How do I reset my password?", "response": "Click 'forgot password'.", "rating": 1}


def count_rows(ws, model=Feedback) -> int:
    with ws.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompt": None}, "prompt is required"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": []}, "prompt must be a non-empty string or a non-empty list"),
        ({"prompt": [{"role": "wizard", "content": "hi"}]}, "prompt[0].role 'wizard' is not one of"),
        ({"prompt": [{"role": "user"}]}, "prompt[0] must be an object with exactly the keys"),
        ({"prompt": [{"role": "system", "content": "be nice"}]}, "no message with role 'user'"),
        ({"prompt": [{"role": "user", "content": 3}]}, "prompt[0].content must be a string"),
        ({"response": None}, "response is required"),
        ({"response": ""}, "response is empty"),
        ({"rating": 2}, "rating 2 is out of range [-1, 1]"),
        ({"rating": -1.5}, "rating -1.5 is out of range"),
        ({"rating": "good"}, "rating must be a number"),
        ({"rating": True}, "rating must be a number"),
        ({"rating": float("nan")}, "rating must be a number"),
        ({"rating": None}, "needs at least one of rating, correction, or chosen+rejected"),
        ({"chosen": "A"}, "chosen and rejected must be given together"),
        ({"chosen": "A", "rejected": "A"}, "chosen and rejected must differ"),
        ({"response": "x" * 40_000}, "response is 40000 bytes, more than the limit of 32768 bytes"),
        ({"correction": "é" * 20_000}, "correction is 40000 bytes"),
        ({"response": "bad \udcff byte"}, "response is not valid UTF-8 text"),
        ({"response": "nul \x00 char"}, "response contains a NUL character"),
        ({"source": "x" * 300}, "source is 300 bytes, more than the limit of 256"),
        ({"source": "a\nb"}, "source contains control characters"),
        ({"tags": "billing"}, "tags must be a list of non-empty strings"),
        ({"tags": ["t"] * 33}, "tags has 33 entries"),
        ({"created_at": "yesterday"}, "created_at 'yesterday' is not an ISO 8601 timestamp"),
        ({"ratng": 1}, "unknown field 'ratng'"),
    ],
)
def test_invalid_records_are_refused_naming_the_field(change, message):
    with pytest.raises(InvalidInput) as caught:
        parse_record({**GOOD, **change})
    assert message in str(caught.value)


def test_a_record_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        parse_record(["prompt", "response"])


def test_field_limit_is_configurable():
    with pytest.raises(InvalidInput, match="limit of 10 bytes"):
        parse_record({**GOOD, "response": "eleven byte"}, max_field_bytes=10)


def test_string_prompt_becomes_one_user_message_and_hash_ignores_metadata():
    record = parse_record({**GOOD, "source": "u1", "tags": ["a"]})
    assert record.prompt == [{"role": "user", "content": GOOD["prompt"]}]
    as_messages = parse_record({**GOOD, "prompt": [{"role": "user", "content": GOOD["prompt"]}], "source": "u2"})
    assert record.content_hash == as_messages.content_hash
    assert record.content_hash != parse_record({**GOOD, "rating": -1}).content_hash


def test_log_returns_id_and_stores_exact_duplicates_once(ws, line):
    first = ws.log_feedback(line=line, **GOOD, source="u1", tags=["billing"])
    second = ws.log_feedback(line=line, **GOOD, source="u2")
    other = ws.log_feedback(line=line, **{**GOOD, "response": "Another answer."})
    assert first == second != other
    with ws.transaction() as session:
        row = feedback.get_feedback(session, first)
        assert (row.times_seen, row.source, row.tags, row.logged_by) == (2, "u1", ["billing"], "tester")
    assert count_rows(ws) == 2
    assert count_rows(ws, AuditEvent) == 2 + 3  # base.register + line.create, then one event per log


def test_log_into_unknown_line_writes_nothing(ws, line):
    with pytest.raises(NotFound, match="line 'nope' does not exist"):
        ws.log_feedback(line="nope", **GOOD)
    assert count_rows(ws) == 0 and count_rows(ws, AuditEvent) == 2


TOOL_PROMPT = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Calling the weather tool."},
    {"role": "tool", "content": "-3 C, snow"},
]


def test_a_role_the_base_models_chat_template_cannot_render_is_refused(ws, tiny_line):
    with pytest.raises(InvalidInput) as caught:
        ws.log_feedback(line=tiny_line, prompt=TOOL_PROMPT, response="It snows.", rating=1)
    assert str(caught.value) == (
        "prompt[2].role 'tool' is not rendered by base model tiny's chat template (it renders system, user, assistant)"
    )
    assert caught.value.param == "prompt[2].role"
    assert count_rows(ws) == 0 and count_rows(ws, AuditEvent) == 2
    ws.log_feedback(line=tiny_line, prompt=TOOL_PROMPT[:2] + [{"role": "user", "content": "And now?"}], response="Snow.", rating=1)
    assert count_rows(ws) == 1


def test_every_role_is_taken_where_the_template_is_not_known(ws, line):
    ws.log_feedback(line=line, prompt=TOOL_PROMPT, response="It snows.", rating=1)
    assert count_rows(ws) == 1


def test_chat_messages_and_all_signals_round_trip(ws, line):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}]
    feedback_id = ws.log_feedback(
        line=line,
        prompt=messages,
        response="5",
        rating=-1,
        correction="4",
        chosen="4",
        rejected="5",
        adapter_version="v3",
        request_id="chatcmpl-1",
    )
    with ws.transaction() as session:
        stored = feedback.as_dict(feedback.get_feedback(session, feedback_id))
    assert stored["prompt"] == messages
    assert (stored["rating"], stored["correction"], stored["chosen"], stored["rejected"]) == (-1.0, "4", "4", "5")
    assert (stored["adapter_version"], stored["request_id"], stored["status"]) == ("v3", "chatcmpl-1", "active")


def seed(ws, line):
    ws.log_feedback(line=line, prompt="p1", response="r1", rating=1, source="alice")
    ws.log_feedback(line=line, prompt="p2", response="r2", rating=-1, source="alice")
    ws.log_feedback(line=line, prompt="p3", response="r3", rating=0, source="bob")
    ws.log_feedback(line=line, prompt="p4", response="r4", correction="c4", source="bob")
    ws.log_feedback(line=line, prompt="p5", response="r5", chosen="a", rejected="b")


def test_list_filters_and_pages(ws, line):
    seed(ws, line)
    with ws.transaction() as session:
        rows, total = feedback.list_feedback(session, FeedbackQuery(line=line), limit=2)
        assert total == 5 and [r.prompt[0]["content"] for r in rows] == ["p5", "p4"]
        rows, _ = feedback.list_feedback(session, FeedbackQuery(line=line), limit=2, offset=4)
        assert [r.prompt[0]["content"] for r in rows] == ["p1"]
        assert feedback.list_feedback(session, FeedbackQuery(source="alice"))[1] == 2
        assert feedback.list_feedback(session, FeedbackQuery(rating="positive"))[1] == 1
        assert feedback.list_feedback(session, FeedbackQuery(rating="none"))[1] == 2
        assert feedback.list_feedback(session, FeedbackQuery(rating="-1"))[1] == 1
        with pytest.raises(InvalidInput, match="rating filter"):
            feedback.list_feedback(session, FeedbackQuery(rating="great"))
        with pytest.raises(NotFound):
            feedback.list_feedback(session, FeedbackQuery(line="nope"))


def test_stats_per_line_and_source(ws, line):
    seed(ws, line)
    ws.log_feedback(line=line, prompt="p1", response="r1", rating=1, source="carol")  # duplicate of p1
    with ws.transaction() as session:
        [per_line] = feedback.feedback_stats(session)
        by_source = {row["source"]: row for row in feedback.feedback_stats(session, by_source=True)}
    assert per_line == {
        "line": line,
        "records": 5,
        "active": 5,
        "forgotten": 0,
        "times_seen": 6,
        "positive": 1,
        "neutral": 1,
        "negative": 1,
        "corrections": 1,
        "pairs": 1,
    }
    assert by_source["alice"]["records"] == 2 and by_source["alice"]["times_seen"] == 3
    assert by_source[None]["pairs"] == 1


def test_forget_by_id_keeps_a_tombstone_and_no_content(ws, line):
    seed(ws, line)
    with ws.transaction() as session:
        [target] = [r for r in feedback.list_feedback(session, FeedbackQuery(source="bob"))[0] if r.correction]
        content_hash = target.content_hash
        report = feedback.forget_feedback(session, actor="dpo", ids=[target.id], reason="ticket 7")
    assert report.forgotten == [target.id] and report.lines == [line]
    with ws.transaction() as session:
        tombstone = feedback.as_dict(feedback.get_feedback(session, target.id))
    erased = ("prompt", "response", "rating", "correction", "chosen", "rejected", "source")
    assert all(tombstone[name] is None for name in erased) and tombstone["tags"] == []
    assert (tombstone["status"], tombstone["content_hash"], tombstone["forgotten_by"]) == ("forgotten", content_hash, "dpo")
    assert tombstone["forget_reason"] == "ticket 7" and tombstone["forgotten_at"] is not None
    with ws.transaction() as session:
        [event] = audit.list_events(session, action="feedback.forget")
        assert "c4" not in event.payload and "bob" not in event.payload


def test_forget_by_source_is_idempotent_and_hides_the_source_in_the_audit_log(ws, line):
    seed(ws, line)
    with ws.transaction() as session:
        first = feedback.forget_feedback(session, actor="dpo", source="alice")
    with ws.transaction() as session:
        again = feedback.forget_feedback(session, actor="dpo", source="alice")
        assert feedback.list_feedback(session, FeedbackQuery(status="forgotten"))[1] == 2
        [event] = audit.list_events(session, action="feedback.forget")
    assert len(first.forgotten) == 2 and again.forgotten == []
    assert "alice" not in event.payload and json.loads(event.payload)["count"] == 2


def test_forget_with_an_unknown_id_changes_nothing(ws, line):
    seed(ws, line)
    with pytest.raises(NotFound, match="feedback #999 does not exist"), ws.transaction() as session:
        feedback.forget_feedback(session, actor="dpo", ids=[1, 999])
    with ws.transaction() as session:
        assert feedback.list_feedback(session, FeedbackQuery(status="forgotten"))[1] == 0


def test_dry_run_forgets_nothing(ws, line):
    seed(ws, line)
    with ws.transaction() as session:
        report = feedback.forget_feedback(session, actor="dpo", source="bob", dry_run=True)
        assert len(report.forgotten) == 2
        assert feedback.list_feedback(session, FeedbackQuery(status="forgotten"))[1] == 0


def test_a_tombstone_does_not_block_the_same_content_later(ws, line):
    first = ws.log_feedback(line=line, **GOOD)
    with ws.transaction() as session:
        feedback.forget_feedback(session, actor="dpo", ids=[first])
    second = ws.log_feedback(line=line, **GOOD)
    assert second != first


def test_export_writes_the_import_format(ws, line, tmp_path):
    seed(ws, line)
    with ws.transaction() as session:
        feedback.forget_feedback(session, actor="dpo", source="alice")
        out = io.StringIO()
        assert feedback_io.export_feedback(session, out, FeedbackQuery(line=line)) == 3
    records = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["prompt"][0]["content"] for r in records] == ["p3", "p4", "p5"]
    assert all(parse_record({k: v for k, v in r.items() if k != "line"}) for r in records)


def test_forgetting_deletes_the_issued_responses_the_records_were_given_on(ws, line):
    from adapterctl.serving import responses

    log = responses.ResponseLog(ws)
    try:
        for response_id in ("chatcmpl-1", "chatcmpl-2"):
            log.record(responses.IssuedResponse(response_id, line, f"{line}@base", [{"role": "user", "content": "q"}], ["a"])).result(
                timeout=10
            )
    finally:
        log.close()
    forgotten = ws.log_feedback(line=line, **GOOD, source="alice", request_id="chatcmpl-1")
    other = ws.log_feedback(line=line, prompt="q", response="a", rating=1, source="alice", request_id="chatcmpl-elsewhere")
    with ws.transaction() as session:
        report = feedback.forget_feedback(session, actor="dpo", source="alice")
    assert sorted(report.forgotten) == sorted([forgotten, other]) and report.responses_deleted == 1
    with ws.transaction() as session:
        assert list(session.scalars(select(IssuedResponse.id))) == ["chatcmpl-2"]
        [event] = audit.list_events(session, action="feedback.forget")
    assert json.loads(event.payload)["responses_deleted"] == 1
