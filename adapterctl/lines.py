"""Lines: named streams of adapters on one base model, each with its own typed settings."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.base_models import get_base_model
from adapterctl.canary import CanarySettings
from adapterctl.db.models import Line
from adapterctl.errors import AlreadyExists, InvalidInput, NotFound
from adapterctl.names import check_name
from adapterctl.poisoning import PoisoningSettings, settings_from


@dataclass(frozen=True)
class GateThresholds:
    """What a candidate must meet before a reviewer sees it (the evaluation gate)."""

    max_suite_drop: float = 0.0
    """Largest allowed drop of any regression suite's score against the active version (0.0: no drop)."""
    max_reference_drop: float = 0.1
    """Largest allowed drop, against the base model, of the share of the reference set's measured
    prompt/answer cases answered as the set says (0.1 = 10 points)."""
    max_forgetting_increase: float = 0.05
    """Largest allowed relative increase of the reference-set loss against the base model (0.05 = 5%),
    the forgetting check when the reference set holds only text (the built-in one)."""
    min_heldout_gain: float = 0.0
    """Smallest required improvement of held-out exact match over the active version (the base model
    when there is none)."""
    min_heldout_cases: int = 10
    """Fewest held-out cases on which the held-out gain is judged; with fewer, its 95% interval is wider
    than +/-0.28 and the check says it is too small to judge instead of passing or failing."""
    max_version_drop: float = 0.1
    """Largest allowed drop, against the active version, of exact match on a sample of an earlier
    version's own data (the check 'keeps vN')."""
    min_learned: float = 0.8
    """Smallest share of its own training answers (the weaker of new and replayed, greedy) a candidate
    must reproduce."""
    max_degenerate_share: float = 0.1
    """Largest share of the candidate's answers that may be empty or repetitive."""


