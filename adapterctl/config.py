"""Settings: command-line flags beat environment variables beat `adapterctl.toml` beat defaults."""

from __future__ import annotations

import getpass
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from adapterctl.errors import ConfigError

CONFIG_FILE_NAME = "adapterctl.toml"
DATABASE_FILE_NAME = "adapterctl.db"


@dataclass(frozen=True)
class Settings:
    home: Path
    """Folder holding the default SQLite database, the artifact store and `adapterctl.toml`."""
    db_url: str
    """SQLAlchemy URL of the database; the default is an SQLite file in `home`."""
    user: str
    """Who the command acts as; recorded in audit events and reviews."""
    max_field_bytes: int = 32 * 1024
    """Largest accepted feedback text field (prompt message, response, correction, ...), in UTF-8 bytes."""
    responses_retention_days: float = 7.0
    """How long servers keep the responses they issued (so feedback can name them), in days."""

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def config_file(self) -> Path:
        return self.home / CONFIG_FILE_NAME


# Settings the config file and the environment may set, with their environment variable.
_FILE_KEYS = {
    "db_url": "ADAPTERCTL_DB_URL",
    "user": "ADAPTERCTL_USER",
    "max_field_bytes": "ADAPTERCTL_MAX_FIELD_BYTES",
    "responses_retention_days": "ADAPTERCTL_RESPONSES_RETENTION_DAYS",
}


def default_db_url(home: Path) -> str:
    return f"sqlite:///{home / DATABASE_FILE_NAME}"


def load_settings(
    *,
    home: str | Path | None = None,
    db_url: str | None = None,
    user: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from flags (the arguments), the environment, the config file and defaults."""
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get("ADAPTERCTL_HOME") or Path.home() / ".adapterctl").expanduser().absolute()
    values = _read_config_file(home_path / CONFIG_FILE_NAME)
    for key, variable in _FILE_KEYS.items():
        if env.get(variable):
            values[key] = _NUMBERS[key](env[variable], variable) if key in _NUMBERS else env[variable]
    values.update({key: value for key, value in (("db_url", db_url), ("user", user)) if value})
    return Settings(
        home=home_path,
        db_url=values.get("db_url") or default_db_url(home_path),
        user=values.get("user") or _login_name(),
        max_field_bytes=values.get("max_field_bytes", Settings.max_field_bytes),
        responses_retention_days=values.get("responses_retention_days", Settings.responses_retention_days),
    )


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    problems = [f"unknown setting {key!r} (known: {', '.join(_FILE_KEYS)})" for key in values if key not in _FILE_KEYS]
    problems += [f"setting {key!r} must be a string" for key in ("db_url", "user") if key in values and not isinstance(values[key], str)]
    for key, parse in _NUMBERS.items():
        if key in values:
            try:
                values[key] = parse(values[key], key)
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return values


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit() or int(value) <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_number(value: Any, name: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except (ValueError, OverflowError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return number


# The numeric settings, with what checks and converts them (from the config file or the environment).
_NUMBERS = {"max_field_bytes": _positive_int, "responses_retention_days": _positive_number}


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid-{os.getuid()}"
