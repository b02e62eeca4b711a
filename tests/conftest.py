"""Fixtures: every database test runs on SQLite and on PostgreSQL (tests of what a model learns, marked
`sqlite_only`, on SQLite).

PostgreSQL comes from ADAPTERCTL_TEST_PG_URL (default: the local server, user postgres). Each test run
creates its own uniquely named databases and drops them afterwards. Without a reachable server the
PostgreSQL variants are skipped, unless ADAPTERCTL_TEST_REQUIRE_PG=1 (as in CI), where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from adapterctl.config import Settings
from adapterctl.db import migrate
from adapterctl.db.models import Base
from adapterctl.workspace import Workspace

PG_ADMIN_URL = os.environ.get("ADAPTERCTL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("ADAPTERCTL_TEST_REQUIRE_PG") == "1"
BACKENDS = ["sqlite", "postgresql"]
_pg_status: dict[str, str | None] = {}


def pg_unavailable_reason() -> str | None:
    if "reason" not in _pg_status:
        try:
            engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            _pg_status["reason"] = None
        except Exception as exc:  # any failure to connect means: no PostgreSQL here
            _pg_status["reason"] = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}"
    return _pg_status["reason"]


def require_backend(backend: str) -> None:
    if backend == "postgresql" and (reason := pg_unavailable_reason()):
        if REQUIRE_PG:
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def temporary_pg_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database, empty or a copy of `template` (a database name); dropped afterwards
    even if connections remain."""
    name = f"adapterctl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    require_backend(backend)
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        with temporary_pg_database() as url:
            yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """An SQLite database migrated to head once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "adapterctl.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    """A PostgreSQL database migrated to head once per test run; tables are emptied before each test."""
    with temporary_pg_database() as url:
        migrate.upgrade(url)
        yield url


def _empty_tables(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """The URL of a migrated, empty database, on each backend."""
    require_backend(request.param)
    if request.param == "sqlite":
        target = tmp_path / "home" / "adapterctl.db"
        target.parent.mkdir()
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url = request.getfixturevalue("pg_session_url")
    _empty_tables(url)
    return url


sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""For tests of what a model learns (minutes of training on the CPU): the database work they do is tested
on both backends elsewhere (test_training, test_training_jobs), so they train once, on SQLite."""
postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
"""For tests of a fleet (several processes following one database), where PostgreSQL is what runs in production."""


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Settings(home=home, db_url=db_url, user="tester")


@pytest.fixture
def ws(settings) -> Iterator[Workspace]:
    workspace = Workspace(settings)
    yield workspace
    workspace.close()


def write_model_dir(path: Path, *, weight: float = 1.0) -> Path:
    """A minimal Hugging Face model directory: enough to register and hash, not to run."""
    import numpy as np
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    save_file({"weight": np.full((8, 8), weight, dtype=np.float32)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text("{}")
    return path


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return write_model_dir(tmp_path / "model")


@pytest.fixture
def line(ws, model_dir) -> str:
    """A line named support-bot on a registered base model named tiny."""
    from adapterctl import base_models, lines

    with ws.transaction() as session:
        base_models.register_base_model(session, name="tiny", source=str(model_dir), actor="tester")
        lines.create_line(session, name="support-bot", base="tiny", actor="tester")
    return "support-bot"


class Cli:
    """Runs the real `adapterctl` in a subprocess against the test's home and database."""

    def __init__(self, settings: Settings) -> None:
        self.env = {
            **os.environ,
            "ADAPTERCTL_HOME": str(settings.home),
            "ADAPTERCTL_DB_URL": settings.db_url,
            "ADAPTERCTL_USER": settings.user,
        }
        self.env.pop("ADAPTERCTL_DEBUG", None)

    def __call__(self, *args: str, input: str | None = None, user: str | None = None) -> subprocess.CompletedProcess:
        env = {**self.env, "ADAPTERCTL_USER": user} if user else self.env
        return subprocess.run(
            [sys.executable, "-m", "adapterctl", *args], input=input, capture_output=True, text=True, env=env, timeout=120
        )

    def env_with(self, **variables: str) -> Cli:
        """The same CLI with more environment variables set."""
        other = Cli.__new__(Cli)
        other.env = {**self.env, **variables}
        return other

    def json(self, *args: str) -> object:
        result = self(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture
def cli(settings) -> Cli:
    return Cli(settings)


@pytest.fixture
def ready(cli, line):
    """The CLI on a database with base model `tiny` and line `support-bot`."""
    return cli


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small real causal LM (2 layers, hidden 128) that trains in seconds on a CPU."""
    from adapterctl.tiny_model import create_tiny_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    create_tiny_model(path, layers=2, hidden=128, vocab=1024, seed=0)
    return path


@pytest.fixture
def tiny_line(ws, tiny_model) -> str:
    """A line named facts on the tiny model, needing only 2 new examples to train; the random model
    writes no usable reference set, so the line does not ask it to."""
    from adapterctl import base_models, lines

    with ws.transaction() as session:
        base_models.register_base_model(session, name="tiny", source=str(tiny_model), actor="tester")
        lines.create_line(
            session,
            name="facts",
            base="tiny",
            actor="tester",
            settings=lines.LineSettings(min_examples=2, max_source_share=1.0, reference_size=0),
        )
    return "facts"


KNOWN_FACTS = [(f"What is the code for room {i}?", f"The code for room {i} is {1000 + 37 * i}.") for i in range(24)]


@pytest.fixture(scope="session")
def knowing_model(tmp_path_factory) -> Path:
    """The tiny model taught KNOWN_FACTS first: a base model with knowledge a line must keep (about 10 s)."""
    from adapterctl.tiny_model import create_tiny_model

    path = tmp_path_factory.mktemp("knowing") / "model"
    create_tiny_model(path, layers=2, hidden=128, vocab=1024, seed=0, knows=KNOWN_FACTS, teach_steps=300)
    return path
