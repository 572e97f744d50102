"""Marshmallow schemas: untrusted JSON in, validated models out (the only marshmallow import)."""

from __future__ import annotations

import functools
import json
import unicodedata
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates

from chat_server.auth import valid_user_id
from chat_server.errors import MalformedRequest, ValidationFailed
from chat_server.models import (
    GroupRoomRequest,
    HistoryQuery,
    MessageDraft,
    ReadRequest,
    RoomId,
    TypingSignal,
    UserId,
)

#: Ids are 64-bit database keys; anything larger cannot name a row (BAD_INPUTS A7, R10).
MAX_ID = 2**63 - 1
MAX_CLIENT_MESSAGE_ID = 128
MAX_ROOM_NAME = 100
MAX_GROUP_MEMBERS = 100
MAX_HISTORY_LIMIT = 100
ZERO_WIDTH_JOINER = "\u200d"
# C0 controls other than tab and newline have no place in chat text (BAD_INPUTS F25, R11).
_FORBIDDEN_CONTROLS = frozenset(chr(c) for c in range(0x20) if chr(c) not in "\t\n") | {"\x7f"}


class StrictInteger(fields.Integer):
    """An integer that is a JSON integer: not `true`, not `1.0`, not `"1"` (R10)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class StrictBoolean(fields.Boolean):
    """A JSON `true` or `false`: not `1`, not `"true"`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Seq(StrictInteger):
    """A message `seq` as a read marker: 0 (nothing read) up to the largest id."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, validate=validate.Range(0, MAX_ID), **kwargs)


class Id(StrictInteger):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, validate=validate.Range(1, MAX_ID), **kwargs)


class Text(fields.String):
    """A string that is valid Unicode text: no lone surrogates, no NUL or C0 controls."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("must be valid Unicode (no lone surrogates)") from None
        if not _FORBIDDEN_CONTROLS.isdisjoint(text):
            raise ValidationError("must not contain control characters")
        return text


class Name(Text):
    """A name people see: NFC-normalised, no format or bidi-override characters (R13)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = unicodedata.normalize("NFC", super()._deserialize(value, attr, data, **kwargs))
        if any(_hidden(char) for char in text):
            raise ValidationError("must not contain control or formatting characters")
        return text.strip()


def _hidden(char: str) -> bool:
    """Invisible or direction-changing characters; the zero-width joiner stays, as emoji
    sequences like 👩‍👩‍👧 need it."""
    return char != ZERO_WIDTH_JOINER and unicodedata.category(char) in {"Cf", "Cc", "Zl", "Zp"}


class UserIdField(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> UserId:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if not valid_user_id(text) or any(_hidden(char) for char in text):
            raise ValidationError("must be a user id of 1-128 printable characters")
        return UserId(text)


class ClientMessageId(fields.String):
    def __init__(self) -> None:
        super().__init__(
            load_default=None,
            allow_none=True,
            data_key="clientMessageId",
            validate=validate.Length(1, MAX_CLIENT_MESSAGE_ID),
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if not valid_user_id(text):
            raise ValidationError("must be 1-128 printable characters")
        return text


class _Strict(Schema):
    class Meta:
        # Unknown fields (a forged `senderId`, say) are ignored: identity comes from the token.
        unknown = EXCLUDE


class _Content(_Strict):
    content = Text(required=True, validate=validate.Length(min=1))
    client_message_id = ClientMessageId()

    def __init__(self, max_content_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_content_bytes = max_content_bytes

    @validates("content")
    def _content_fits(self, value: str, **_: Any) -> None:
        if not value.strip():
            raise ValidationError("must not be blank")
        if len(value.encode("utf-8")) > self._max_content_bytes:
            raise ValidationError(f"must be at most {self._max_content_bytes} bytes")


class MessageSchema(_Content):
    """`SEND /app/message` body: `{"chatRoomId": 1, "content": "hi", "clientMessageId": "..."}`."""

    chat_room_id = Id(required=True, data_key="chatRoomId")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> MessageDraft:
        return MessageDraft(
            RoomId(data["chat_room_id"]), data["content"], data["client_message_id"]
        )


@functools.cache
def message_schema(max_content_bytes: int) -> MessageSchema:
    """One schema per limit, shared by every connection (schemas keep no per-call state)."""
    return MessageSchema(max_content_bytes=max_content_bytes)


@functools.cache
def room_message_schema(max_content_bytes: int) -> RoomMessageSchema:
    return RoomMessageSchema(max_content_bytes=max_content_bytes)


class RoomMessageSchema(_Content):
    """`POST /api/chat-rooms/{id}/messages` body; the room comes from the path."""

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> tuple[str, str | None]:
        return data["content"], data["client_message_id"]


class TypingSchema(_Strict):
    """`SEND /app/typing` body: `{"chatRoomId": 1, "typing": true}`."""

    chat_room_id = Id(required=True, data_key="chatRoomId")
    typing = StrictBoolean(required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> TypingSignal:
        return TypingSignal(RoomId(data["chat_room_id"]), data["typing"])


class ReadSchema(_Strict):
    """`SEND /app/read` body: `{"chatRoomId": 1, "seq": 42}`."""

    chat_room_id = Id(required=True, data_key="chatRoomId")
    seq = Seq(required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> ReadRequest:
        return ReadRequest(RoomId(data["chat_room_id"]), data["seq"])


class RoomReadSchema(_Strict):
    """`POST /api/chat-rooms/{id}/read` body: `{"seq": 42}` (the room comes from the path)."""

    seq = Seq(required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> int:
        seq: int = data["seq"]
        return seq


class DirectRoomSchema(_Strict):
    participant_id = UserIdField(required=True, data_key="participantId")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> UserId:
        return UserId(data["participant_id"])


class GroupRoomSchema(_Strict):
    name = Name(required=True, validate=validate.Length(1, MAX_ROOM_NAME))
    member_ids = fields.List(
        UserIdField(), required=True, data_key="memberIds",
        validate=validate.Length(0, MAX_GROUP_MEMBERS),
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> GroupRoomRequest:
        if not data["name"]:
            raise ValidationError({"name": ["must not be blank"]})
        return GroupRoomRequest(data["name"], tuple(dict.fromkeys(data["member_ids"])))


class MemberSchema(_Strict):
    user_id = UserIdField(required=True, data_key="userId")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> UserId:
        return UserId(data["user_id"])


class QueryInteger(fields.Integer):
    """A query-string integer: ASCII digits only (`int("٧") == 7` is the trap, BAD_INPUTS A4)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not value.isascii() or not value.isdigit():
            raise self.make_error("invalid")
        if len(value) > 19 or int(value) > MAX_ID:
            raise ValidationError("is out of range")
        return int(value)


