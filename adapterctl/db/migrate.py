"""Schema migrations through Alembic, for the CLI (`init`, `db …`) and the tests.

Alembic is imported only to migrate: every other command just compares the database's revision
with SCHEMA_REVISION, which keeps the start-up of each command short.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from adapterctl.db.engine import READ_ONLY, make_engine, normalize_url
from adapterctl.errors import IntegrityError, SchemaError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SCHEMA_REVISION = "0010"
"""The newest migration; a test fails when a new migration does not move this along."""


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revision: str | None
    message: str
    is_head: bool


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    """The newest revision among the migration scripts (SCHEMA_REVISION, unless they disagree)."""
    return _scripts().get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database to `revision` and return the revision it is at afterwards."""
    from alembic import command

    return _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> str | None:
    from alembic import command

    return _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, step) -> str | None:
    from alembic.util import CommandError

    # SQLite batch migrations copy and drop tables, which must not trigger foreign-key actions;
    # the references are checked once all migrations have run.
    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.connect() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            try:
                step(config)
            except CommandError as exc:
                raise SchemaError(f"cannot migrate: {exc}") from None
            if engine.dialect.name == "sqlite":
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                connection.commit()
                if broken:
                    raise IntegrityError(f"foreign key check failed after migration: {broken[:3]}")
        return current_revision(engine)
    finally:
        engine.dispose()


def history() -> list[Revision]:
    scripts = _scripts()
    head = scripts.get_current_head()
    return [Revision(s.revision, s.down_revision, s.doc or "", s.revision == head) for s in scripts.walk_revisions()]


def check_schema(engine: Engine) -> None:
    """Raise SchemaError unless the database is at the schema revision this adapterctl was built for."""
    current = current_revision(engine)
    if current == SCHEMA_REVISION:
        return
    if current is None:
        raise SchemaError("database is not initialised: run `adapterctl init`")
    if current in {r.revision for r in history()}:
        raise SchemaError(f"database schema is at {current}, this adapterctl needs {SCHEMA_REVISION}: run `adapterctl db upgrade`")
    raise SchemaError(f"database schema {current} is newer than this adapterctl knows ({SCHEMA_REVISION}): upgrade adapterctl")
