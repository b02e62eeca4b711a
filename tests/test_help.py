"""Every command and option explains itself: a command without help text fails here."""

from __future__ import annotations

from typer.main import get_command
from typer.testing import CliRunner

from adapterctl.cli.main import app


def walk(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def test_every_command_and_option_has_help():
    missing = []
    for path, command in walk(get_command(app)):
        if path and not (command.help or "").strip():
            missing.append(" ".join(path))
        for param in command.params:
            if param.param_type_name == "option" and not (getattr(param, "help", None) or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
    assert missing == []


def test_contract_commands_exist():
    commands = {" ".join(path) for path, _ in walk(get_command(app))}
    expected = {
        "init",
        "db upgrade",
        "db current",
        "db history",
        "base register",
        "base create-tiny",
        "base list",
        "line create",
        "line list",
        "line show",
        "feedback log",
        "feedback import",
        "feedback list",
        "feedback show",
        "feedback stats",
        "feedback export",
        "feedback forget",
        "audit log",
        "audit verify",
    }
    assert expected <= commands


def test_help_runs_for_every_group():
    runner = CliRunner()
    for group in ("db", "base", "line", "feedback", "audit"):
        result = runner.invoke(app, [group, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
