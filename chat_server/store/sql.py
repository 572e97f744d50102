"""`SqlStore`: the `MessageStore` over SQLAlchemy Core, for SQLite (aiosqlite) and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Text,
    and_,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chat_server.errors import InvalidSeq, NotAMember, RoomExists, RoomNotFound
from chat_server.models import (
    ChatMessage,
    NewMessage,
    PostResult,
    ReadMarker,
    Room,
    RoomId,
    RoomKind,
    SendChain,
    UserId,
)
from chat_server.store.appends import Append, Outcome
from chat_server.store.backend import Backend
from chat_server.store.engine import (
    POOL_TIMEOUT_S,
    backend_for,
    unavailable_on_failure,
)
from chat_server.store.group_commit import GroupCommit
from chat_server.store.rows import direct_key, to_message, to_room
from chat_server.store.schema import db_now_ms, messages, room_members, rooms


def _room_not_found(room_id: RoomId) -> RoomNotFound:
    return RoomNotFound("room not found", {"roomId": room_id})


def _unread_count() -> ColumnElement[int]:
    """Messages from others above the reader's marker, for the row's room: what lies above a
    marker is never the reader's own (schema.py, `room_members.last_read_seq`) and `seq` has no
    holes, so it is a subtraction, whatever the number of rooms or messages."""
    return (rooms.c.last_seq - room_members.c.last_read_seq).label("unread_count")


def _rooms_read_by(reader: UserId) -> Select[Any]:
    """The reader's rooms with their marker and unread count: one statement for any number."""
    return select(rooms, room_members.c.last_read_seq, _unread_count()).join_from(
        rooms,
        room_members,
        and_(room_members.c.room_id == rooms.c.id, room_members.c.user_id == reader),
    )


