"""Alembic environment: runs migrations on the connection that `migrate()` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from chat_server.store.schema import metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite: ALTERs become "copy into a new table" so later migrations can change columns.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    # The caller already opened the transaction (and holds the migration lock): this joins it.
    with context.begin_transaction():
        context.run_migrations()


def _handed_connection() -> Connection:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "migrations run through `chat-server migrate` (chat_server.store.migrate.migrate), "
            "which hands its connection to this script; the bare alembic CLI is not wired up"
        )
    return connection


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
run_migrations(_handed_connection())
