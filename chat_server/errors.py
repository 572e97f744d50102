"""Refusals the application gives for well-formed requests, each with a stable code."""

from __future__ import annotations

from typing import Any


class ChatError(Exception):
    """A request the application refuses; `code` is part of the public contract."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class MalformedRequest(ChatError):
    """Not parseable at all: bad JSON, not an object, wrong encoding."""

    code = "malformed_request"
    status = 400


class ValidationFailed(ChatError):
    code = "validation_failed"
    status = 422


class RoomNotFound(ChatError):
    """The room does not exist, or the caller may not know that it does."""

    code = "room_not_found"
    status = 404


class NotAMember(ChatError):
    code = "not_a_member"
    status = 403


class InvalidSeq(ChatError):
    """A read marker past the room's last message."""

    code = "invalid_seq"
    status = 422


class NotStored(ChatError):
    """Dropped unstored: an earlier SEND of the same connection failed (see `SendChain`)."""

    code = "not_stored"
    status = 409


class Forbidden(ChatError):
    code = "forbidden"
    status = 403


class RoomExists(ChatError):
    code = "room_exists"
    status = 409

    def __init__(self, room_id: int) -> None:
        super().__init__("these users already share a direct room", {"roomId": room_id})
        self.room_id = room_id


class StoreUnavailable(Exception):
    """The database could not be reached or did not answer in time (503, or STOMP ERROR)."""
