"""Rows to models and back: the mapping the store and its batch appender share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, cast

from sqlalchemy import Row

from chat_server import codec
from chat_server.models import (
    ChatMessage,
    MessageId,
    Room,
    RoomId,
    RoomKind,
    UserHeaders,
    UserId,
)


def encode_headers(headers: UserHeaders) -> str:
    return codec.dumps([list(pair) for pair in headers]).decode()


def decode_headers(raw: str) -> UserHeaders:
    return tuple((str(name), str(value)) for name, value in codec.loads(raw))


class MessageRow(Protocol):
    """A stored message as any query reads it back: SQLAlchemy's `Row`, or the appends'
    `StoredRow` from a driver."""

    @property
    def id(self) -> int: ...
    @property
    def room_id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def sender_id(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def created_at_ms(self) -> int: ...
    @property
    def client_message_id(self) -> str | None: ...
    @property
    def headers(self) -> str: ...


def to_message(row: MessageRow | Row[Any]) -> ChatMessage:
    return ChatMessage(
        id=MessageId(row.id),
        room_id=RoomId(row.room_id),
        seq=row.seq,
        sender_id=UserId(row.sender_id),
        content=row.content,
        created_at_ms=row.created_at_ms,
        client_message_id=row.client_message_id,
        headers=decode_headers(row.headers),
    )


def to_room(row: Row[Any], member_ids: Iterable[str], *, for_reader: bool = False) -> Room:
    """A `rooms` row; `for_reader` when the query selected one member's `last_read_seq` and
    `unread_count` with it. Plain attribute reads: a room list maps hundreds of these."""
    return Room(
        id=RoomId(row.id),
        kind=RoomKind(row.kind),
        name=row.name,
        created_by=UserId(row.created_by),
        # UserId is the identity at run time: no call per member.
        member_ids=cast(tuple[UserId, ...], tuple(sorted(member_ids))),
        created_at_ms=row.created_at_ms,
        last_activity_ms=row.last_activity_ms,
        last_seq=row.last_seq,
        last_read_seq=row.last_read_seq if for_reader else 0,
        unread_count=row.unread_count if for_reader else 0,
    )


def direct_key(a: UserId, b: UserId) -> str:
    """The normalised pair that makes a direct room unique in the schema (`rooms.direct_key`)."""
    low, high = sorted((a, b))
    return f"{low}\n{high}"
