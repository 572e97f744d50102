"""`SqlStore`: the `MessageStore` over SQLAlchemy Core, for SQLite (aiosqlite) and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Row,
    Text,
    delete,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chat_server.errors import ChatError, NotStored, RoomExists, RoomNotFound, StoreUnavailable
from chat_server.models import (
    ChatMessage,
    NewMessage,
    PostResult,
    Room,
    RoomId,
    RoomKind,
    SendChain,
    UserId,
)
from chat_server.store.appends import Append, Outcome, append_batch
from chat_server.store.rows import to_message
from chat_server.store.schema import db_now_ms, messages, room_members, rooms
from chat_server.store.sqlite import SQLITE_BEGIN_OPTION, SqliteWriter, install_sqlite_hooks
from chat_server.store.urls import engine_url, sqlite_path

#: Messages committed in one transaction at most (group commit under load).
MAX_APPEND_BATCH: Final = 256
#: Longest wait for a pooled connection before the request is refused (no unbounded queue);
#: the default of the `db_acquire_timeout_s` setting.
POOL_TIMEOUT_S: Final = 5.0
#: PostgreSQL: connecting, and any one statement, may take at most this long.
PG_CONNECT_TIMEOUT_S: Final = 5.0
PG_COMMAND_TIMEOUT_S: Final = 30.0

# What a broken, busy, full or unreachable database raises; `IntegrityError` is handled
# before this wherever it has a domain meaning.
_DATABASE_FAILURES: Final[tuple[type[BaseException], ...]] = (
    SQLAlchemyError,
    sqlite3.Error,
    OSError,  # includes ConnectionError and TimeoutError
)


@contextmanager
def unavailable_on_failure() -> Iterator[None]:
    """Re-raise any database failure as `StoreUnavailable` (the cause stays chained)."""
    try:
        yield
    except _DATABASE_FAILURES as exc:
        # The message names the kind only: driver text may carry SQL and parameters.
        raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc


def build_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 5000,
    foreign_keys: bool = True,
    acquire_timeout_s: float = POOL_TIMEOUT_S,
) -> AsyncEngine:
    """An async engine for a contract `DATABASE_URL`, with our per-connection SQLite settings.

    `foreign_keys=False` is for migrations only: SQLite batch table rebuilds would otherwise
    cascade deletes into child tables.
    """
    url = engine_url(database_url)
    path = sqlite_path(database_url)
    if path is None:
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=acquire_timeout_s,
            # A connection broken by a restart or failover is replaced, not handed out.
            pool_pre_ping=True,
            connect_args={
                "timeout": PG_CONNECT_TIMEOUT_S,
                "command_timeout": PG_COMMAND_TIMEOUT_S,
                "server_settings": {"application_name": "chat_server"},
            },
        )
    with unavailable_on_failure():
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=acquire_timeout_s,
        connect_args={"timeout": busy_timeout_ms / 1000},
    )
    install_sqlite_hooks(engine.sync_engine, busy_timeout_ms, foreign_keys)
    return engine


def for_writes(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool), whose transactions start with `BEGIN IMMEDIATE` on SQLite."""
    return engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})


def direct_key(a: UserId, b: UserId) -> str:
    """The normalised pair that makes a direct room unique in the schema."""
    low, high = sorted((a, b))
    return f"{low}\n{high}"








def _to_room(row: Row[Any], member_ids: Iterable[str]) -> Room:
    return Room(
        id=RoomId(row.id),
        kind=RoomKind(row.kind),
        name=row.name,
        created_by=UserId(row.created_by),
        member_ids=tuple(sorted(UserId(member) for member in member_ids)),
        created_at_ms=row.created_at_ms,
        last_activity_ms=row.last_activity_ms,
    )


def _room_not_found(room_id: RoomId) -> RoomNotFound:
    return RoomNotFound("room not found", {"roomId": room_id})


