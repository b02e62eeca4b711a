"""Alembic owns the schema: migrations equal the models, go down and up again, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from adapterctl.db import migrate
from adapterctl.db.engine import Database
from adapterctl.db.models import Base
from adapterctl.errors import SchemaError
from tests.conftest import BACKENDS, empty_database


def schema_diff(url: str) -> list:
    db = Database(url)
    try:
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        db.dispose()


def table_names(url: str) -> set[str]:
    db = Database(url)
    try:
        return set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_migrated_schema_equals_models(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        assert migrate.upgrade(url) == migrate.head_revision()
        assert schema_diff(url) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_downgrade_to_base_and_up_again(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        migrate.upgrade(url)
        assert migrate.downgrade(url, "base") is None
        assert table_names(url) <= {"alembic_version"}
        assert migrate.upgrade(url) == migrate.head_revision()
        assert schema_diff(url) == []
        assert set(Base.metadata.tables) <= table_names(url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_twice_is_a_no_op(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        first = migrate.upgrade(url)
        assert migrate.upgrade(url) == first


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_schema_names_the_command_that_fixes_it(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        db = Database(url)
        try:
            with pytest.raises(SchemaError, match="adapterctl init"):
                migrate.check_schema(db.engine)
            migrate.upgrade(url)
            migrate.check_schema(db.engine)
        finally:
            db.dispose()


def test_history_has_one_head_and_a_linear_chain():
    revisions = migrate.history()
    assert [r.revision for r in revisions if r.is_head] == [migrate.head_revision()]
    downs = [r.down_revision for r in revisions]
    assert downs.count(None) == 1 and len(set(downs)) == len(downs)


def test_schema_revision_constant_names_the_newest_migration():
    assert migrate.head_revision() == migrate.SCHEMA_REVISION


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_from_a_newer_adapterctl_is_refused(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        migrate.upgrade(url)
        db = Database(url)
        try:
            with db.engine.begin() as connection:
                connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
            with pytest.raises(SchemaError, match="newer than this adapterctl knows"):
                migrate.check_schema(db.engine)
        finally:
            db.dispose()
        with pytest.raises(SchemaError, match="cannot migrate"):
            migrate.upgrade(url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_base_models_registered_before_0006_keep_their_rows_with_chat_roles_unknown(backend, tmp_path):
    with empty_database(backend, tmp_path) as url:
        migrate.upgrade(url, "0005")
        db = Database(url)
        try:
            with db.engine.begin() as connection:
                connection.exec_driver_sql(
                    "INSERT INTO base_models (name, source, source_kind, content_hash, files, created_at, created_by) "
                    "VALUES ('old', '/models/old', 'local', 'abc', '{}', '2026-11-01 00:00:00', 'alice')"
                )
            migrate.upgrade(url)
            with db.engine.connect() as connection:
                rows = connection.exec_driver_sql("SELECT name, content_hash, chat_roles FROM base_models").all()
            assert [tuple(row) for row in rows] == [("old", "abc", None)]
        finally:
            db.dispose()