class HistoryQuerySchema(_Strict):
    before = QueryInteger(load_default=None)
    after = QueryInteger(load_default=None)
    limit = QueryInteger(load_default=50, validate=validate.Range(1, MAX_HISTORY_LIMIT))

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> HistoryQuery:
        return HistoryQuery(data["before"], data["after"], data["limit"])


# --- JSON at the edge ------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedRequest("duplicate keys in JSON object")
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedRequest(f"{name} is not valid JSON")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, no NaN, bounded depth."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
        )
    except UnicodeDecodeError:
        raise MalformedRequest("body is not valid UTF-8") from None
    except RecursionError:
        raise MalformedRequest("JSON nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise MalformedRequest(f"malformed JSON: {exc.args[0] if exc.args else ''}") from None
    if not isinstance(value, dict):
        raise MalformedRequest("body must be a JSON object")
    return value


def load(schema: Schema, data: Any) -> Any:
    """Run a schema; its field errors become one `ValidationFailed` with `details`."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        details = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationFailed("invalid fields", details) from None


# --- Response shapes: for the OpenAPI document (responses are built by the models) -----------


class RoomOut(Schema):
    id = fields.Integer(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["direct", "group"]))
    name = fields.String(required=True, allow_none=True)
    created_by = fields.String(required=True, data_key="createdBy")
    member_ids = fields.List(fields.String(), required=True, data_key="memberIds")
    created_at = fields.DateTime(required=True, data_key="createdAt")
    last_activity_at = fields.DateTime(required=True, data_key="lastActivityAt")
    last_seq = fields.Integer(
        required=True, data_key="lastSeq", metadata={"description": "the room's last seq (0: none)"}
    )
    last_read_seq = fields.Integer(
        required=True, data_key="lastReadSeq",
        metadata={"description": "the caller's read marker (0 until they read or send)"},
    )
    unread_count = fields.Integer(
        required=True, data_key="unreadCount",
        metadata={"description": "messages from others above the caller's read marker"},
    )


class RoomListOut(Schema):
    rooms = fields.List(fields.Nested(RoomOut), required=True)


class MessageOut(Schema):
    id = fields.Integer(required=True)
    chat_room_id = fields.Integer(required=True, data_key="chatRoomId")
    seq = fields.Integer(required=True)
    sender_id = fields.String(required=True, data_key="senderId")
    content = fields.String(required=True)
    created_at = fields.DateTime(required=True, data_key="createdAt")
    client_message_id = fields.String(data_key="clientMessageId")


class MessageListOut(Schema):
    messages = fields.List(fields.Nested(MessageOut), required=True)


class ReadOut(Schema):
    room_id = fields.Integer(required=True, data_key="roomId")
    seq = fields.Integer(required=True, metadata={"description": "the caller's marker now"})


class ReadsOut(Schema):
    reads = fields.Dict(
        keys=fields.String(), values=fields.Integer(), required=True,
        metadata={"description": "every member's read marker (0 until they read or send)"},
    )


class PresenceOut(Schema):
    online = fields.List(
        fields.String(), required=True,
        metadata={"description": "members with a connection subscribed to the room or its "
                                 "events, on any worker"},
    )


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ErrorOut(Schema):
    error = fields.Nested(ErrorBody, required=True)


class CreateRoomIn(Schema):
    """Either `participantId` (a direct room) or `name` and `memberIds` (a group room)."""

    participant_id = fields.String(data_key="participantId")
    name = fields.String()
    member_ids = fields.List(fields.String(), data_key="memberIds")
