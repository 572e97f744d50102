"""Databases on the session's private PostgreSQL: one shared database emptied before each test,
and fresh empty ones for the tests that migrate from nothing.

Emptying (TRUNCATE ... RESTART IDENTITY) takes about 20 ms; copying a database takes ten times
that, so most tests share one migrated database and start from empty tables with ids from 1,
exactly as a new SQLite file would.
"""

from __future__ import annotations

import itertools

from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from chat_server.store.migrate import migrate
from tests.services import PostgresServer

#: The store's tables, emptied before each test (never dropped: the schema stays migrated).
STORE_TABLES = ("messages", "room_members", "rooms")


class PostgresDatabases:
    """The databases of one server, for the tests of one session."""

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self._names = itertools.count(1)
        self._migrated = False

    def url_of(self, database: str) -> str:
        """The contract `DATABASE_URL` of a database on this server."""
        server = self.server
        return f"postgresql://{server.SUPERUSER}@{server.host}:{server.port}/{database}"

    @property
    def shared_url(self) -> str:
        return self.url_of(self.server.database)

    def _engine(self, database: str) -> AsyncEngine:
        # No pool: every engine lives in one test's event loop only.
        return create_async_engine(
            make_url(self.url_of(database)).set(drivername="postgresql+asyncpg"),
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )

    async def _execute(self, database: str, *statements: str) -> None:
        engine = self._engine(database)
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.exec_driver_sql(statement)
        finally:
            await engine.dispose()

    async def empty_shared(self) -> str:
        """The shared database, migrated, with every store table empty; its URL.

        Connections a previous test left behind are closed first, so TRUNCATE never waits.
        """
        if not self._migrated:
            await migrate(self.shared_url)
            self._migrated = True
        await self._execute(
            self.server.database,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
            f"TRUNCATE {', '.join(STORE_TABLES)} RESTART IDENTITY CASCADE",
        )
        return self.shared_url

    async def create_empty(self) -> str:
        """A new database without any table (not even Alembic's), and its URL."""
        name = f"fresh_{next(self._names)}"
        await self._execute("postgres", f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url_of(name)

    async def drop(self, url: str) -> None:
        """Drops the database of `url`, closing whatever is still connected to it."""
        name = make_url(url).database
        await self._execute("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
