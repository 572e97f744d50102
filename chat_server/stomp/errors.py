"""The two error families: the peer's protocol mistakes, and our own state bugs."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes used after an `ERROR` frame (RFC 6455, section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


class StompProtocolError(Exception):
    """The peer broke the protocol: answer with `ERROR` (`message` header), then close.

    `message` is short and safe to show the peer; `detail` may add a sentence for the body.
    """

    def __init__(
        self,
        message: str,
        *,
        detail: str = "",
        close_code: CloseCode = CloseCode.PROTOCOL_ERROR,
        receipt_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.close_code = close_code
        self.receipt_id = receipt_id


class InvalidState(Exception):
    """Our own code asked for something the state machine forbids: a bug, never the peer's."""
