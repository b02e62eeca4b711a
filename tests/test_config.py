"""Flags beat environment variables beat adapterctl.toml beat defaults."""

from __future__ import annotations

import pytest

from adapterctl.config import default_db_url, load_settings
from adapterctl.errors import ConfigError


def test_defaults(tmp_path):
    settings = load_settings(environ={"ADAPTERCTL_HOME": str(tmp_path)})
    assert settings.home == tmp_path and settings.db_url == default_db_url(tmp_path)
    assert settings.user and settings.max_field_bytes == 32 * 1024 and settings.responses_retention_days == 7
    assert settings.artifacts_dir == tmp_path / "artifacts"


def test_precedence_flag_env_file(tmp_path):
    (tmp_path / "adapterctl.toml").write_text(
        'db_url = "sqlite:///file.db"\nuser = "file-user"\nmax_field_bytes = 100\nresponses_retention_days = 30\n'
    )
    env = {"ADAPTERCTL_HOME": str(tmp_path)}
    from_file = load_settings(environ=env)
    assert (from_file.db_url, from_file.user, from_file.max_field_bytes, from_file.responses_retention_days) == (
        "sqlite:///file.db",
        "file-user",
        100,
        30,
    )
    env |= {
        "ADAPTERCTL_DB_URL": "sqlite:///env.db",
        "ADAPTERCTL_USER": "env-user",
        "ADAPTERCTL_MAX_FIELD_BYTES": "200",
        "ADAPTERCTL_RESPONSES_RETENTION_DAYS": "0.5",
    }
    from_env = load_settings(environ=env)
    assert (from_env.db_url, from_env.user, from_env.max_field_bytes, from_env.responses_retention_days) == (
        "sqlite:///env.db",
        "env-user",
        200,
        0.5,
    )
    from_flags = load_settings(db_url="sqlite:///flag.db", user="flag-user", environ=env)
    assert (from_flags.db_url, from_flags.user) == ("sqlite:///flag.db", "flag-user")
    assert load_settings(home=tmp_path / "elsewhere", environ=env).home == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    "content, message",
    [
        ("db_url = ", "not valid TOML"),
        ('dburl = "x"', "unknown setting 'dburl'"),
        ("user = 3", "setting 'user' must be a string"),
        ("max_field_bytes = -5", "max_field_bytes must be a positive integer"),
        ("responses_retention_days = 0", "responses_retention_days must be a positive number, got 0"),
        ('responses_retention_days = "a week"', "responses_retention_days must be a positive number, got 'a week'"),
        ("responses_retention_days = inf", "responses_retention_days must be a positive number"),
    ],
)
def test_bad_config_file_names_file_and_setting(tmp_path, content, message):
    (tmp_path / "adapterctl.toml").write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"ADAPTERCTL_HOME": str(tmp_path)})
    assert message in str(caught.value) and str(caught.value).startswith(str(tmp_path / "adapterctl.toml"))


def test_bad_environment_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match="ADAPTERCTL_MAX_FIELD_BYTES must be a positive integer, got 'lots'"):
        load_settings(environ={"ADAPTERCTL_HOME": str(tmp_path), "ADAPTERCTL_MAX_FIELD_BYTES": "lots"})


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "a week"])
def test_bad_retention_in_the_environment_is_named(tmp_path, value):
    with pytest.raises(ConfigError, match=f"ADAPTERCTL_RESPONSES_RETENTION_DAYS must be a positive number, got '{value}'"):
        load_settings(environ={"ADAPTERCTL_HOME": str(tmp_path), "ADAPTERCTL_RESPONSES_RETENTION_DAYS": value})
