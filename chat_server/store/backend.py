"""The `Backend` protocol: what differs between SQLite and PostgreSQL, behind one interface."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from sqlalchemy import Insert, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat_server.store.appends import Append, Outcome


class Backend(Protocol):
    """One database engine's way of connecting, writing and closing; chosen once per URL."""

    @property
    def engine(self) -> AsyncEngine:
        """The pooled async engine every read goes through."""
        ...

    def writing(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """One write transaction: committed on exit, rolled back on any exception."""
        ...

    async def append(self, appends: Sequence[Append]) -> list[Outcome]:
        """`append_batch` (appends.py) run whole inside one write transaction, committed
        before this returns; raises whatever the driver raised, with nothing stored."""
        ...

    def insert_if_absent(self, table: Table, values: Mapping[str, Any]) -> Insert:
        """`INSERT ... ON CONFLICT DO NOTHING`: a duplicate is skipped, no statement fails
        (a failed statement would abort the whole transaction on PostgreSQL)."""
        ...

    async def before_migration(self, conn: AsyncConnection) -> None:
        """Inside the migration's transaction, before it: make concurrent migrators queue."""
        ...

    async def after_migration(self, conn: AsyncConnection) -> None:
        """Inside the migration's transaction, after it: check what the database cannot."""
        ...

    async def close(self) -> None:
        """Release every connection and thread."""
        ...
