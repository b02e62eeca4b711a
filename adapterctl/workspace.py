"""A workspace is an adapterctl home opened from Python: settings, database and the acting user.

The CLI opens one per command; a serving application opens one at start-up and calls `log_feedback`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from adapterctl import audit, feedback
from adapterctl.config import Settings, load_settings
from adapterctl.db import migrate
from adapterctl.db.engine import Database, sqlite_path
from adapterctl.errors import SchemaError


class Workspace:
    def __init__(self, settings: Settings) -> None:
        database_file = sqlite_path(settings.db_url)
        if database_file is not None and not database_file.exists():
            raise SchemaError(f"no database at {database_file}: run `adapterctl init`")
        self.settings = settings
        self.db = Database(settings.db_url)
        migrate.check_schema(self.db.engine)

    @classmethod
    def open(cls, *, home: str | Path | None = None, db_url: str | None = None, user: str | None = None) -> Workspace:
        return cls(load_settings(home=home, db_url=db_url, user=user))

    @property
    def user(self) -> str:
        return self.settings.user

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.db.transaction() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self.db.reading() as session:
            yield session

    def log_feedback(self, **fields: Any) -> int:
        """Store one feedback record in its own transaction; see `adapterctl.feedback.log_feedback`."""
        with self.transaction() as session:
            return feedback.log_feedback(session, actor=self.user, max_field_bytes=self.settings.max_field_bytes, **fields)

    def close(self) -> None:
        self.db.dispose()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def upgrade_database(settings: Settings, revision: str = "head") -> tuple[str | None, str | None]:
    """Create the home (for the default SQLite database) and migrate; return the revisions before and after."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.artifacts_dir.mkdir(exist_ok=True)
    database_file = sqlite_path(settings.db_url)
    if database_file is not None:
        database_file.parent.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    try:
        before = migrate.current_revision(db.engine)
        after = migrate.upgrade(settings.db_url, revision)
        if after != before:
            with db.transaction() as session:
                audit.record(session, actor=settings.user, action="db.upgrade", subject="database", payload={"from": before, "to": after})
        return before, after
    finally:
        db.dispose()
