"""Lines: names that stay inside the artifact store, typed settings validated all at once."""

from __future__ import annotations

import pytest

from adapterctl import lines
from adapterctl.errors import AlreadyExists, InvalidInput, NotFound
from adapterctl.lines import GateThresholds, LineSettings


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", "Upper", "-lead", "line@v1", "x" * 64, ".hidden", "a.", "a..b", "con", "lpt1.x", "nul"]
)
def test_names_that_could_escape_a_path_or_a_model_id_are_refused(ws, line, name):
    with ws.transaction() as session, pytest.raises(InvalidInput, match="invalid line name"):
        lines.create_line(session, name=name, base="tiny", actor="tester")


@pytest.mark.parametrize("name", ["a.b", "v1.2-beta_3", "console", "com10", "a-"])
def test_names_close_to_refused_ones_are_accepted(ws, line, name):
    with ws.transaction() as session:
        assert lines.create_line(session, name=name, base="tiny", actor="tester").name == name


def test_settings_problems_are_reported_together(ws, line):
    bad = LineSettings(lora_rank=0, approvals_required=0, max_source_share=1.5, gate=GateThresholds(max_suite_drop=-1))
    with ws.transaction() as session, pytest.raises(InvalidInput) as caught:
        lines.create_line(session, name="other", base="tiny", actor="tester", settings=bad)
    message = str(caught.value)
    for field in ("lora_rank", "approvals_required", "max_source_share", "gate.max_suite_drop"):
        assert field in message


def test_settings_round_trip_and_tolerate_keys_from_newer_versions(ws, line):
    settings = LineSettings(lora_rank=16, target_modules=("q_proj", "v_proj"), approvals_required=2)
    with ws.transaction() as session:
        lines.create_line(session, name="other", base="tiny", actor="tester", settings=settings, description="d")
    with ws.transaction() as session:
        stored = lines.settings_of(lines.get_line(session, "other"))
    assert stored == settings
    newer = {**settings.to_dict(), "future_knob": 3, "gate": {**settings.to_dict()["gate"], "future_gate": 1}}
    assert LineSettings.from_dict(newer) == settings
    assert LineSettings.from_dict({}) == LineSettings()


def test_duplicates_and_unknown_bases_are_refused(ws, line):
    with ws.transaction() as session:
        with pytest.raises(AlreadyExists):
            lines.create_line(session, name=line, base="tiny", actor="tester")
        with pytest.raises(NotFound, match="base model 'nope'"):
            lines.create_line(session, name="other", base="nope", actor="tester")
        with pytest.raises(NotFound, match="line 'nope' does not exist"):
            lines.get_line(session, "nope")
