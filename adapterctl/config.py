"""Settings: command-line flags beat environment variables beat `adapterctl.toml` beat defaults."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

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

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def config_file(self) -> Path:
        return self.home / CONFIG_FILE_NAME

    @property
    def uses_default_database(self) -> bool:
        return self.db_url == default_db_url(self.home)


# Settings the config file and the environment may set, with their environment variable.
_FILE_KEYS = {"db_url": "ADAPTERCTL_DB_URL", "user": "ADAPTERCTL_USER", "max_field_bytes": "ADAPTERCTL_MAX_FIELD_BYTES"}


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
    file_values = _read_config_file(home_path / CONFIG_FILE_NAME)
    flags = {"db_url": db_url, "user": user}
    problems: list[str] = []

    def pick(key: str) -> Any:
        if flags.get(key):
            return flags[key]
        if env.get(_FILE_KEYS[key]):
            return env[_FILE_KEYS[key]]
        return file_values.get(key)

    max_field_bytes = _positive_int(pick("max_field_bytes"), "max_field_bytes", problems)
    if problems:
        raise ConfigError("; ".join(problems))
    return Settings(
        home=home_path,
        db_url=pick("db_url") or default_db_url(home_path),
        user=pick("user") or _login_name(),
        **({"max_field_bytes": max_field_bytes} if max_field_bytes is not None else {}),
    )


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    problems = [f"{path}: unknown setting {key!r} (known: {', '.join(_FILE_KEYS)})" for key in values if key not in _FILE_KEYS]
    problems += [
        f"{path}: setting {key!r} must be a string" for key in ("db_url", "user") if key in values and not isinstance(values[key], str)
    ]
    if problems:
        raise ConfigError("; ".join(problems))
    return values


def _positive_int(value: Any, name: str, problems: list[str]) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        problems.append(f"{name} must be a positive integer, got {value!r}")
        return None
    if number <= 0 or isinstance(value, bool):
        problems.append(f"{name} must be a positive integer, got {value!r}")
        return None
    return number


def _login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return f"uid-{os.getuid()}"


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as plain values, for `--json` output and error messages."""
    return {f.name: str(getattr(settings, f.name)) if isinstance(getattr(settings, f.name), Path) else getattr(settings, f.name) for f in fields(settings)}
