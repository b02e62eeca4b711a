"""Schema migrations through Alembic, for the CLI (`init`, `db …`) and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from adapterctl.db.engine import make_engine, normalize_url
from adapterctl.errors import IntegrityError, SchemaError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database to `revision` and return the revision it is at afterwards."""
    return _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> str | None:
    return _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, step) -> str | None:
    # SQLite batch migrations copy and drop tables, which must not trigger foreign-key actions;
    # the references are checked once all migrations have run.
    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.connect() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            step(config)
            if engine.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                connection.commit()
                if broken:
                    raise IntegrityError(f"foreign key check failed after migration: {broken[:3]}")
        return current_revision(engine)
    finally:
        engine.dispose()


def history() -> list[Revision]:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = scripts.get_current_head()
    return [
        Revision(s.revision, s.down_revision, s.doc or "", s.revision == head)
        for s in scripts.walk_revisions()
    ]


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database is at the schema revision this adapterctl was built for."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaError("database is not initialised: run `adapterctl init`")
    known = {r.revision for r in history()}
    if current in known:
        raise SchemaError(f"database schema is at {current}, this adapterctl needs {head}: run `adapterctl db upgrade`")
    raise SchemaError(f"database schema {current} is newer than this adapterctl knows ({head}): upgrade adapterctl")
