"""Rows to models and back: the mapping the store and its batch appender share."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Row

from chat_server.models import ChatMessage, MessageId, RoomId, UserHeaders, UserId


def encode_headers(headers: UserHeaders) -> str:
    return orjson.dumps([list(pair) for pair in headers]).decode()


def decode_headers(raw: str) -> UserHeaders:
    return tuple((str(name), str(value)) for name, value in orjson.loads(raw))


def to_message(row: Row[Any]) -> ChatMessage:
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
