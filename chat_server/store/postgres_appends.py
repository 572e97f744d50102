"""`PostgresAppender`: the batch append on one held asyncpg connection, with its statements
prepared once per connection.

Through `AsyncConnection.run_sync` every statement crossed SQLAlchemy's execution machinery
and a greenlet switch, and each batch checked a connection out of the pool (a pre-ping, three
round trips). Here a batch is `BEGIN`, six prepared statements and `COMMIT`. Sets of keys
travel as arrays read with `unnest`: one statement for any batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat_server.errors import StoreUnavailable
from chat_server.models import RoomId, UserId
from chat_server.store.appends import (
    Append,
    Member,
    NewRow,
    Outcome,
    Position,
    RetryKey,
    StoredRow,
    append_batch_async,
    selected_message_columns,
)
from chat_server.store.schema import db_now_ms

# The one definition of the database's clock (schema.py), as PostgreSQL text.
_NOW: Final = str(db_now_ms().compile(dialect=PGDialect()))  # type: ignore[no-untyped-call]

# Ascending id, so two workers' batches lock their common rooms in one order: no deadlock.
_LOCK_ROOMS: Final = "SELECT id FROM rooms WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE"
_MEMBERS: Final = (
    "SELECT m.room_id, m.user_id FROM unnest($1::bigint[], $2::text[]) AS p(room_id, user_id)"
    " JOIN room_members AS m ON m.room_id = p.room_id AND m.user_id = p.user_id"
)
_RETRIES: Final = (
    "SELECT " + selected_message_columns("m")
    + " FROM unnest($1::bigint[], $2::text[], $3::text[]) AS k(room_id, sender_id, cmid)"
    " JOIN messages AS m ON m.room_id = k.room_id AND m.sender_id = k.sender_id"
    " AND m.client_message_id = k.cmid"
)
_TAKE_SEQS: Final = (
    f"UPDATE rooms SET last_seq = rooms.last_seq + c.n, last_activity_ms = {_NOW}"
    " FROM unnest($1::bigint[], $2::bigint[]) AS c(id, n) WHERE rooms.id = c.id"
    " RETURNING rooms.id, rooms.last_seq, rooms.last_activity_ms"
)
_INSERT: Final = (
    "INSERT INTO messages"
    " (room_id, seq, sender_id, content, client_message_id, headers, created_at_ms)"
    " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::bigint[]) RETURNING id, room_id, seq"
)
_MOVE_MARKERS: Final = (
    "UPDATE room_members AS m SET last_read_seq = c.seq"
    " FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS c(room_id, user_id, seq)"
    " WHERE m.room_id = c.room_id AND m.user_id = c.user_id AND m.last_read_seq < c.seq"
)
_STATEMENTS: Final = (_LOCK_ROOMS, _MEMBERS, _RETRIES, _TAKE_SEQS, _INSERT, _MOVE_MARKERS)

# What the driver raises for a broken, busy or unreachable server (SQLAlchemy's own wrapping
# is bypassed here); a timeout is an OSError.
_DRIVER_FAILURES: Final[tuple[type[BaseException], ...]] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)


class Prepared(Protocol):
    """What we use of asyncpg's `PreparedStatement`."""

    async def fetch(self, *args: Any) -> list[Any]: ...


class Driver(Protocol):
    """What we use of asyncpg's `Connection` (typed here: asyncpg ships no type hints)."""

    async def prepare(self, query: str) -> Prepared: ...

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


class PostgresAppends:
    """`AsyncAppendExecutor` over one connection's prepared statements, inside its transaction."""

    def __init__(self, prepared: Mapping[str, Prepared]) -> None:
        self._prepared = prepared

    async def _fetch(self, statement: str, *columns: Sequence[Any]) -> list[Any]:
        return await self._prepared[statement].fetch(*columns)

    async def lock_rooms(self, room_ids: Sequence[RoomId]) -> None:
        await self._fetch(_LOCK_ROOMS, room_ids)

    async def members(self, candidates: Sequence[Member]) -> list[Member]:
        rooms, users = zip(*candidates, strict=True)
        rows = await self._fetch(_MEMBERS, rooms, users)
        return [(row[0], row[1]) for row in rows]

    async def stored_retries(self, keys: Sequence[RetryKey]) -> list[StoredRow]:
        rooms, senders, cmids = zip(*keys, strict=True)
        return [StoredRow(*row) for row in await self._fetch(_RETRIES, rooms, senders, cmids)]

    async def take_seqs(self, counts: Sequence[tuple[RoomId, int]]) -> dict[RoomId, Position]:
        rooms, numbers = zip(*counts, strict=True)
        rows = await self._fetch(_TAKE_SEQS, rooms, numbers)
        return {row[0]: (row[1], row[2]) for row in rows}

    async def insert(self, rows: Sequence[NewRow]) -> dict[tuple[RoomId, int], int]:
        # RETURNING's order is not promised: each id is matched by its (room, seq).
        found = await self._fetch(_INSERT, *zip(*rows, strict=True))
        return {(row[1], row[2]): row[0] for row in found}

    async def move_markers(self, marks: Sequence[tuple[RoomId, UserId, int]]) -> None:
        await self._fetch(_MOVE_MARKERS, *zip(*marks, strict=True))


class PostgresAppender:
    """Appends of one process, one batch at a time, on one connection of `engine`, held.

    The connection and its prepared statements are dropped after any failure (the server may
    have gone, or a migration changed a table under the statements); the next batch checks out
    a fresh connection and prepares them again.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._held: AsyncConnection | None = None
        self._driver: Driver | None = None
        self._prepared: dict[str, Prepared] = {}
        self._lock = asyncio.Lock()

    async def append(self, appends: Sequence[Append]) -> list[Outcome]:
        """Raises `StoreUnavailable` when the database failed; nothing of the batch is stored."""
        async with self._lock:
            try:
                driver = await self._connection()
                async with driver.transaction():
                    return await append_batch_async(PostgresAppends(self._prepared), appends)
            except _DRIVER_FAILURES as exc:
                await self._drop()
                # The message names the kind only: driver text may carry SQL and parameters.
                raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc
            except BaseException:
                await self._drop()
                raise

    async def _connection(self) -> Driver:
        if self._driver is None:
            held = await self._engine.connect()
            self._held = held
            raw = await held.get_raw_connection()
            driver: Driver | None = raw.driver_connection
            assert driver is not None  # an asyncpg connection, once checked out
            self._prepared = {sql: await driver.prepare(sql) for sql in _STATEMENTS}
            self._driver = driver
        return self._driver

    async def _drop(self) -> None:
        held, self._held, self._driver, self._prepared = self._held, None, None, {}
        if held is not None:
            try:
                await held.invalidate()
            finally:
                await held.close()

    async def close(self) -> None:
        async with self._lock:
            held, self._held, self._driver, self._prepared = self._held, None, None, {}
            if held is not None:
                await held.close()
