"""The STOMP destinations this server knows, and how a room's name is read and written."""

from __future__ import annotations

import re

from chat_server.models import RoomId

SEND_DESTINATION = "/app/message"
TYPING_DESTINATION = "/app/typing"
READ_DESTINATION = "/app/read"
#: SENDs that carry room state, not chat messages (never stored in a room's feed).
ROOM_SIGNALS = frozenset({TYPING_DESTINATION, READ_DESTINATION})
ERRORS_DESTINATION = "/user/queue/errors"
NOTIFICATIONS_DESTINATION = "/user/queue/notifications"
USER_QUEUES = frozenset({ERRORS_DESTINATION, NOTIFICATIONS_DESTINATION})

_ROOM_PREFIX = "/queue/chat-rooms/"
# Exact match, ASCII digits, no leading zero, at most 18 digits: no normalisation, no patterns
# (BAD_INPUTS A4, A5, A7); `\d` without re.ASCII would accept "٧".
_ROOM_DESTINATION = re.compile(re.escape(_ROOM_PREFIX) + r"([1-9][0-9]{0,17})", re.ASCII)
_EVENTS_SUFFIX = "/events"
_EVENTS_DESTINATION = re.compile(
    re.escape(_ROOM_PREFIX) + r"([1-9][0-9]{0,17})" + re.escape(_EVENTS_SUFFIX), re.ASCII
)


def room_of(destination: str) -> RoomId | None:
    """The room a destination names, or None if it names none."""
    match = _ROOM_DESTINATION.fullmatch(destination)
    return RoomId(int(match[1])) if match else None


def room_events_of(destination: str) -> RoomId | None:
    """The room whose events (presence, typing, reads) a destination names, or None."""
    match = _EVENTS_DESTINATION.fullmatch(destination)
    return RoomId(int(match[1])) if match else None


def room_destination(room_id: RoomId) -> str:
    return f"{_ROOM_PREFIX}{room_id}"


def room_events_destination(room_id: RoomId) -> str:
    return f"{_ROOM_PREFIX}{room_id}{_EVENTS_SUFFIX}"
