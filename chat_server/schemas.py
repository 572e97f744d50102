"""Marshmallow schemas: untrusted JSON in, validated models out (the only marshmallow import)."""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates

from chat_server.auth import MAX_USER_ID_CHARS
from chat_server.charsets import IDENTIFIER, NAME, TEXT, has_lone_surrogate
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
DEFAULT_HISTORY_LIMIT = 50

# What each rule says in words: the error a client gets, and the OpenAPI description.
_SURROGATES = "Lone surrogates (a JSON escape like \\ud800 that is not half of a pair) are refused."
_BMP_ONLY = (
    "The pattern names characters of the Basic Multilingual Plane only; every character "
    "beyond it (emoji, say) is allowed."
)
IDENTIFIER_RULE = (
    "without controls, line breaks, spaces but inner ASCII spaces, invisible format "
    "characters, private-use characters or noncharacters"
)
TEXT_RULE = "text that is not only whitespace, without control characters but tab and newline"
NAME_RULE = (
    "a name that is not only whitespace, without control characters (tab and newline too), "
    "line breaks or invisible format characters but the zero-width joiner"
)


def _rule(regex: re.Pattern[str], words: str) -> validate.Regexp:
    """The server checks the very pattern the document shows (each starts with `^`, so
    marshmallow's `match` is JSON Schema's `search`)."""
    return validate.Regexp(regex, error=f"must be {words}")


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


class Unicode(fields.String):
    """A string UTF-8 can carry: no lone surrogate, the one rule no pattern states."""

    def __init__(self, description: str, example: Any = None, **kwargs: Any) -> None:
        metadata: dict[str, Any] = {"description": f"{description} {_BMP_ONLY} {_SURROGATES}"}
        if example is not None:
            metadata["example"] = example
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if has_lone_surrogate(text):
            raise ValidationError("must be valid Unicode (no lone surrogates)")
        return text


class Text(Unicode):
    """Chat text: `charsets.TEXT`; its size is checked by the schema that knows the limit."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(f"Chat text: {TEXT_RULE}.", validate=_rule(TEXT, TEXT_RULE), **kwargs)


class Name(Unicode):
    """A name people see (R13), checked as sent; stored NFC-normalised and trimmed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            f"1-{MAX_ROOM_NAME} characters as sent, {NAME_RULE}; stored NFC-normalised, "
            "without leading or trailing whitespace.",
            validate=[validate.Length(1, MAX_ROOM_NAME), _rule(NAME, NAME_RULE)],
            **kwargs,
        )