class SqlStore:
    """Rooms, members and numbered messages in SQLite or PostgreSQL."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._appends = GroupCommit(self._commit_batch)

    @property
    def observe_batch(self) -> Callable[[int], None]:
        """Told the size of each batch of appends committed together (a metrics hook)."""
        return self._appends.observe_batch

    @observe_batch.setter
    def observe_batch(self, observe: Callable[[int], None]) -> None:
        self._appends.observe_batch = observe

    @property
    def engine(self) -> AsyncEngine:
        return self._backend.engine

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        async with self._backend.engine.connect() as conn:
            yield conn

    # --- rooms -------------------------------------------------------------------------------

    async def _load_room(
        self, conn: AsyncConnection, room_id: RoomId, reader: UserId | None = None
    ) -> Room | None:
        query = select(rooms) if reader is None else _rooms_read_by(reader)
        row = (await conn.execute(query.where(rooms.c.id == room_id))).one_or_none()
        if row is None:
            return None
        members = await conn.scalars(
            select(room_members.c.user_id).where(room_members.c.room_id == room_id)
        )
        return to_room(row, members.all(), for_reader=reader is not None)

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
        return to_room(row, member_ids)

    async def _direct_room_id(self, conn: AsyncConnection, key: str) -> RoomId | None:
        found = await conn.scalar(select(rooms.c.id).where(rooms.c.direct_key == key))
        return None if found is None else RoomId(found)

    async def create_direct_room(self, creator: UserId, other: UserId) -> Room:
        if creator == other:
            raise ValueError("a direct room needs two distinct users")
        key = direct_key(creator, other)
        with unavailable_on_failure():
            try:
                async with self._backend.writing() as conn:
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
            async with self._backend.writing() as conn:
                return await self._insert_room(
                    conn,
                    kind=RoomKind.GROUP,
                    name=name,
                    creator=creator,
                    member_ids=members,
                    key=None,
                )

    async def get_room(self, room_id: RoomId, reader: UserId | None = None) -> Room | None:
        with unavailable_on_failure():
            async with self._reading() as conn:
                return await self._load_room(conn, room_id, reader)

    async def rooms_of(self, user: UserId) -> list[Room]:
        mine = select(room_members.c.room_id).where(room_members.c.user_id == user)
        with unavailable_on_failure():
            async with self._reading() as conn:
                room_rows = (
                    await conn.execute(
                        _rooms_read_by(user).order_by(
                            rooms.c.last_activity_ms.desc(), rooms.c.id.desc()
                        )
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
        return [to_room(row, members.get(row.id, ()), for_reader=True) for row in room_rows]

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

    async def add_member(
        self, room_id: RoomId, user: UserId, reader: UserId | None = None
    ) -> Room:
        # A member added back has read what they wrote before (room_members.last_read_seq).
        own_last = (
            select(func.coalesce(func.max(messages.c.seq), 0))
            .where(messages.c.room_id == room_id, messages.c.sender_id == user)
            .scalar_subquery()
        )
        values = {
            "room_id": room_id, "user_id": user, "joined_at_ms": db_now_ms(),
            "last_read_seq": own_last,
        }
        add = self._backend.insert_if_absent(room_members, values)  # twice is a no-op
        with unavailable_on_failure():
            async with self._backend.writing() as conn:
                if await conn.scalar(select(rooms.c.id).where(rooms.c.id == room_id)) is None:
                    raise _room_not_found(room_id)
                await conn.execute(add)
                room = await self._load_room(conn, room_id, reader)
        if room is None:  # pragma: no cover - the row was read in this very transaction
            raise _room_not_found(room_id)
        return room

    async def remove_member(self, room_id: RoomId, user: UserId) -> bool:
        with unavailable_on_failure():
            async with self._backend.writing() as conn:
                result = await conn.execute(
                    delete(room_members).where(
                        room_members.c.room_id == room_id, room_members.c.user_id == user
                    )
                )
        return result.rowcount > 0

    # --- read markers ------------------------------------------------------------------------

    async def mark_read(self, room_id: RoomId, user: UserId, seq: int) -> ReadMarker:
        member = (
            select(room_members.c.last_read_seq, rooms.c.last_seq)
            .join_from(room_members, rooms, rooms.c.id == room_members.c.room_id)
            .where(room_members.c.room_id == room_id, room_members.c.user_id == user)
        )
        mine = and_(room_members.c.room_id == room_id, room_members.c.user_id == user)
        with unavailable_on_failure():
            async with self._backend.writing() as conn:
                row = (await conn.execute(member)).one_or_none()
                if row is None:
                    raise NotAMember("not a member of this room", {"roomId": room_id})
                if seq > row.last_seq:
                    raise InvalidSeq(
                        "seq is past the room's last message",
                        {"seq": seq, "lastSeq": int(row.last_seq)},
                    )
                if seq <= row.last_read_seq:
                    return ReadMarker(room_id, user, int(row.last_read_seq), moved=False)
                # Forward only, decided by the row as it is at the UPDATE (another device's
                # read may have committed since the SELECT on PostgreSQL).
                moved = await conn.execute(
                    update(room_members)
                    .where(mine, room_members.c.last_read_seq < seq)
                    .values(last_read_seq=seq)
                )
                if moved.rowcount:
                    return ReadMarker(room_id, user, seq)
                current = await conn.scalar(select(room_members.c.last_read_seq).where(mine))
        return ReadMarker(room_id, user, int(current or seq), moved=False)

    async def reads(self, room_id: RoomId) -> dict[UserId, int]:
        with unavailable_on_failure():
            async with self._reading() as conn:
                rows = await conn.execute(
                    select(room_members.c.user_id, room_members.c.last_read_seq).where(
                        room_members.c.room_id == room_id
                    )
                )
                return {UserId(row.user_id): int(row.last_read_seq) for row in rows}

    # --- messages ----------------------------------------------------------------------------

    def append_message(
        self, message: NewMessage, chain: SendChain | None = None
    ) -> asyncio.Future[PostResult]:
        """Queued now for the next group commit; the future is done once that commit is."""
        return self._appends.append(message, chain)

    async def _commit_batch(self, appends: Sequence[Append]) -> list[Outcome]:
        # Rooms are locked before clientMessageIds are looked up (appends.py), so no unique
        # violation can race us; any failure here leaves the batch unstored and unreceipted.
        with unavailable_on_failure():
            return await self._backend.append(appends)

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
        await self._appends.close()  # answer every queued SEND before the pool goes
        await self._backend.close()


async def open_store(
    database_url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 5000,
    acquire_timeout_s: float = POOL_TIMEOUT_S,
) -> SqlStore:
    """A `SqlStore` for a contract `DATABASE_URL` whose schema is already migrated
    (`chat_server.store.migrate.migrate`); nothing connects until the first call.

    Raises ValueError for an unsupported URL and `StoreUnavailable` when a SQLite file's
    directory cannot be made.
    """
    backend = backend_for(
        database_url,
        pool_size=pool_size,
        busy_timeout_ms=busy_timeout_ms,
        acquire_timeout_s=acquire_timeout_s,
    )
    return SqlStore(backend)