class SqlStore:
    """Rooms, members and numbered messages in SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine, sqlite_writer: SqliteWriter | None = None) -> None:
        self._engine = engine
        #: SQLite: appends commit in a thread of their own, one trip per batch.
        self._sqlite_writer = sqlite_writer
        self._writer = for_writes(engine)
        self._is_sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time anyway: queueing this process's writers here spares
        # them the busy handler's sleep-and-retry. BEGIN IMMEDIATE still orders other processes.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self._is_sqlite else None
        self._appends: list[tuple[Append, asyncio.Future[PostResult]]] = []
        #: Chains that failed, while appends of theirs are still queued.
        self._broken: set[int] = set()
        self._appender: asyncio.Task[None] | None = None
        #: Told the size of each batch of appends committed together (a metrics hook).
        self.observe_batch: Callable[[int], None] = lambda _size: None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on exit, rolled back on any exception."""
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
        else:
            async with self._write_lock, self._writer.begin() as conn:
                yield conn

    # --- rooms -------------------------------------------------------------------------------

    async def _load_room(self, conn: AsyncConnection, room_id: RoomId) -> Room | None:
        row = (await conn.execute(select(rooms).where(rooms.c.id == room_id))).one_or_none()
        if row is None:
            return None
        members = await conn.scalars(
            select(room_members.c.user_id).where(room_members.c.room_id == room_id)
        )
        return _to_room(row, members.all())

    async def _insert_room(
        self,
        conn: AsyncConnection,
        *,
        kind: RoomKind,
        name: str | None,
        creator: UserId,
        member_ids: Sequence[UserId],
        key: str | None,
    ) -> Room:
        # The clock is read once (in a subquery) so created_at and last_activity are equal;
        # PostgreSQL's clock_timestamp() would differ between two calls in one statement.
        clock = select(db_now_ms().label("now_ms")).subquery()
        source = select(
            literal(kind.value, Text),
            literal(name, Text),
            literal(creator, Text),
            clock.c.now_ms,
            clock.c.now_ms,
            literal(0, BigInteger),
            literal(key, Text),
        )
        columns = [
            "kind",
            "name",
            "created_by",
            "created_at_ms",
            "last_activity_ms",
            "last_seq",
            "direct_key",
        ]
        row = (
            await conn.execute(insert(rooms).from_select(columns, source).returning(*rooms.c))
        ).one()
        await conn.execute(
            insert(room_members),
            [
                {"room_id": row.id, "user_id": member, "joined_at_ms": row.created_at_ms}
                for member in member_ids
            ],
        )
        return _to_room(row, member_ids)

    async def _direct_room_id(self, conn: AsyncConnection, key: str) -> RoomId | None:
        found = await conn.scalar(select(rooms.c.id).where(rooms.c.direct_key == key))
        return None if found is None else RoomId(found)

    async def create_direct_room(self, creator: UserId, other: UserId) -> Room:
        if creator == other:
            raise ValueError("a direct room needs two distinct users")
        key = direct_key(creator, other)
        with unavailable_on_failure():
            try:
                async with self._writing() as conn:
                    existing = await self._direct_room_id(conn, key)
                    if existing is not None:
                        raise RoomExists(existing)
                    return await self._insert_room(
                        conn,
                        kind=RoomKind.DIRECT,
                        name=None,
                        creator=creator,
                        member_ids=(creator, other),
                        key=key,
                    )
            except IntegrityError:
                # A concurrent create of the same pair committed first (PostgreSQL; on SQLite
                # BEGIN IMMEDIATE already serialised us behind it).
                async with self._reading() as conn:
                    existing = await self._direct_room_id(conn, key)
                if existing is None:
                    raise
                raise RoomExists(existing) from None

    async def create_group_room(
        self, creator: UserId, name: str, member_ids: Sequence[UserId]
    ) -> Room:
        members = list(dict.fromkeys([creator, *member_ids]))
        with unavailable_on_failure():
            async with self._writing() as conn:
                return await self._insert_room(
                    conn,
                    kind=RoomKind.GROUP,
                    name=name,
                    creator=creator,
                    member_ids=members,
                    key=None,
                )

    async def get_room(self, room_id: RoomId) -> Room | None:
        with unavailable_on_failure():
            async with self._reading() as conn:
                return await self._load_room(conn, room_id)

    async def rooms_of(self, user: UserId) -> list[Room]:
        mine = select(room_members.c.room_id).where(room_members.c.user_id == user)
        with unavailable_on_failure():
            async with self._reading() as conn:
                room_rows = (
                    await conn.execute(
                        select(rooms)
                        .where(rooms.c.id.in_(mine))
                        .order_by(rooms.c.last_activity_ms.desc(), rooms.c.id.desc())
                    )
                ).all()
                member_rows = (
                    await conn.execute(
                        select(room_members.c.room_id, room_members.c.user_id).where(
                            room_members.c.room_id.in_(mine)
                        )
                    )
                ).all()
        members: dict[int, list[str]] = {}
        for member in member_rows:
            members.setdefault(member.room_id, []).append(member.user_id)
        return [_to_room(row, members.get(row.id, ())) for row in room_rows]

    # --- membership --------------------------------------------------------------------------

    async def _has_member(self, conn: AsyncConnection, room_id: RoomId, user: UserId) -> bool:
        found = await conn.scalar(
            select(room_members.c.user_id).where(
                room_members.c.room_id == room_id, room_members.c.user_id == user
            )
        )
        return found is not None

    async def is_member(self, room_id: RoomId, user: UserId) -> bool:
        with unavailable_on_failure():
            async with self._reading() as conn:
                return await self._has_member(conn, room_id, user)

    async def add_member(self, room_id: RoomId, user: UserId) -> Room:
        values = {"room_id": room_id, "user_id": user, "joined_at_ms": db_now_ms()}
        dialect_insert = sqlite_dialect.insert if self._is_sqlite else pg_dialect.insert
        # ON CONFLICT DO NOTHING: adding a member twice is a no-op, with no failed statement
        # (which would abort the whole transaction on PostgreSQL).
        add = dialect_insert(room_members).values(values).on_conflict_do_nothing()
        with unavailable_on_failure():
            async with self._writing() as conn:
                if await conn.scalar(select(rooms.c.id).where(rooms.c.id == room_id)) is None:
                    raise _room_not_found(room_id)
                await conn.execute(add)
                room = await self._load_room(conn, room_id)
        if room is None:  # pragma: no cover - the row was read in this very transaction
            raise _room_not_found(room_id)
        return room

    async def remove_member(self, room_id: RoomId, user: UserId) -> bool:
        with unavailable_on_failure():
            async with self._writing() as conn:
                result = await conn.execute(
                    delete(room_members).where(
                        room_members.c.room_id == room_id, room_members.c.user_id == user
                    )
                )
        return result.rowcount > 0

    # --- messages ----------------------------------------------------------------------------

    def append_message(
        self, message: NewMessage, chain: SendChain | None = None
    ) -> asyncio.Future[PostResult]:
        """Queued now for the next group commit; the future is done once that commit is."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[PostResult] = loop.create_future()
        self._appends.append(((message, chain), answer))
        if self._appender is None or self._appender.done():
            self._appender = loop.create_task(self._append_queued())
        return answer

    async def _append_queued(self) -> None:
        """Commit what queued up, in order, while the previous commit ran: one transaction
        and one fsync for many SENDs under load, a batch of one when idle."""
        while self._appends:
            batch = self._appends[:MAX_APPEND_BATCH]
            del self._appends[:MAX_APPEND_BATCH]
            self.observe_batch(len(batch))
            try:
                outcomes = await self._commit_batch(
                    ([append for append, _ in batch], frozenset(self._broken))
                )
            except BaseException as exc:
                for (_, chain), answer in batch:
                    if chain is not None:
                        self._broken.add(chain.id)  # outcome unknown: store nothing after it
                    if not answer.done():
                        answer.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                self._prune_broken()
                continue
            for ((_, chain), answer), outcome in zip(batch, outcomes, strict=True):
                if (
                    chain is not None
                    and isinstance(outcome, ChatError)
                    and (chain.stop_on_refusal or isinstance(outcome, NotStored))
                ):
                    self._broken.add(chain.id)
                if answer.done():
                    continue  # its sender went away; the message is stored all the same
                if isinstance(outcome, PostResult):
                    answer.set_result(outcome)
                else:
                    answer.set_exception(outcome)

            self._prune_broken()

    def _prune_broken(self) -> None:
        if self._broken:
            queued = {chain.id for (_, chain), _ in self._appends if chain is not None}
            self._broken &= queued

    async def _commit_batch(
        self, batch: tuple[list[Append], frozenset[int]]
    ) -> list[Outcome]:
        # Rooms are locked before clientMessageIds are looked up (appends.py), so no unique
        # violation can race us; any failure here leaves the batch unstored and unreceipted.
        with unavailable_on_failure():
            if self._sqlite_writer is not None:
                assert self._write_lock is not None
                async with self._write_lock:
                    return await self._sqlite_writer.run(append_batch, batch)
            async with self._writing() as conn:
                return await conn.run_sync(append_batch, batch)

    async def messages(
        self,
        room_id: RoomId,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> list[ChatMessage]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = select(messages).where(messages.c.room_id == room_id)
        if before is not None:
            query = query.where(messages.c.seq < before)
        if after is not None:
            query = query.where(messages.c.seq > after).order_by(messages.c.seq.asc())
        else:
            query = query.order_by(messages.c.seq.desc())
        with unavailable_on_failure():
            async with self._reading() as conn:
                rows = (await conn.execute(query.limit(limit))).all()
        return [to_message(row) for row in rows]

    async def last_seq(self, room_id: RoomId) -> int:
        with unavailable_on_failure():
            async with self._reading() as conn:
                found = await conn.scalar(select(rooms.c.last_seq).where(rooms.c.id == room_id))
        return 0 if found is None else int(found)

    async def last_seqs(self, room_ids: Collection[RoomId]) -> dict[RoomId, int]:
        ids = list(room_ids)
        found: dict[RoomId, int] = {}
        with unavailable_on_failure():
            async with self._reading() as conn:
                # Chunked: SQLite bounds the number of bound parameters in one statement.
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    rows = await conn.execute(
                        select(rooms.c.id, rooms.c.last_seq).where(rooms.c.id.in_(chunk))
                    )
                    found.update({RoomId(int(row.id)): int(row.last_seq) for row in rows})
        return found

    # --- lifecycle ---------------------------------------------------------------------------

    async def ping(self) -> None:
        with unavailable_on_failure():
            async with self._reading() as conn:
                await conn.execute(select(1))

    async def close(self) -> None:
        if self._appender is not None and not self._appender.done():
            await self._appender  # answer every queued SEND before the pool goes
        if self._sqlite_writer is not None:
            await self._sqlite_writer.close()
        await self._engine.dispose()


async def open_store(
    database_url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 5000,
    acquire_timeout_s: float = POOL_TIMEOUT_S,
    migrate: bool = False,
) -> SqlStore:
    """A `SqlStore` for a contract `DATABASE_URL`; `migrate=True` first applies migrations.

    Raises ValueError for an unsupported URL and `StoreUnavailable` when `migrate` cannot
    reach the database. Without `migrate` nothing connects until the first call.
    """
    if migrate:
        # Imported here: Alembic is only needed when migrating (and migrate.py uses this module).
        from chat_server.store.migrate import migrate as apply_migrations

        await apply_migrations(database_url, busy_timeout_ms=busy_timeout_ms)
    engine = build_engine(
        database_url,
        pool_size=pool_size,
        busy_timeout_ms=busy_timeout_ms,
        acquire_timeout_s=acquire_timeout_s,
    )
    path = sqlite_path(database_url)
    writer = None if path is None else SqliteWriter(str(path), busy_timeout_ms)
    return SqlStore(engine, writer)
