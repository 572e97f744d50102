"""Apply the Alembic migrations to head, in code, through the async engine."""

from __future__ import annotations

import pathlib
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from chat_server.store.closing import close_fully
from chat_server.store.engine import backend_for, unavailable_on_failure

MIGRATIONS_DIR: Final = pathlib.Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """The Alembic configuration, built in code: no alembic.ini is needed at run time."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None before the first migration)."""
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    # env.py runs the migrations on this connection, inside our transaction.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(database_url: str, *, busy_timeout_ms: int = 5000) -> None:
    """Bring the database to the newest schema; a no-op when it already is.

    Raises `StoreUnavailable` when the database cannot be reached or written.
    """
    # Foreign keys off on SQLite: batch migrations rebuild tables, and dropping the old copy
    # would otherwise cascade deletes into child tables; the backend verifies them after.
    backend = backend_for(
        database_url, pool_size=1, busy_timeout_ms=busy_timeout_ms, foreign_keys=False
    )
    try:
        with unavailable_on_failure():
            # One transaction for the whole upgrade (both databases have transactional DDL),
            # begun IMMEDIATE on SQLite so that concurrent migrators queue instead of failing.
            async with backend.writing() as conn:
                await backend.before_migration(conn)
                await conn.run_sync(_upgrade)
                await backend.after_migration(conn)
    finally:
        await close_fully(backend.close())
