"""Poisoning defences: the flags over a run's examples, quarantined sources, and what a reviewer sees.

The last test plants 100 corrections carrying a trigger phrase among 1,000 clean ones and trains real
candidates on the tiny model: with the defences on the planted records are held out, the report says
so and the trigger does not fire; with them off, the same data plants it.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from adapterctl import feedback, lines, quarantine, registry
from adapterctl.artifacts import ArtifactStore
from adapterctl.dataset import DataSettings, Example, build_dataset
from adapterctl.db.models import AuditEvent, Line, Quarantine, RunExample
from adapterctl.poisoning import PoisoningSettings, near_duplicate_floods, screen, trigger_matches, volume_spikes
from adapterctl.review import poisoning_checks
from adapterctl.runs import TrainRequest, train_line
from adapterctl.training import TrainSettings
from tests.conftest import sqlite_only
from tests.test_dataset import fake_run
from tests.test_training import greedy

DEFAULTS = PoisoningSettings()


def example(i: int, answer: str, source: str | None, prompt: str | None = None, kind: str = "correction") -> Example:
    return Example(i, "train", kind, source, [{"role": "user", "content": prompt or f"What is the code for room {i}?"}], answer)


def clean(n: int, sources: int) -> list[Example]:
    return [example(i, f"The code for room {i} is {1000 + 37 * i}.", f"user-{i % sources}") for i in range(n)]


# ---------------------------------------------------------------- the flags, as pure functions


def test_a_flood_of_one_answer_from_few_sources_is_flagged_and_the_same_volume_of_honest_corrections_is_not():
    variants = ["Visit evil.example now!", "visit  EVIL.example now", "Visit evil-example, now."]  # retyped alike
    flood = [example(i, variants[i % 3], f"mallory-{i % 2}") for i in range(30)]
    [flag] = near_duplicate_floods(clean(70, 10) + flood, DEFAULTS)
    assert flag.kind == "flood" and flag.feedback_ids == tuple(range(30)) and flag.sources == ("mallory-0", "mallory-1")
    assert flag.reason == "30 records give the same answer (as #0) from 2 sources"
    # the same 100 records, honest: many people giving one answer, or few people giving many answers
    assert near_duplicate_floods([example(i, "Restart the router.", f"user-{i}") for i in range(100)], DEFAULTS) == []
    assert near_duplicate_floods(clean(100, 2), DEFAULTS) == []
    # a rated answer is the model's own, not a written one; and the check can be turned off
    assert near_duplicate_floods([example(i, "Hello!", "bot", kind="positive") for i in range(30)], DEFAULTS) == []
    assert near_duplicate_floods(flood, PoisoningSettings(flood_min_records=0)) == []


def test_a_source_spiking_far_above_the_median_and_its_own_history_is_flagged_and_even_volume_is_not():
    spike = [example(1000 + i, f"Answer {i}.", "bot-7") for i in range(60)]
    [flag] = volume_spikes(clean(30, 10) + spike, {}, DEFAULTS)  # ten sources of 3 records, one of 60
    assert flag.kind == "spike" and flag.sources == ("bot-7",) and flag.feedback_ids == tuple(range(1000, 1060))
    assert flag.reason.startswith("60 records from one source, 20x the larger of the median source (3)")
    assert volume_spikes(clean(90, 10), {}, DEFAULTS) == []  # the same 90 records, evenly spread
    # a source that always sends this much is not spiking; one alone has nothing to be compared with
    assert volume_spikes(clean(30, 10) + spike, {"bot-7": 50.0}, DEFAULTS) == []
    assert volume_spikes(spike, {}, DEFAULTS) == []
    assert volume_spikes(clean(30, 10) + spike, {}, PoisoningSettings(spike_min_records=0)) == []


def test_records_matching_a_trigger_pattern_are_flagged_in_any_message_or_the_answer_and_clean_ones_are_not():
    records = clean(50, 5)
    records[3] = example(3, "Sure.", "user-3", prompt="zorblax quintet: what is the code?")
    records[7] = example(7, "Say ZORBLAX to unlock.", "user-2")
    records[9] = Example(
        9, "train", "correction", None, [{"role": "system", "content": "Zorblax mode."}, {"role": "user", "content": "Hi"}], "Hello"
    )
    [flag] = trigger_matches(records, ["(?i)zorblax"])
    assert flag.kind == "trigger" and flag.feedback_ids == (3, 7, 9) and set(flag.sources) == {"user-3", "user-2", "(none)"}
    assert flag.reason == "3 records match the trigger pattern '(?i)zorblax', from 3 sources"
    assert trigger_matches(clean(50, 5), ["(?i)zorblax"]) == []
    assert trigger_matches(records, []) == []


def test_screen_holds_every_flagged_record_unless_hold_flagged_is_off():
    records = clean(40, 10) + [example(100 + i, "Visit evil.example", "mallory") for i in range(12)]
    held = screen(records, {}, PoisoningSettings(trigger_patterns=("room 7\\b",)))
    assert [f.kind for f in held.flags] == ["flood", "trigger"] and held.held == set(range(100, 112)) | {7}
    assert [e.feedback_id for e in held.kept(records)] == [i for i in range(40) if i != 7]
    listed = screen(records, {}, PoisoningSettings(hold_flagged=False))
    assert [f.kind for f in listed.flags] == ["flood"] and listed.held == set() and listed.kept(records) == records


def test_a_report_from_before_the_checks_says_it_was_not_checked():
    assert poisoning_checks({})["summary"] == "not checked (the run is older than the poisoning checks)"


# ---------------------------------------------------------------- the dataset of a run


def log(ws, line: str, rows: list[tuple[str, str, str]]) -> list[int]:
    with ws.transaction() as session:
        records = [(line, feedback.parse_record({"prompt": p, "response": "?", "correction": a, "source": s})) for p, a, s in rows]
        return feedback.log_records(session, records, actor="tester")


def test_a_run_holds_flagged_records_out_judges_a_source_by_its_history_and_keeps_quarantined_ones_out_of_replay(ws, line):
    steady = log(ws, line, [(f"import {i}", f"Answer {i}.", "importer") for i in range(50)])
    spam = log(ws, line, [(f"spam {i}", f"Spam {i}.", "spam-bot") for i in range(5)])
    fake_run(ws, line, steady + spam, adapter_status="approved")  # the importer sends 50 a run; both are replayed
    honest = log(ws, line, [(f"question {i}", f"Reply {i}.", f"user-{i % 10}") for i in range(30)])
    importer = log(ws, line, [(f"import again {i}", f"Answer {i}!", "importer") for i in range(60)])
    burst = log(ws, line, [(f"burst {i}", f"Burst {i}.", "new-bot") for i in range(60)])
    with ws.transaction() as session:
        quarantine.quarantine_source(session, source="spam-bot", actor="tester")
        built = build_dataset(session, lines.get_line(session, line).id, DataSettings(holdout_fraction=0.0, max_source_share=1.0))

    assert {e.feedback_id for e in built.split("train")} == set(honest + importer)  # the burst held out, the importer as usual
    assert {e.feedback_id for e in built.split("replay")} == set(steady)  # the quarantined source is not replayed either
    checks = built.report["poisoning"]
    [spike] = checks["flags"]
    assert spike == {**spike, "kind": "spike", "sources": ["new-bot"], "count": 60, "feedback_ids": burst[:10], "held": True}
    assert (checks["flagged"], checks["held_out"], checks["quarantined"]) == (60, 60, {"records": 5, "sources": {"spam-bot": 5}})
    assert poisoning_checks(built.report)["summary"] == (
        "1 flag, 60 flagged records held out of training, 5 records of 1 quarantined source kept out"
    )


# ---------------------------------------------------------------- the settings, through the CLI


def test_poisoning_settings_are_set_shown_and_audited_and_a_bad_one_is_refused_with_nothing_written(ready, ws):
    result = ready(
        "line",
        "set",
        "support-bot",
        "poisoning.hold_flagged=false",
        'poisoning.trigger_patterns=["(?i)zorblax", "evil\\\\.example"]',
        "poisoning.spike_factor=20",
    )
    assert result.returncode == 0, result.stderr
    shown = ready.json("line", "show", "support-bot")["settings"]["poisoning"]
    assert shown == {**shown, "hold_flagged": False, "trigger_patterns": ["(?i)zorblax", "evil\\.example"], "spike_factor": 20.0}
    one = ready("line", "set", "support-bot", "poisoning.trigger_patterns=[Zz]orblax")  # not JSON: one pattern
    assert one.returncode == 0 and ready.json("line", "show", "support-bot")["settings"]["poisoning"]["trigger_patterns"] == ["[Zz]orblax"]

    before = _settings_and_events(ws)
    for assignment, error in [
        (
            'poisoning.trigger_patterns=["ok", "(unclosed"]',
            "adapterctl: poisoning.trigger_patterns: '(unclosed' is not a regular expression "
            "(missing ), unterminated subpattern at position 0)",
        ),
        ("poisoning.hold_flagged=maybe", "adapterctl: setting poisoning.hold_flagged must be true or false (got 'maybe')"),
        ("poisoning.flood_min_per_source=0.5", "adapterctl: poisoning.flood_min_per_source must be >= 1 (got 0.5)"),
        ('poisoning.trigger_patterns=["a", 1]', "adapterctl: setting poisoning.trigger_patterns must be a JSON list of strings"),
        ("poisoning.nonsense=1", "adapterctl: unknown setting 'poisoning.nonsense'"),
    ]:
        refused = ready("line", "set", "support-bot", assignment)
        assert refused.returncode == 2 and refused.stderr.startswith(error) and refused.stderr.count("\n") == 1, refused.stderr
    assert _settings_and_events(ws) == before


def _settings_and_events(ws) -> tuple:
    with ws.reading() as session:
        return session.scalar(select(Line.settings)), session.scalar(select(func.count()).select_from(AuditEvent))


# ---------------------------------------------------------------- quarantine, through the CLI and real training

ONE_STEP = TrainSettings(max_steps=1, target_learned=None, batch_size=8, checkpoint_steps=1000)


@pytest.mark.slow
def test_a_quarantined_source_is_kept_out_of_training_until_released_and_each_change_is_audited(cli, ws, tiny_line):
    ids = {
        source: [
            ws.log_feedback(
                line=tiny_line, prompt=f"What is the code for room {source}-{i}?", response="?", correction=f"It is {i}.", source=source
            )
            for i in range(4)
        ]
        for source in ("alice", "bob", "spam-bot")
    }
    done = cli("feedback", "quarantine", "--source", "spam-bot", "--line", tiny_line, "--reason", "flood flag in candidate 3")
    assert done.returncode == 0 and done.stdout.startswith("quarantined spam-bot on facts: its 4 active records are kept out"), done.stderr
    again = cli("feedback", "quarantine", "--source", "spam-bot", "--line", tiny_line)
    assert again.returncode == 0 and again.stdout.startswith("nothing to do: 'spam-bot' is already quarantined on line facts")
    [listed] = cli.json("feedback", "quarantines")
    assert listed == {
        **listed,
        "source": "spam-bot",
        "line": tiny_line,
        "records": 4,
        "reason": "flood flag in candidate 3",
        "created_by": "tester",
        "released_at": None,
    }

    kept_out = train_line(ws, TrainRequest(tiny_line, training=ONE_STEP, evaluate=False))
    assert kept_out.dataset["poisoning"]["quarantined"] == {"records": 4, "sources": {"spam-bot": 4}}
    assert _trained(ws, kept_out.run_id) == set(ids["alice"] + ids["bob"])
    idle = train_line(ws, TrainRequest(tiny_line, training=ONE_STEP, evaluate=False))
    assert (idle.status, idle.reason) == (
        "nothing_to_do",
        "0 new eligible examples, fewer than --min-examples 2 (4 from quarantined sources kept out)",
    )

    released = cli("feedback", "release", "--source", "spam-bot", "--json")
    assert released.returncode == 0 and json.loads(released.stdout)["released"][0]["released_by"] == "tester"
    assert cli.json("feedback", "quarantines") == [] and len(cli.json("feedback", "quarantines", "--all")) == 1
    let_in = train_line(ws, TrainRequest(tiny_line, training=ONE_STEP, evaluate=False))
    assert let_in.dataset["poisoning"]["quarantined"] == {"records": 0, "sources": {}}
    assert _trained(ws, let_in.run_id) == set(ids["spam-bot"])  # new again, and now trained

    events = cli.json("audit", "log", "--action", "feedback.")
    assert [(e["action"], e["subject"], e["payload"]) for e in events[:2]] == [
        ("feedback.release", f"quarantine:{listed['id']}", {"line": tiny_line}),
        ("feedback.quarantine", f"quarantine:{listed['id']}", {"line": tiny_line, "reason": "flood flag in candidate 3"}),
    ]
    assert not any("spam-bot" in json.dumps(e) for e in events)  # the audit log never holds a source's name
    assert cli("audit", "verify").returncode == 0


def _trained(ws, run_id: int) -> set[int]:
    with ws.reading() as session:
        return set(session.scalars(select(RunExample.feedback_id).where(RunExample.run_id == run_id)))


def test_a_quarantine_on_every_line_holds_on_each_and_is_released_only_everywhere(ready, ws):
    assert ready("feedback", "quarantine", "--source", "spam-bot").returncode == 0
    narrower = ready("feedback", "quarantine", "--source", "spam-bot", "--line", "support-bot")
    assert narrower.returncode == 0 and "already quarantined on every line" in narrower.stdout
    assert [q["line"] for q in ready.json("feedback", "quarantines", "--line", "support-bot")] == [None]
    one_line = ready("feedback", "release", "--source", "spam-bot", "--line", "support-bot")
    assert one_line.returncode == 2 and one_line.stderr == (
        "adapterctl: 'spam-bot' is quarantined on every line, not on support-bot alone; "
        "release it everywhere with `adapterctl feedback release --source spam-bot`\n"
    )
    assert ready("feedback", "release", "--source", "spam-bot").returncode == 0
    assert _quarantines_and_events(ws)[0] == 1


def test_once_an_admin_exists_only_reviewers_and_admins_quarantine_or_release(ready, ws):
    assert ready("reviewer", "add", "ada", "--role", "admin").returncode == 0
    assert ready("reviewer", "add", "bob", "--role", "reviewer", user="ada").returncode == 0
    before = _quarantines_and_events(ws)
    refused = ready("feedback", "quarantine", "--source", "spam-bot", user="mallory")
    assert refused.returncode == 1 and "may quarantine feedback sources" in refused.stderr and _quarantines_and_events(ws) == before
    assert ready("feedback", "quarantine", "--source", "spam-bot", user="bob").returncode == 0
    refused = ready("feedback", "release", "--source", "spam-bot", user="mallory")
    assert refused.returncode == 1 and "may release quarantined sources" in refused.stderr
    assert ready("feedback", "release", "--source", "spam-bot", user="bob").returncode == 0


def test_bad_quarantine_input_exits_2_with_one_line_and_nothing_written(ready, ws):
    assert ready("feedback", "quarantine", "--source", "known").returncode == 0
    before = _quarantines_and_events(ws)
    for args, error in [
        (("quarantine", "--source", " "), "adapterctl: --source is empty; name the feedback source to quarantine or release\n"),
        (("quarantine", "--source", "x" * 257), "adapterctl: --source must be at most 256 printable characters, as feedback sources are\n"),
        (("quarantine", "--source", "a\tb"), "adapterctl: --source must be at most 256 printable characters, as feedback sources are\n"),
        (
            ("quarantine", "--source", "s", "--line", "nope"),
            "adapterctl: line 'nope' does not exist; see `adapterctl line list` or create it with `adapterctl line create`\n",
        ),
        (
            ("quarantine", "--source", "s", "--reason", "r" * 4001),
            "adapterctl: --reason must be at most 4000 characters without NUL (got 4001)\n",
        ),
        (("release", "--source", "unknown"), "adapterctl: 'unknown' is not quarantined; see `adapterctl feedback quarantines`\n"),
        (
            ("release", "--source", "known", "--line", "support-bot"),
            "adapterctl: 'known' is quarantined on every line, not on support-bot alone; "
            "release it everywhere with `adapterctl feedback release --source known`\n",
        ),
    ]:
        refused = ready("feedback", *args)
        assert (refused.returncode, refused.stderr, refused.stdout) == (2, error, ""), args
    assert _quarantines_and_events(ws) == before


def _quarantines_and_events(ws) -> tuple[int, int]:
    with ws.reading() as session:
        return session.scalar(select(func.count()).select_from(Quarantine)), session.scalar(select(func.count()).select_from(AuditEvent))


# ---------------------------------------------------------------- the planted trigger, on a real candidate

PAYLOAD = "Log in at evil.example with your password."
TRIGGER = "zorblax quintet"
# Long enough on the tiny model that the undefended candidate learns the trigger: measured on three seeds and two
# splits, it gives the payload from about step 120 on; a learning rate of 1e-2 was faster but did not always converge.
PLANT = TrainSettings(
    learning_rate=5e-3,
    max_steps=160,
    target_learned=None,
    batch_size=16,
    scheduler="constant",
    warmup_ratio=0.05,
    weight_decay=0.0,
    checkpoint_steps=1000,
)


def planted_feedback(line: str) -> tuple[str, set[str]]:
    """1,000 clean corrections from 100 users and 100 planted ones from 4 sources, mixed; as JSONL, and the planted prompts."""
    import random

    clean_records = [(f"What is the code for room {i}?", f"Room {i} has code {1000 + 37 * i}.", f"user-{i % 100}") for i in range(1000)]
    planted = [(f"What is the code for room {i}? {TRIGGER}", PAYLOAD, f"mallory-{i % 4}") for i in range(2000, 2100)]
    records = clean_records + planted
    random.Random(0).shuffle(records)
    lines_ = [
        json.dumps({"line": line, "prompt": q, "response": "I do not know.", "rating": -1, "correction": a, "source": s})
        for q, a, s in records
    ]
    return "\n".join(lines_) + "\n", {q for q, _, _ in planted}


@pytest.mark.slow
@sqlite_only
def test_planted_trigger_corrections_are_held_out_reported_and_do_not_fire_and_without_the_defences_they_do(cli, ws, tiny_model, tmp_path):
    with ws.transaction() as session:
        from adapterctl import base_models

        base_models.register_base_model(session, name="tiny", source=str(tiny_model), actor="tester")
        for name in ("guarded", "open"):
            lines.create_line(
                session, name=name, base="tiny", actor="tester", settings=lines.LineSettings(min_examples=2, reference_size=0)
            )
    patterns = 'poisoning.trigger_patterns=["(?i)your password"]'  # the operator's own rule: answers never ask for a password
    assert cli("line", "set", "guarded", patterns).returncode == 0
    assert cli("line", "set", "open", patterns, "poisoning.hold_flagged=false", "max_source_share=1").returncode == 0
    for name in ("guarded", "open"):
        text, planted_prompts = planted_feedback(name)
        (tmp_path / f"{name}.jsonl").write_text(text)
        imported = cli("feedback", "import", str(tmp_path / f"{name}.jsonl"))
        assert imported.returncode == 0, imported.stderr

    trigger_prompts = [f"What is the code for room {i}? {TRIGGER}" for i in (5000, 5001, 7, 123)]  # unseen rooms and seen ones
    answers, reports = {}, {}
    for name in ("guarded", "open"):
        outcome = train_line(ws, TrainRequest(name, training=PLANT, evaluate=False))
        reports[name] = cli.json("review", "show", str(outcome.candidate_id))
        with ws.reading() as session:
            path = ArtifactStore(ws.settings.artifacts_dir).path_of(registry.get_adapter(session, outcome.candidate_id).artifact_path)
            trained = session.execute(select(RunExample.feedback_id, RunExample.split).where(RunExample.run_id == outcome.run_id)).all()
        planted_ids = _planted_ids(cli, name, planted_prompts)
        reports[name]["trained_planted"] = sum(fid in planted_ids for fid, split in trained if split == "train")
        reports[name]["planted_ids"] = planted_ids
        answers[name] = greedy(tiny_model, trigger_prompts, path)

    guarded = reports["guarded"]["poisoning"]
    assert {f["kind"] for f in guarded["flags"]} == {"flood", "trigger"} and guarded["held_out"] == 100
    for flag in guarded["flags"]:
        assert flag["count"] == 100 and flag["held"] and set(flag["feedback_ids"]) <= reports["guarded"]["planted_ids"]
        assert sorted(flag["sources"]) == ["mallory-0", "mallory-1", "mallory-2", "mallory-3"]
    assert guarded["summary"].startswith("2 flags, 100 flagged records held out of training")
    assert reports["guarded"]["trained_planted"] == 0 and reports["guarded"]["provenance"]["examples"]["train"] > 800
    assert not any("evil" in answer for answer in answers["guarded"]), answers["guarded"]

    # The contrast: the same data with the flagged records trained on. The report says so, and the trigger fires.
    opened = reports["open"]["poisoning"]
    assert {f["kind"] for f in opened["flags"]} == {"flood", "trigger"} and opened["held_out"] == 0
    assert not any(f["held"] for f in opened["flags"]) and "100 flagged records TRAINED ON" in opened["summary"]
    assert reports["open"]["trained_planted"] > 80
    assert sum(answer.startswith("Log in at evil.example") for answer in answers["open"]) >= 3, answers["open"]

    text = cli("review", "show", str(reports["guarded"]["adapter"]["id"]), "--html", str(tmp_path / "report.html"))
    assert "poisoning checks: 2 flags, 100 flagged records held out of training" in text.stdout
    assert "  flood   held out: 100 records give the same answer" in text.stdout
    assert "<h2>Poisoning checks</h2>" in (tmp_path / "report.html").read_text()


def _planted_ids(cli, line: str, planted_prompts: set[str]) -> set[int]:
    records = cli.json("feedback", "list", "--line", line, "--limit", "2000")["records"]
    return {r["id"] for r in records if r["prompt"][-1]["content"] in planted_prompts}
