"""Alembic environment for every database adapterctl supports.

`adapterctl init` / `adapterctl db upgrade` hand a connection in through `config.attributes`;
running `alembic` by hand from the repository uses ADAPTERCTL_DB_URL or the default home.
"""

from alembic import context

from adapterctl.db.engine import make_engine
from adapterctl.db.models import Base

config = context.config
MIGRATION_LOCK_KEY = 7_296_117_010  # any constant; shared by every adapterctl migrating a PostgreSQL database


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two hosts running `adapterctl init` at once: the second waits, then finds nothing to do.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        context.run_migrations()


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from adapterctl.config import load_settings

    return load_settings().db_url


if context.is_offline_mode():
    context.configure(url=database_url(), target_metadata=Base.metadata, render_as_batch=True, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif "connection" in config.attributes:
    run_migrations(config.attributes["connection"])
else:
    engine = make_engine(database_url(), foreign_keys=False)
    with engine.connect() as connection:
        run_migrations(connection)
    engine.dispose()
