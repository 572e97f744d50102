"""Domain values shared by every layer: ids, rooms, chat messages and their wire codec."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NewType

from chat_server import codec

RoomId = NewType("RoomId", int)
UserId = NewType("UserId", str)
MessageId = NewType("MessageId", int)

#: User headers (`x-...`) carried with a message, in the order the sender gave them.
UserHeaders = tuple[tuple[str, str], ...]


class RoomKind(StrEnum):
    DIRECT = "direct"
    GROUP = "group"


#: The last second formatted, with its text up to the milliseconds: under load most messages
#: share their second, and formatting one took longer than the rest of its JSON body.
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00.")


def format_timestamp(epoch_ms: int) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. `2026-11-24T10:00:00.123Z`."""
    global _last_second
    seconds, millis = divmod(epoch_ms, 1000)
    cached, prefix = _last_second  # one tuple: read and replaced whole, whoever calls
    if seconds != cached:
        moment = datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None)
        prefix = moment.isoformat(timespec="seconds") + "."  # four-digit years, unlike %Y
        _last_second = (seconds, prefix)
    return f"{prefix}{millis:03d}Z"


@dataclass(frozen=True, slots=True)
class Room:
    id: RoomId
    kind: RoomKind
    name: str | None
    created_by: UserId
    member_ids: tuple[UserId, ...]
    created_at_ms: int
    last_activity_ms: int
    #: The room's highest `seq` (0 while it has no message).
    last_seq: int = 0
    #: The reader's side (the member the room was read for; 0 when read for nobody): their
    #: read marker, and how many messages from others lie above it.
    last_read_seq: int = 0
    unread_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "name": self.name,
            "createdBy": self.created_by,
            "memberIds": list(self.member_ids),
            "createdAt": format_timestamp(self.created_at_ms),
            "lastActivityAt": format_timestamp(self.last_activity_ms),
            "lastSeq": self.last_seq,
            "lastReadSeq": self.last_read_seq,
            "unreadCount": self.unread_count,
        }


@dataclass(frozen=True, slots=True)
class SendChain:
    """One connection's burst of pipelined SENDs, named so the group commit can stop it.

    Once one append of a chain fails (refused with `stop_on_refusal`, or its transaction
    failed), the appends of the same chain still queued behind it are answered `NotStored`,
    unstored: nothing is stored that a connection sending one SEND at a time would not have.
    """

    id: int
    stop_on_refusal: bool = True


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message as the sender asked for it, before the database numbers it."""

    room_id: RoomId
    sender_id: UserId
    content: str
    client_message_id: str | None = None
    headers: UserHeaders = ()


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A stored message: `id` and `seq` and `created_at_ms` come from the database."""

    id: MessageId
    room_id: RoomId
    seq: int
    sender_id: UserId
    content: str
    created_at_ms: int
    client_message_id: str | None = None
    headers: UserHeaders = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "chatRoomId": self.room_id,
            "seq": self.seq,
            "senderId": self.sender_id,
            "content": self.content,
            "createdAt": format_timestamp(self.created_at_ms),
        }
        if self.client_message_id is not None:
            body["clientMessageId"] = self.client_message_id
        return body

    def body_bytes(self) -> bytes:
        """The contract's JSON body, as sent in every `MESSAGE` and REST answer."""
        return codec.dumps(self.to_json())


@dataclass(frozen=True, slots=True)
class PostResult:
    """The outcome of storing a message: `created` is False for a retried `clientMessageId`."""

    message: ChatMessage
    created: bool


# --- Envelope: what travels through the broker between workers -----------------------------


def encode_envelope(message: ChatMessage) -> bytes:
    """Serialize a stored message once for the broker (the same bytes go to every worker)."""
    return codec.dumps(
        {
            "id": message.id,
            "room": message.room_id,
            "seq": message.seq,
            "sender": message.sender_id,
            "content": message.content,
            "at": message.created_at_ms,
            "cmid": message.client_message_id,
            "hdrs": [list(pair) for pair in message.headers],
        }
    )


def decode_envelope(payload: bytes) -> ChatMessage:
    """Inverse of `encode_envelope`; raises ValueError (or KeyError/TypeError) on garbage."""
    raw = codec.loads(payload)
    return ChatMessage(
        id=MessageId(int(raw["id"])),
        room_id=RoomId(int(raw["room"])),
        seq=int(raw["seq"]),
        sender_id=UserId(str(raw["sender"])),
        content=str(raw["content"]),
        created_at_ms=int(raw["at"]),
        client_message_id=raw["cmid"],
        headers=tuple((str(name), str(value)) for name, value in raw["hdrs"]),
    )


# --- User events: notifications for one user, on every worker ---------------------------------


class UserEventKind(StrEnum):
    ROOM_ADDED = "room_added"
    ROOM_REMOVED = "room_removed"
    #: The user's read marker in a room moved (on another of their connections, or by REST).
    READ = "read"


@dataclass(frozen=True, slots=True)
class UserEvent:
    kind: UserEventKind
    room_id: RoomId
    #: The JSON body a client receives on `/user/queue/notifications`.
    payload: bytes


def encode_user_event(kind: UserEventKind, room: Room) -> bytes:
    body: dict[str, Any] = {"type": kind.value, "roomId": room.id}
    if kind is UserEventKind.ROOM_ADDED:
        body["room"] = room.to_json()
    return codec.dumps(body)


def encode_read_event(marker: ReadMarker) -> bytes:
    """`{"type": "read", "roomId": 1, "seq": 42}` for the user's `/user/queue/notifications`."""
    return codec.dumps(
        {"type": UserEventKind.READ.value, "roomId": marker.room_id, "seq": marker.seq}
    )


def decode_user_event(payload: bytes) -> UserEvent:
    raw = codec.loads(payload)
    return UserEvent(UserEventKind(raw["type"]), RoomId(int(raw["roomId"])), payload)


# --- Read markers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadMarker:
    """A member's read marker in a room after a read: `moved` is False when it was at `seq` or
    beyond already (a lower `seq` is accepted and changes nothing)."""

    room_id: RoomId
    user_id: UserId
    seq: int
    moved: bool = True


# --- Requests, as validated at the edge (schemas.py) -------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageDraft:
    """A message someone asks to post; the sender comes from the session, never the body."""

    room_id: RoomId
    content: str
    client_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class TypingSignal:
    """`SEND /app/typing` body: `{"chatRoomId": 1, "typing": true}`."""

    room_id: RoomId
    typing: bool


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """`SEND /app/read` body `{"chatRoomId": 1, "seq": 42}` (REST: the room from the path)."""

    room_id: RoomId
    seq: int


@dataclass(frozen=True, slots=True)
class GroupRoomRequest:
    name: str
    member_ids: tuple[UserId, ...]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    before: int | None = None
    after: int | None = None
    limit: int = 50
