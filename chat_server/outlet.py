"""Outlet: everything written to one client, encoded for its version, into its bounded outbox.

The connection (`StompConnection`) decides when the conversation ends; the outlet asks it
before every write, so nothing is queued after the ERROR or the close it decided.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from chat_server.destinations import room_destination
from chat_server.errors import StoreUnavailable
from chat_server.fanout import Delivery
from chat_server.metrics import Metrics
from chat_server.outbox import Outbox, OutboxOverflow
from chat_server.stomp.connection import StompConnection, Subscription
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Frame, Version, encodable, encode_headers

log = logging.getLogger(__name__)


def message_tail(delivery: Delivery, version: Version) -> bytes:
    """The subscriber-independent part of a room MESSAGE, encoded once per version per worker."""
    tail = delivery.encoded.get(version)
    if tail is None:
        message = delivery.message
        body = message.body_bytes()
        headers = (
            ("destination", room_destination(message.room_id)),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            # STOMP 1.0 cannot carry a line break in a header, 1.1 a carriage return: such a
            # user header is left out for those subscribers rather than sent raw (BAD_INPUTS F24).
            *(
                (name, value)
                for name, value in message.headers
                if encodable(name, version, name=True) and encodable(value, version)
            ),
        )
        tail = encode_headers(headers, version) + b"\n" + body + b"\0"
        delivery.encoded[version] = tail
    return tail


def protocol_error_for(exc: Exception, log_context: Mapping[str, object]) -> StompProtocolError:
    """What the client is told when handling its frame raised `exc`: the peer's mistakes are
    named; our own bugs are logged with their traceback and only called "internal error"."""
    if isinstance(exc, StompProtocolError):
        return exc
    if isinstance(exc, StoreUnavailable):
        # The database, not this client, failed (e.g. no pooled connection in time).
        log.warning("database unavailable", extra=dict(log_context))
        return StompProtocolError("try again later", close_code=CloseCode.TRY_AGAIN_LATER)
    log.error("internal error", exc_info=exc, extra=dict(log_context))
    return StompProtocolError("internal error", close_code=CloseCode.INTERNAL_ERROR)


SLOW_CONSUMER = StompProtocolError("slow consumer", close_code=CloseCode.POLICY_VIOLATION)


class Outlet:
    """The one way out to a client; never blocks, never raises to the fan-out."""

    __slots__ = ("_metrics", "conn", "outbox", "user")

    def __init__(self, conn: StompConnection, outbox: Outbox, metrics: Metrics) -> None:
        self.conn = conn
        self.outbox = outbox
        self._metrics = metrics
        #: Who is connected, for log records (set at CONNECT).
        self.user: str | None = None

    @property
    def log_context(self) -> dict[str, object]:
        """`extra=` for log records about this connection (never its token)."""
        return {"session": self.conn.session_id, "user": self.user}

    def put(self, data: bytes) -> None:
        """Queue encoded frames; raises `OutboxOverflow` for a slow consumer."""
        if not self.conn.closing:
            self.outbox.put(data)

    def reply(self, data: bytes, command: str) -> None:
        """A frame answering the client's (CONNECTED, RECEIPT), counted by its command."""
        if not self.conn.closing:
            self.outbox.put(data)
            self._metrics.frames_sent.labels(command).inc()

    def receipt(self, frame: Frame) -> None:
        receipt = self.conn.receipt(frame)
        if receipt is not None and not self.conn.closing:
            self.outbox.put(receipt)
            self._metrics.receipt_frames_sent.inc()

    def push(self, subscription: Subscription, destination: str, body: bytes) -> None:
        """A server-made MESSAGE on a user queue (refusals, notifications)."""
        if self.conn.closing:
            return
        headers = self.conn.encode_user_headers(
            (
                ("destination", destination),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            )
        )
        if self._message(subscription, headers + b"\n" + body + b"\0"):
            self._metrics.message_frames_sent.inc()

    def deliver(self, subscription: Subscription, delivery: Delivery) -> None:
        """A room's message for one subscription: the fan-out's sink, on its hot path (once per
        subscriber), so it is written out flat; the fan-out counts deliveries in bulk."""
        conn = self.conn
        if conn.close is not None:
            return
        tail = delivery.encoded.get(conn.version) or message_tail(delivery, conn.version)
        try:
            self.outbox.put(conn.message_frame(subscription, tail))
        except OutboxOverflow:
            self.slow_consumer()
        except StompProtocolError as exc:  # too many unacknowledged messages
            self.fail(exc)

    def _message(self, subscription: Subscription, tail: bytes) -> bool:
        try:
            self.outbox.put(self.conn.message_frame(subscription, tail))
        except OutboxOverflow:
            self.slow_consumer()
            return False
        except StompProtocolError as exc:  # too many unacknowledged messages
            self.fail(exc)
            return False
        return True

    # --- the end: decided by the connection, written here ------------------------------------

    def fail(self, exc: StompProtocolError) -> None:
        """ERROR, as the last frame, then the close (a second failure adds nothing)."""
        final = self.conn.error(exc)
        if final:
            log.info("closing: %s", exc.message, extra=self.log_context)
            self.outbox.put_final(final)

    def fail_on(self, exc: Exception) -> None:
        """Answer whatever handling a frame raised."""
        if isinstance(exc, OutboxOverflow):
            self.slow_consumer()
        else:
            self.fail(protocol_error_for(exc, self.log_context))

    def slow_consumer(self) -> None:
        """The peer reads too slowly: drop what is queued, send only ERROR, then close."""
        final = self.conn.error(SLOW_CONSUMER)
        if final:
            log.info("closing: slow consumer", extra=self.log_context)
            self.outbox.abandon(final)

    def close(self, code: CloseCode, reason: str) -> None:
        """End without an ERROR (DISCONNECT, shutdown) once what is queued is written."""
        self.conn.disconnect(code, reason)
        self.outbox.wake()

    def lost(self) -> None:
        """The peer went away first: nothing left to say, nothing more to queue."""
        self.conn.disconnect(CloseCode.GOING_AWAY, "connection lost")
        self.outbox.discard()
        self.outbox.wake()
