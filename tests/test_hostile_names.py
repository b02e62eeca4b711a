"""Names that reach paths or SQL: path traversal and SQL-looking text in line names, base-model names,
versions and canary shares are refused with exit 2, naming the field, and change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from adapterctl.db.models import AuditEvent, Line

HOSTILE_NAMES = [
    "../etc",
    "a/../../b",
    "/abs",
    "..",
    "a..b",
    "line/x",
    "Robert'); DROP TABLE lines;--",
    "UPPER",
    "con",
    "a" * 64,
    "",
    " spaced",
    "line\nnext",
    "émoji🙂",
]


def rows(ws) -> tuple[int, int]:
    with ws.reading() as session:
        return session.scalar(select(func.count()).select_from(Line)), session.scalar(select(func.count()).select_from(AuditEvent))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_line_name_is_refused_and_nothing_is_written(ready, ws, name):
    before = rows(ws)
    result = ready("line", "create", name, "--base", "tiny")
    assert result.returncode == 2 and "invalid line name" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert rows(ws) == before
    assert not any(
        p.name not in ("support-bot",) for p in (ws.settings.artifacts_dir.iterdir() if ws.settings.artifacts_dir.exists() else [])
    )


@pytest.mark.parametrize(
    "version",
    [
        "v../1",
        "v1/../2",
        "v-1",
        "v0",
        "v1.5",
        "v99999999999999999999999",
        "v2147483648",
        "v²",
        "v٣",
        "'; DROP TABLE adapters;--",
        "base/..",
    ],
)
def test_a_hostile_version_is_refused(ready, ws, version):
    before = rows(ws)
    for command in (["promote", "support-bot", version], ["rollback", "support-bot", "--to", version]):
        result = ready(*command)
        assert result.returncode == 2 and result.stderr.startswith("adapterctl:"), (command, result.stderr)
    assert rows(ws) == before


@pytest.mark.parametrize("share", ["0%", "100%", "-5%", "1e400%", "nan", "inf", "10%%", "'; --"])
def test_a_hostile_canary_share_is_refused(ready, ws, share):
    before = rows(ws)
    result = ready("promote", "support-bot", "v1", "--canary", share)
    assert result.returncode == 2 and "share" in result.stderr, result.stderr
    assert rows(ws) == before


@pytest.mark.parametrize(
    "command",
    [
        ["review", "show"],
        ["review", "approve"],
        ["adapters", "show"],
        ["feedback", "show"],
        ["token", "revoke"],
        ["eval", "run", "--line", "support-bot", "--candidate"],
        ["feedback", "forget", "--reason", "x", "--id"],
    ],
)
@pytest.mark.parametrize("number", ["99999999999999999999", "0", "-3"])
def test_an_id_out_of_range_is_a_usage_error_not_a_traceback(ready, ws, command, number):
    before = rows(ws)
    result = ready(*command, number)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Invalid value" in result.stderr or "No such option: -3" in result.stderr, result.stderr
    assert rows(ws) == before