@dataclass(frozen=True)
class LineSettings:
    """How a line trains, what its gate demands and how many people approve a version."""

    lora_rank: int = 8
    """LoRA rank r of every adapter the line trains."""
    lora_alpha: int = 16
    """LoRA scaling numerator; the update is scaled by alpha / r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    target_modules: tuple[str, ...] | None = None
    """Module names LoRA wraps; None: every linear projection layer of the model."""
    approvals_required: int = 1
    """Distinct reviewers who must approve a candidate before it becomes a version."""
    min_examples: int = 8
    """Fewest new eligible feedback examples for which `adapterctl train` trains at all."""
    max_source_share: float = 0.2
    """Largest share of one run's examples that one feedback source may contribute."""
    reference_anchor_share: float = 0.75
    """Share of the reference set's prompt/answer cases mixed into every training run (chosen by
    bench/forgetting.py); the rest measures forgetting. 0 turns anchoring off."""
    reference_size: int = 128
    """Prompt/answer cases the line's reference set should hold. When it holds fewer (or there is none),
    training tops it up with cases the base model writes itself (adapterctl.rehearsal); 0: never."""
    gate: GateThresholds = field(default_factory=GateThresholds)
    """Thresholds of the evaluation gate."""
    canary: CanarySettings = field(default_factory=CanarySettings)
    """The live test of a canary: worst acceptable drop, error rates, minimum feedback, health bounds."""
    poisoning: PoisoningSettings = field(default_factory=PoisoningSettings)
    """The poisoning checks of training runs: floods, spikes, trigger patterns, and whether flagged records are held out."""

    def problems(self) -> list[str]:
        checks = [
            (1 <= self.lora_rank <= 1024, f"lora_rank must be between 1 and 1024 (got {self.lora_rank})"),
            (self.lora_alpha >= 1, f"lora_alpha must be at least 1 (got {self.lora_alpha})"),
            (0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1) (got {self.lora_dropout})"),
            (self.target_modules is None or len(self.target_modules) > 0, "target_modules must name at least one module"),
            (1 <= self.approvals_required <= 20, f"approvals_required must be between 1 and 20 (got {self.approvals_required})"),
            (self.min_examples >= 1, f"min_examples must be at least 1 (got {self.min_examples})"),
            (0.0 < self.max_source_share <= 1.0, f"max_source_share must be in (0, 1] (got {self.max_source_share})"),
            (0.0 <= self.reference_anchor_share <= 1.0, f"reference_anchor_share must be in [0, 1] (got {self.reference_anchor_share})"),
            (0 <= self.reference_size <= 10_000, f"reference_size must be between 0 and 10000 (got {self.reference_size})"),
            (self.gate.max_suite_drop >= 0.0, f"gate.max_suite_drop must be >= 0 (got {self.gate.max_suite_drop})"),
            (0.0 <= self.gate.min_learned <= 1.0, f"gate.min_learned must be in [0, 1] (got {self.gate.min_learned})"),
            (
                0.0 <= self.gate.max_degenerate_share <= 1.0,
                f"gate.max_degenerate_share must be in [0, 1] (got {self.gate.max_degenerate_share})",
            ),
            (0.0 <= self.gate.max_reference_drop <= 1.0, f"gate.max_reference_drop must be in [0, 1] (got {self.gate.max_reference_drop})"),
            (
                0 <= self.gate.min_heldout_cases <= 100_000,
                f"gate.min_heldout_cases must be between 0 and 100000 (got {self.gate.min_heldout_cases})",
            ),
            (0.0 <= self.gate.max_version_drop <= 1.0, f"gate.max_version_drop must be in [0, 1] (got {self.gate.max_version_drop})"),
            (
                self.gate.max_forgetting_increase >= 0.0,
                f"gate.max_forgetting_increase must be >= 0 (got {self.gate.max_forgetting_increase})",
            ),
        ]
        return (
            [message for ok, message in checks if not ok]
            + [f"canary.{problem}" for problem in self.canary.problems()]
            + [f"poisoning.{problem}" for problem in self.poisoning.problems()]
        )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["target_modules"] = list(self.target_modules) if self.target_modules else None
        values["poisoning"]["trigger_patterns"] = list(self.poisoning.trigger_patterns)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LineSettings:
        """Settings as stored; keys a newer adapterctl added are ignored, missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known and k not in GROUPS}
        if kwargs.get("target_modules") is not None:
            kwargs["target_modules"] = tuple(kwargs["target_modules"])
        return cls(
            **kwargs,
            gate=_known(GateThresholds, values.get("gate")),
            canary=_known(CanarySettings, values.get("canary")),
            poisoning=settings_from(values.get("poisoning")),
        )

    def changed(self, assignments: dict[str, str]) -> LineSettings:
        """These settings with `key=value` assignments applied (`gate.min_learned=0.9`, `canary.alpha=0.01`);
        each value is read as its setting's type."""
        values = self.to_dict()
        for key, text in assignments.items():
            group, _, name = key.rpartition(".")
            table = values.get(group) if group else values
            if group not in ("", *GROUPS) or not isinstance(table, dict) or name not in table or name in GROUPS:
                raise InvalidInput(f"unknown setting {key!r}; see `adapterctl line show LINE` for their names", param=key)
            table[name] = _typed(key, text, table[name], name)
        settings = LineSettings.from_dict(values)
        if problems := settings.problems():
            raise InvalidInput("; ".join(problems))
        return settings


GROUPS = ("gate", "canary", "poisoning")
"""Settings grouped under a prefix: `gate.min_learned`, `canary.alpha`, `poisoning.hold_flagged`."""


def _known(kind, values: dict[str, Any] | None):
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in (values or {}).items() if k in names})


