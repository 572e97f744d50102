"""The `MessageStore` protocol every database backend implements."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Protocol

from chat_server.models import (
    ChatMessage,
    NewMessage,
    PostResult,
    ReadMarker,
    Room,
    RoomId,
    SendChain,
    UserId,
)


class MessageStore(Protocol):
    """Rooms, their members and their numbered messages.

    Every method raises `chat_server.errors.StoreUnavailable` when the database cannot be used
    (unreachable, timed out, read-only, disk full); domain refusals are `ChatError` subclasses.
    """

    async def create_direct_room(self, creator: UserId, other: UserId) -> Room:
        """A 1:1 room of two distinct users; `RoomExists(room_id)` if the pair has one."""
        ...

    async def create_group_room(
        self, creator: UserId, name: str, member_ids: Sequence[UserId]
    ) -> Room:
        """A group room whose members are the creator and `member_ids` (deduplicated)."""
        ...

    async def get_room(self, room_id: RoomId, reader: UserId | None = None) -> Room | None:
        """The room; with `reader`, also that member's marker and unread count (a reader who
        is not a member gets None, as for a room that does not exist)."""
        ...

    async def rooms_of(self, user: UserId) -> list[Room]:
        """The user's rooms, most recent activity first, each with the user's read marker and
        unread count: one statement however many rooms (not one per room)."""
        ...

    async def is_member(self, room_id: RoomId, user: UserId) -> bool: ...

    async def add_member(
        self, room_id: RoomId, user: UserId, reader: UserId | None = None
    ) -> Room:
        """Idempotent; `RoomNotFound` for an unknown room. The room is read for `reader`."""
        ...

    async def remove_member(self, room_id: RoomId, user: UserId) -> bool:
        """True if the user was a member."""
        ...

    async def mark_read(self, room_id: RoomId, user: UserId, seq: int) -> ReadMarker:
        """Move the member's read marker forward to `seq`, in one transaction.

        A `seq` at or below the marker is accepted and changes nothing (`moved=False`, the
        marker as stored); `InvalidSeq` for a `seq` above the room's last; `NotAMember` for a
        room the user is not in (or that does not exist).
        """
        ...

    async def reads(self, room_id: RoomId) -> dict[UserId, int]:
        """Every member's read marker (0 until they read or send)."""
        ...

    def append_message(
        self, message: NewMessage, chain: SendChain | None = None
    ) -> asyncio.Future[PostResult]:
        """Store a message, numbering it with the room's next `seq` in the same transaction.

        Queued at the call, so one caller's messages are stored in call order; the future
        is done only after the transaction committed (or failed). Once an append of `chain`
        failed, the appends of that chain queued behind it fail with `NotStored`, unstored.

        Storing a message moves its sender's read marker to it, in the same transaction.
        A retried `client_message_id` (same room and sender) returns the stored row with
        `created=False` and uses no `seq`. `NotAMember` refuses it, for a room that does not
        exist just as for someone else's room.
        """
        ...

    async def messages(
        self,
        room_id: RoomId,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> list[ChatMessage]:
        """By `seq` cursor: newest first, unless `after` is given (then oldest first)."""
        ...

    async def last_seq(self, room_id: RoomId) -> int:
        """The highest `seq` stored in the room (0 for none or an unknown room)."""
        ...

    async def last_seqs(self, room_ids: Collection[RoomId]) -> dict[RoomId, int]:
        """`last_seq` of many rooms in one query (rooms that do not exist are left out)."""
        ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers."""
        ...

    async def close(self) -> None: ...
