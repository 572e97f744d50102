"""PostgreSQL specifics: `PostgresBackend`, the asyncpg pool's settings and its migration lock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from sqlalchemy import Insert, Table, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chat_server.store.appends import Append, Outcome
from chat_server.store.postgres_appends import PostgresAppender

#: Connecting, and any one statement, may take at most this long.
PG_CONNECT_TIMEOUT_S: Final = 5.0
PG_COMMAND_TIMEOUT_S: Final = 30.0

# pg_advisory_xact_lock key: workers that start together migrate one after another.
_MIGRATION_LOCK: Final = 0x63686174_6D696772  # "chatmigr"


class PostgresBackend:
    """PostgreSQL through asyncpg: row locks order concurrent writers, so a write transaction
    needs nothing beyond a plain `BEGIN`."""

    def __init__(self, url: str, *, pool_size: int, acquire_timeout_s: float) -> None:
        connect_args = {
            "timeout": PG_CONNECT_TIMEOUT_S,
            "command_timeout": PG_COMMAND_TIMEOUT_S,
            "server_settings": {"application_name": "chat_server"},
        }
        self._engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=acquire_timeout_s,
            # A connection broken by a restart or failover is replaced, not handed out.
            pool_pre_ping=True,
            connect_args=connect_args,
        )
        # The appends' own connection, beside the pool as SQLite's writer is: held from the
        # first append until `close`, so no batch pays a checkout and its pre-ping, and a pool
        # of readers never starves the appends (nor they it). A broken one is replaced.
        self._append_engine = create_async_engine(
            url, pool_size=1, max_overflow=0, pool_timeout=acquire_timeout_s,
            connect_args=connect_args,
        )
        self._appender = PostgresAppender(self._append_engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.begin() as conn:
            yield conn

    async def append(self, appends: Sequence[Append]) -> list[Outcome]:
        return await self._appender.append(appends)

    def insert_if_absent(self, table: Table, values: Mapping[str, Any]) -> Insert:
        return pg_dialect.insert(table).values(values).on_conflict_do_nothing()

    async def before_migration(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})

    async def after_migration(self, conn: AsyncConnection) -> None:
        """Nothing to check: PostgreSQL enforces foreign keys throughout."""

    async def close(self) -> None:
        await self._appender.close()
        await self._append_engine.dispose()
        await self._engine.dispose()