def _typed(key: str, text: str, current: Any, name: str) -> Any:
    if name == "target_modules":
        return None if text in ("", "all") else [m.strip() for m in text.split(",") if m.strip()]
    if isinstance(current, bool):
        if text.lower() not in _BOOLEANS:
            raise InvalidInput(f"setting {key} must be true or false (got {text!r})", param=key)
        return _BOOLEANS[text.lower()]
    if isinstance(current, (list, tuple)):
        return _text_list(key, text)
    kind = type(current) if current is not None else str
    value: int | float | str | None
    try:
        value = int(text) if kind is int else float(text) if kind is float else text
    except ValueError:
        value = None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidInput(f"setting {key} must be {'an integer' if kind is int else 'a finite number'} (got {text!r})", param=key)
    return value


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _text_list(key: str, text: str) -> list[str]:
    """A JSON list of strings (`["a", "b"]`), else one string (`[Zz]orblax` is one); an empty value: none."""
    if not text.strip():
        return []
    try:
        values = json.loads(text)
    except ValueError:
        return [text]
    if not isinstance(values, list):
        return [text]
    if not all(isinstance(v, str) for v in values):
        raise InvalidInput(f'setting {key} must be a JSON list of strings, e.g. ["pattern one", "pattern two"]', param=key)
    return values


def create_line(
    session: Session, *, name: str, base: str, actor: str, settings: LineSettings | None = None, description: str | None = None
) -> Line:
    check_name(name, "line")
    settings = settings or LineSettings()
    if problems := settings.problems():
        raise InvalidInput("; ".join(problems))
    base_model = get_base_model(session, base)
    if session.scalar(select(Line.id).where(Line.name == name)) is not None:
        raise AlreadyExists(f"line {name!r} exists already; see `adapterctl line show {name}`")
    line = Line(name=name, base_model=base_model, description=description, settings=settings.to_dict(), created_by=actor)
    session.add(line)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="line.create",
        subject=f"line:{name}",
        payload={"base_model": base_model.name, "base_model_hash": base_model.content_hash, "settings": settings.to_dict()},
    )
    return line


def update_settings(session: Session, *, name: str, assignments: dict[str, str], actor: str) -> Line:
    """Change some of a line's settings (they apply to its next run, evaluation and canary check)."""
    line = get_line(session, name)
    lock_line(session, line.id)
    before = settings_of(line)
    after = before.changed(assignments)
    line.settings = after.to_dict()
    old, new = flat_settings(before.to_dict()), flat_settings(after.to_dict())
    audit.record(
        session,
        actor=actor,
        action="line.settings",
        subject=f"line:{name}",
        payload={"changed": {key: {"from": old[key], "to": new[key]} for key in new if new[key] != old[key]}},
    )
    return line


def flat_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Settings as stored, by the names `line set` takes: `min_examples`, `gate.min_learned`, `canary.alpha`."""
    flat = {}
    for key, value in values.items():
        flat.update(flat_settings(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def get_line(session: Session, name: str) -> Line:
    line = session.scalar(select(Line).where(Line.name == name))
    if line is None:
        raise NotFound(f"line {name!r} does not exist; see `adapterctl line list` or create it with `adapterctl line create`")
    return line


def line_id_of(session: Session, name: str) -> int:
    """The id of a line, without loading it (the path of every logged feedback record)."""
    line_id = session.scalar(select(Line.id).where(Line.name == name))
    if line_id is None:
        return get_line(session, name).id  # raises NotFound with the usual message
    return line_id


def lock_line(session: Session, line_id: int) -> None:
    """Serialise changes to one line until the transaction ends (SELECT … FOR UPDATE; SQLite's write
    transaction already excludes other writers): reviews, promotions, rollbacks and fallbacks."""
    session.scalar(select(Line.id).where(Line.id == line_id).with_for_update())


def list_lines(session: Session) -> list[Line]:
    return list(session.scalars(select(Line).order_by(Line.name)))


def settings_of(line: Line) -> LineSettings:
    return LineSettings.from_dict(line.settings)


def as_dict(line: Line) -> dict[str, Any]:
    return {
        "name": line.name,
        "base_model": line.base_model.name,
        "base_model_hash": line.base_model.content_hash,
        "description": line.description,
        "settings": settings_of(line).to_dict(),
        "created_at": line.created_at.isoformat(),
        "created_by": line.created_by,
    }