def normalise_name(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip()


class Identifier(Unicode):
    """A user id or a clientMessageId: `charsets.IDENTIFIER`, and a length."""

    def __init__(self, what: str, max_chars: int, **kwargs: Any) -> None:
        words = f"1-{max_chars} characters {IDENTIFIER_RULE}"
        super().__init__(
            f"{what}: {words}.",
            validate=[
                validate.Length(1, max_chars, error=f"must be {words}"),
                _rule(IDENTIFIER, words),
            ],
            **kwargs,
        )


class UserIdField(Identifier):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            "A user id (the `sub` of that user's tokens)", MAX_USER_ID_CHARS, **kwargs
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> UserId:
        return UserId(super()._deserialize(value, attr, data, **kwargs))


class ClientMessageId(Identifier):
    def __init__(self) -> None:
        super().__init__(
            "The client's own id for this message: a retry with the same one stores nothing "
            "new and answers the stored message",
            MAX_CLIENT_MESSAGE_ID,
            example="9b2f6c1e",
            load_default=None,
            allow_none=True,
            data_key="clientMessageId",
        )


class _Strict(Schema):
    class Meta:
        # Unknown fields (a forged `senderId`, say) are ignored: identity comes from the token.
        unknown = EXCLUDE


class _Content(_Strict):
    content = Text(required=True, example="hi")
    client_message_id = ClientMessageId()

    def __init__(self, max_content_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_content_bytes = max_content_bytes
        # For the OpenAPI document: JSON Schema counts characters, and N bytes never hold
        # more than N characters; the bytes themselves are checked below.
        content = self.fields["content"]
        content.metadata = {
            **content.metadata,
            "minLength": 1,
            "maxLength": max_content_bytes,
            "description": (
                f"{content.metadata['description']} At most {max_content_bytes} bytes once "
                "UTF-8 encoded (CHAT_MAX_BODY_BYTES): JSON Schema cannot count bytes, so "
                "maxLength bounds the characters and the bytes are checked besides."
            ),
        }

    @validates("content")
    def _content_fits(self, value: str, **_: Any) -> None:
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

    seq = Seq(required=True, metadata={
        "example": 0,
        "description": "the last message read; at most the room's last seq (JSON Schema cannot "
                       "know it: past it is 422 invalid_seq); a JSON integer, never 1.0 or \"1\"",
    })

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> int:
        seq: int = data["seq"]
        return seq


class DirectRoomSchema(_Strict):
    participant_id = UserIdField(required=True, data_key="participantId", example="bob")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> UserId:
        return UserId(data["participant_id"])


class GroupRoomSchema(_Strict):
    name = Name(required=True, example="team")
    member_ids = fields.List(
        UserIdField(example="bob"), required=True, data_key="memberIds",
        validate=validate.Length(0, MAX_GROUP_MEMBERS),
        metadata={"description": "the other members (the caller is always one); repeats and "
                                 "the caller's own id are ignored"},
    )

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> GroupRoomRequest:
        name = normalise_name(data["name"])
        if not name:  # cannot happen after NAME's check; kept as the model's guard
            raise ValidationError({"name": ["must not be blank"]})
        return GroupRoomRequest(name, tuple(dict.fromkeys(data["member_ids"])))


class MemberSchema(_Strict):
    user_id = UserIdField(required=True, data_key="userId", example="dave")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> UserId:
        return UserId(data["user_id"])


class QueryInteger(fields.Integer):
    """A query-string integer: ASCII digits only (`int("٧") == 7` is the trap, BAD_INPUTS A4)."""

    def __init__(self, low: int, high: int, **kwargs: Any) -> None:
        super().__init__(validate=validate.Range(low, high), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or not value.isascii() or not value.isdigit():
            raise self.make_error("invalid")
        if len(value) > 19:  # past MAX_ID whatever the digits; never int() of a huge string
            raise ValidationError("is out of range")
        return int(value)


class HistoryQuerySchema(_Strict):
    # No load_default for the cursors: absent is not `null` (the document would say nullable).
    before = QueryInteger(0, MAX_ID, metadata={
        "description": "only messages with a lower seq (ASCII digits)"})
    after = QueryInteger(0, MAX_ID, metadata={
        "description": "only messages with a higher seq, oldest first (ASCII digits)"})
    limit = QueryInteger(1, MAX_HISTORY_LIMIT, load_default=DEFAULT_HISTORY_LIMIT, metadata={
        "description": "at most this many messages (ASCII digits)"})

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> HistoryQuery:
        return HistoryQuery(data.get("before"), data.get("after"), data["limit"])


# --- JSON at the edge ------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedRequest("duplicate keys in JSON object")
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedRequest(f"{name} is not valid JSON")


# One decoder for every body: `json.loads` with hooks builds a new one per call (5 us a SEND).
_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, no NaN, bounded depth."""
    try:
        value = _STRICT_DECODER.decode(raw.decode("utf-8"))
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


def _describe(text: str) -> dict[str, str]:
    return {"description": text}


class RoomOut(Schema):
    id = fields.Integer(required=True, validate=validate.Range(1, MAX_ID))
    kind = fields.String(required=True, validate=validate.OneOf(["direct", "group"]))
    name = fields.String(required=True, allow_none=True,
                         metadata=_describe("a group room's name; null for a direct room"))
    created_by = fields.String(required=True, data_key="createdBy")
    member_ids = fields.List(fields.String(), required=True, data_key="memberIds")
    created_at = fields.DateTime(required=True, data_key="createdAt")
    last_activity_at = fields.DateTime(required=True, data_key="lastActivityAt")
    last_seq = fields.Integer(
        required=True, data_key="lastSeq", validate=validate.Range(0, MAX_ID),
        metadata=_describe("the room's last seq (0: none)"),
    )
    last_read_seq = fields.Integer(
        required=True, data_key="lastReadSeq", validate=validate.Range(0, MAX_ID),
        metadata=_describe("the caller's read marker (0 until they read or send)"),
    )
    unread_count = fields.Integer(
        required=True, data_key="unreadCount", validate=validate.Range(0, MAX_ID),
        metadata=_describe("messages from others above the caller's read marker"),
    )


class RoomListOut(Schema):
    rooms = fields.List(fields.Nested(RoomOut), required=True)


class MessageOut(Schema):
    id = fields.Integer(required=True, validate=validate.Range(1, MAX_ID),
                        metadata=_describe("unique across the server"))
    chat_room_id = fields.Integer(required=True, data_key="chatRoomId",
                                  validate=validate.Range(1, MAX_ID))
    seq = fields.Integer(required=True, validate=validate.Range(1, MAX_ID),
                         metadata=_describe("the room's messages are numbered 1, 2, 3, ..."))
    sender_id = fields.String(required=True, data_key="senderId")
    content = fields.String(required=True)
    created_at = fields.DateTime(required=True, data_key="createdAt",
                                 metadata=_describe("the server's clock when it was stored"))
    client_message_id = fields.String(data_key="clientMessageId",
                                      metadata=_describe("present when the sender gave one"))


class MessageListOut(Schema):
    messages = fields.List(fields.Nested(MessageOut), required=True)


class ReadOut(Schema):
    room_id = fields.Integer(required=True, data_key="roomId", validate=validate.Range(1, MAX_ID))
    seq = fields.Integer(required=True, validate=validate.Range(0, MAX_ID),
                         metadata=_describe("the caller's marker now"))


class ReadsOut(Schema):
    reads = fields.Dict(
        keys=fields.String(), values=fields.Integer(validate=validate.Range(0, MAX_ID)),
        required=True,
        metadata=_describe("every member's read marker (0 until they read or send)"),
    )


class PresenceOut(Schema):
    online = fields.List(
        fields.String(), required=True,
        metadata=_describe("members with a connection subscribed to the room or its events, "
                           "on any worker"),
    )


class ErrorBody(Schema):
    code = fields.String(required=True, metadata=_describe("stable; part of the contract"))
    message = fields.String(required=True, metadata=_describe("for people; may change"))
    details = fields.Dict(metadata=_describe("what the code is about, e.g. the fields at fault"))


class ErrorOut(Schema):
    error = fields.Nested(ErrorBody, required=True)


class HealthOut(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class ReadinessOut(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready", "unavailable"]))
    checks = fields.Dict(
        keys=fields.String(), values=fields.String(), required=True,
        metadata=_describe("`database` and `broker`: `ok` or what is wrong; `worker` while it "
                           "shuts down"),
    )
