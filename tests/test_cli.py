"""The real `adapterctl` in a subprocess: exit codes, one-line errors, `--json` output."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_model_dir


def test_base_register_and_line_create(cli, tmp_path):
    model = write_model_dir(tmp_path / "model")
    registered = cli.json("base", "register", "tiny", str(model))
    assert registered["files"].keys() == {"config.json", "model.safetensors", "tokenizer.json"}
    assert registered["architecture"] == "LlamaForCausalLM" and registered["source_kind"] == "local"
    created = cli.json("line", "create", "support-bot", "--base", "tiny", "--approvals", "2", "--target-modules", "q_proj,v_proj")
    assert created["settings"]["approvals_required"] == 2 and created["settings"]["target_modules"] == ["q_proj", "v_proj"]
    assert [line["name"] for line in cli.json("line", "list")] == ["support-bot"]


def one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_feedback_and_audit_commands_with_json_output(ready):
    cli = ready
    logged = cli.json(
        "feedback",
        "log",
        "--line",
        "support-bot",
        "--prompt",
        "hi",
        "--response",
        "hello",
        "--rating",
        "1",
        "--source",
        "u1",
        "--tag",
        "a",
        "--tag",
        "b",
    )
    again = cli.json("feedback", "log", "--line", "support-bot", "--prompt", "hi", "--response", "hello", "--rating", "1")
    assert logged["id"] == again["id"] and (logged["duplicate"], again["times_seen"]) == (False, 2)
    shown = cli.json("feedback", "show", str(logged["id"]))
    assert shown["tags"] == ["a", "b"] and shown["logged_by"] == "tester"
    listing = cli.json("feedback", "list", "--line", "support-bot", "--since", "1h")
    assert listing["total"] == 1 and listing["records"][0]["id"] == logged["id"]
    [stats] = cli.json("feedback", "stats")
    assert (stats["records"], stats["times_seen"], stats["positive"]) == (1, 2, 1)
    events = cli.json("audit", "log")
    assert [e["action"] for e in events[:3]] == ["feedback.log", "feedback.log", "line.create"]
    assert events[0]["actor"] == "tester" and events[0]["payload"]["duplicate"] is True
    verified = cli.json("audit", "verify")
    assert verified["ok"] and verified["events"] == len(events)
    assert cli.json("base", "show", "tiny")["name"] == "tiny"


def test_import_export_and_forget_through_the_cli(ready, tmp_path):
    cli = ready
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "response": "r", "rating": 1, "source": "alice" if i % 2 else "bob"}) + "\n" for i in range(6)
        )
    )
    report = cli.json("feedback", "import", str(path), "--line", "support-bot")
    assert (report["imported"], report["duplicates"]) == (6, 0)
    exported = tmp_path / "out.jsonl"
    result = cli("feedback", "export", "--line", "support-bot", "--output", str(exported))
    assert result.returncode == 0 and "exported 6 records" in result.stderr
    assert len(exported.read_text().splitlines()) == 6
    dry = cli.json("feedback", "forget", "--source", "alice", "--dry-run")
    assert len(dry["forgotten"]) == 3 and dry["dry_run"]
    done = cli("feedback", "forget", "--source", "alice", "--reason", "GDPR-42")
    assert done.returncode == 0 and "forgot 3 feedback records on support-bot" in done.stdout
    assert cli.json("feedback", "list", "--status", "forgotten")["total"] == 3
    assert cli("feedback", "forget", "--source", "alice").stdout.startswith("nothing to forget")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["feedback", "log", "--line", "nope", "--prompt", "p", "--response", "r", "--rating", "1"], 2, "line 'nope' does not exist"),
        (
            ["feedback", "log", "--line", "support-bot", "--prompt", "p", "--response", "r", "--rating", "3"],
            2,
            "rating 3.0 is out of range",
        ),
        (["feedback", "log", "--line", "support-bot", "--prompt", "p", "--response", "r"], 2, "needs at least one of rating"),
        (
            ["feedback", "log", "--line", "support-bot", "--messages", "[{", "--response", "r", "--rating", "1"],
            2,
            "--messages is not valid JSON",
        ),
        (
            ["feedback", "log", "--line", "support-bot", "--response", "r", "--rating", "1"],
            2,
            "give exactly one of --prompt and --messages",
        ),
        (["feedback", "show", "999"], 2, "feedback #999 does not exist"),
        (["feedback", "forget", "--id", "999"], 2, "feedback #999 does not exist; nothing was forgotten"),
        (["line", "create", "../escape", "--base", "tiny"], 2, "invalid line name '../escape'"),
        (["line", "create", "support-bot", "--base", "tiny"], 2, "line 'support-bot' exists already"),
        (
            ["line", "create", "x", "--base", "tiny", "--lora-rank", "0", "--max-source-share", "2"],
            2,
            "lora_rank must be between 1 and 1024 (got 0); max_source_share",
        ),
        (["line", "create", "x", "--base", "nope"], 2, "base model 'nope' is not registered"),
        (["base", "register", "tiny2", "/does/not/exist"], 2, "is neither a model directory nor a hub id"),
        (["feedback", "list", "--since", "last tuesday"], 2, "--since 'last tuesday' is neither a duration"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_problem(ready, args, code, message):
    assert message in one_line_error(ready(*args), code)


def test_roles_the_base_model_cannot_render_exit_2_and_write_nothing(cli, tiny_line, tmp_path):
    assert cli.json("base", "show", "tiny")["chat_roles"] == ["system", "user", "assistant"]
    tool = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Asking."}, {"role": "tool", "content": "snow"}]
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"prompt": "ok", "response": "r", "rating": 1})
        + "\n"
        + json.dumps({"prompt": tool, "response": "r", "rating": 1})
        + "\n"
    )
    result = cli("feedback", "import", str(path), "--line", tiny_line)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        f"{path}:2: prompt[2].role 'tool' is not rendered by base model tiny's chat template (it renders system, user, assistant)"
        in result.stderr
    )
    result = cli("feedback", "log", "--line", tiny_line, "--messages", json.dumps(tool), "--response", "r", "--rating", "1")
    assert one_line_error(result, 2) == (
        "adapterctl: prompt[2].role 'tool' is not rendered by base model tiny's chat template (it renders system, user, assistant)"
    )
    assert cli.json("feedback", "list")["total"] == 0
    assert [event["action"] for event in cli.json("audit", "log")] == ["line.create", "base.register"]


def test_non_utf8_argument_is_refused(ready):
    result = ready(
        "feedback",
        "log",
        "--line",
        "support-bot",
        "--prompt",
        "p",
        "--response",
        b"caf\xe9".decode("utf-8", "surrogateescape"),
        "--rating",
        "1",
    )
    assert "response is not valid UTF-8 text" in one_line_error(result, 2)


def test_import_with_a_bad_line_exits_2_and_writes_nothing(ready, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a", "response": "b", "rating": 1}\n{"prompt": "a", "response": "b", "rating": 9}\n')
    result = ready("feedback", "import", str(path), "--line", "support-bot")
    assert result.returncode == 2 and f"{path}:2: rating 9 is out of range" in result.stderr
    assert ready.json("feedback", "list")["total"] == 0


HOSTILE_LINES = [
    (b'{"prompt": "a", "response": "b", "rating": 1' + b"0" * 400 + b"}", "rating (a number of 401 digits) is out of range"),
    (b'{"prompt": "a", "response": "b", "rating": 1, "n": ' + b"7" * 4400 + b"}", "a number has more than 4300 digits"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (
        b'{"prompt": "a", "response": "b", "rating": 1, "created_at": "9999-12-31T23:59:59-05:00"}',
        "created_at '9999-12-31T23:59:59-05:00' is out of range",
    ),
    (
        b'{"prompt": "a", "response": "b", "rating": 1, "created_at": "0001-01-01T00:00:00+05:00"}',
        "created_at '0001-01-01T00:00:00+05:00' is out of range",
    ),
    (b'{"prompt": "a", "response": "b", "rating": 1, "line": ["x"]}', "line must be a string, got list"),
    (b'{"prompt": "a", "response": "b", "rating": 7, "rating": 1}', "key 'rating' appears twice in one object"),
    (b'{"prompt": "a", "response": "b", "rating": NaN}', "NaN is not a number JSON knows"),
    (b'{"prompt": "a", "response": "b", "rating": 1e999}', "the number 1e999 is out of range"),
]


@pytest.mark.parametrize("content, message", HOSTILE_LINES, ids=[m[:24] for _, m in HOSTILE_LINES])
def test_hostile_import_lines_are_one_line_errors_naming_file_and_line(ready, tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"line": "support-bot", "prompt": "ok", "response": "b", "rating": 1}\n' + content + b"\n")
    result = ready("feedback", "import", str(path))  # without --line: each record names its line
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("adapterctl: 1 invalid line(s), nothing imported") and f"{path}:2: " in result.stderr
    assert message in result.stderr
    assert ready.json("feedback", "list")["total"] == 0


def test_unknown_command_and_missing_option_are_usage_errors(ready):
    assert ready("frobnicate").returncode == 2
    assert ready("feedback", "log", "--prompt", "p").returncode == 2


def test_commands_need_an_initialised_database(tmp_path):
    from adapterctl.config import Settings
    from tests.conftest import Cli

    cli = Cli(Settings(home=tmp_path / "new", db_url=f"sqlite:///{tmp_path / 'new' / 'adapterctl.db'}", user="tester"))
    assert "run `adapterctl init`" in one_line_error(cli("line", "list"), 1)
    initialised = cli.json("init")
    assert initialised["from"] is None and initialised["to"]
    assert cli("init").stdout.startswith("database ") and "nothing to do" in cli("init").stdout
    assert cli.json("line", "list") == []
    assert cli.json("db", "current")["up_to_date"] is True


def test_audit_verify_exits_1_naming_the_edited_event(ready, settings):
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
    engine.dispose()
    expected = "adapterctl: audit log broken at event #1: event #1 (base.register base:tiny) was modified after it was written"
    assert one_line_error(ready("audit", "verify"), 1) == expected


def test_unreachable_database_is_one_line(tmp_path):
    from adapterctl.config import Settings
    from tests.conftest import Cli

    cli = Cli(Settings(home=tmp_path, db_url="postgresql://nobody@127.0.0.1:1/none", user="tester"))
    assert one_line_error(cli("line", "list"), 1).startswith("adapterctl: database error:")
