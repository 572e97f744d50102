"""StompConnection: one peer's protocol state, lifecycle, subscriptions, acks and transactions.

Sans-I/O: bytes go in through `receive_data`, validated frames come out of `events_received`,
and every outgoing frame is encoded here for the negotiated version. Time is passed in, never
read, so every rule can be tested without an event loop.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from chat_server.stomp.errors import CloseCode, InvalidState, StompProtocolError
from chat_server.stomp.frames import (
    CLIENT_COMMANDS,
    Command,
    Frame,
    Headers,
    Version,
    encode,
    encode_headers,
    escape,
)
from chat_server.stomp.negotiation import (
    SUPPORTED_VERSIONS,
    HeartBeats,
    negotiate_heart_beats,
    negotiate_version,
    parse_heart_beat,
)
from chat_server.stomp.parser import FrameParser, ParserLimits

SERVER_NAME = "chat_server"
#: A silent peer is closed after this many of its negotiated intervals (STOMP 1.2 allows margin).
SILENCE_FACTOR = 2.0


class State(Enum):
    AWAITING_CONNECT = "awaiting connect"
    CONNECTED = "connected"
    #: The server is shutting down: frames not yet started are dropped, replies still go out.
    STOPPING = "stopping"
    CLOSED = "closed"


#: The client commands each state accepts; anything else is one lookup and one error.
ALLOWED: dict[State, frozenset[Command]] = {
    State.AWAITING_CONNECT: frozenset({Command.CONNECT, Command.STOMP}),
    State.CONNECTED: CLIENT_COMMANDS - {Command.CONNECT, Command.STOMP},
    State.STOPPING: frozenset(),
    State.CLOSED: frozenset(),
}


def _refusal(state: State, command: Command) -> str:
    if command not in CLIENT_COMMANDS:
        return "Bad command"
    if state is State.AWAITING_CONNECT:
        return "not connected"
    return "already connected"


class AckMode(StrEnum):
    AUTO = "auto"
    CLIENT = "client"
    CLIENT_INDIVIDUAL = "client-individual"


@dataclass(frozen=True, slots=True)
class Limits:
    parser: ParserLimits = field(default_factory=ParserLimits)
    max_subscriptions: int = 50
    max_unacked: int = 1000
    max_transactions: int = 10
    max_transaction_frames: int = 100


@dataclass(slots=True, eq=False)
class Subscription:
    id: str
    destination: str
    ack: AckMode
    #: `MESSAGE\nsubscription:<id>\n`, escaped for the connection's version once, here.
    prefix: bytes = b""


@dataclass(frozen=True, slots=True)
class Close:
    """Why and how the connection ends: decided once, by the first cause."""

    code: CloseCode
    reason: str
    #: Ended by an ERROR frame (a protocol error, a slow consumer), not by either side's choice.
    error: bool = False


_REQUIRED: dict[Command, tuple[str, ...]] = {
    Command.SEND: ("destination",),
    Command.SUBSCRIBE: ("destination",),
    Command.BEGIN: ("transaction",),
    Command.COMMIT: ("transaction",),
    Command.ABORT: ("transaction",),
}


@dataclass(slots=True)
class _Transaction:
    frames: list[Frame] = field(default_factory=list)


class StompConnection:
    """One client's STOMP session, from the first byte to the last."""

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        server_heartbeat_ms: int = 10000,
        subprotocol: Version | None = None,
        now: float = 0.0,
    ) -> None:
        self.limits = limits
        self.state = State.AWAITING_CONNECT
        self.version = subprotocol or Version.V1_2
        self.session_id = secrets.token_urlsafe(12)
        self.heart_beats = HeartBeats(0, 0)
        self.last_received = now
        self.subscriptions: dict[str, Subscription] = {}
        #: Set once, by the first of: an ERROR, DISCONNECT, shutdown, the peer going away.
        self.close: Close | None = None
        self._server_heartbeat_ms = server_heartbeat_ms
        self._subprotocol = subprotocol
        self._parser = FrameParser(limits.parser, self.version)
        self._unacked: dict[str, Subscription] = {}  # insertion-ordered, as ACK needs
        self._transactions: dict[str, _Transaction] = {}
        self._message_counter = 0
        #: Frames the parser has completed; tells one incomplete frame from the next.
        self._frames_parsed = 0
        #: (frames parsed then, time) when the frame still incomplete was first seen waiting.
        self._incomplete: tuple[int, float] | None = None

    # --- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self.last_received = now
        if self.state is not State.CLOSED:
            self._parser.feed(data)

    def events_received(self) -> Iterator[Frame]:
        """Complete frames the current state accepts; raises on the first that breaks a rule."""
        for frame in self._parser.frames():
            self._frames_parsed += 1
            if self.state is State.CLOSED or self.state is State.STOPPING:
                # BAD_INPUTS P19: frames after DISCONNECT are ignored; while stopping, a frame
                # not started is not receipted, so the client sends it again elsewhere.
                return
            if frame.command not in ALLOWED[self.state]:
                raise self._error(frame, _refusal(self.state, frame.command))
            self._check_required_headers(frame)
            yield frame

    def _check_required_headers(self, frame: Frame) -> None:
        for name in _REQUIRED.get(frame.command, ()):
            if not frame.get(name):
                raise self._error(frame, f"Missing {name}")
        # STOMP 1.0 lets SUBSCRIBE omit `id`; 1.1 and 1.2 require it.
        if (
            frame.command is Command.SUBSCRIBE
            and self.version is not Version.V1_0
            and not frame.get("id")
        ):
            raise self._error(frame, "Missing id")
        if frame.command is Command.UNSUBSCRIBE and not (
            frame.get("id") or (self.version is Version.V1_0 and frame.get("destination"))
        ):
            raise self._error(frame, "Missing id")

    @staticmethod
    def _error(
        frame: Frame, message: str, close_code: CloseCode = CloseCode.PROTOCOL_ERROR
    ) -> StompProtocolError:
        return StompProtocolError(message, close_code=close_code, receipt_id=frame.get("receipt"))

    def refuse(
        self, frame: Frame, message: str, close_code: CloseCode = CloseCode.PROTOCOL_ERROR
    ) -> StompProtocolError:
        """A protocol error about `frame`, carrying its receipt id; for the caller to raise."""
        return self._error(frame, message, close_code)

    # --- CONNECT ------------------------------------------------------------------------------

    def accept(self, frame: Frame, user: str) -> bytes:
        """Negotiate and answer CONNECT/STOMP for an authenticated user; returns CONNECTED."""
        if self.state is not State.AWAITING_CONNECT:
            raise InvalidState("accept() after the connection was established")
        version = negotiate_version(frame.get("accept-version"), self._subprotocol)
        self.heart_beats = negotiate_heart_beats(
            self._server_heartbeat_ms, parse_heart_beat(frame.get("heart-beat"))
        )
        self.version = version
        self._parser.version = version
        self.state = State.CONNECTED
        hb = self._server_heartbeat_ms
        return self.encode(
            Frame(
                Command.CONNECTED,
                (
                    ("version", version.value),
                    ("session", self.session_id),
                    ("server", SERVER_NAME),
                    ("heart-beat", f"{hb},{hb}"),
                    ("user-name", user),
                ),
            )
        )

    # --- output -------------------------------------------------------------------------------

    def encode(self, frame: Frame) -> bytes:
        return encode(frame, self.version)

    def receipt(self, frame: Frame) -> bytes | None:
        receipt_id = frame.get("receipt")
        if receipt_id is None:
            return None
        # What `encode` makes of this one-header frame, built directly: one per SEND.
        return b"RECEIPT\nreceipt-id:" + escape(receipt_id, self.version).encode() + b"\n\n\0"

    def error(self, exc: StompProtocolError) -> bytes:
        """The ERROR frame for a protocol error, to be the last frame sent; the connection is
        closed from here on. b"" when it was already closing: one cause, one ERROR."""
        if self.close is not None:
            return b""
        headers: list[tuple[str, str]] = [("message", exc.message)]
        if exc.receipt_id is not None:
            headers.append(("receipt-id", exc.receipt_id))
        if self.state is State.AWAITING_CONNECT:
            # Tell a client that failed negotiation which versions would have worked.
            headers.append(("version", ",".join(SUPPORTED_VERSIONS)))
        headers.append(("content-type", "text/plain"))
        body = (exc.detail or exc.message).encode("utf-8")
        frame = self.encode(Frame(Command.ERROR, tuple(headers), body).with_content_length())
        self._closing(Close(exc.close_code, exc.message, error=True))
        return frame

    def disconnect(self, code: CloseCode = CloseCode.NORMAL, reason: str = "disconnect") -> None:
        """End the connection without an ERROR: DISCONNECT, shutdown, or the peer gone."""
        if self.close is None:
            self._closing(Close(code, reason))

    def stop(self) -> None:
        """The server is shutting down: handle no new frame; `disconnect` once settled."""
        if self.state is not State.CLOSED:
            self.state = State.STOPPING

    def _closing(self, close: Close) -> None:
        self.close = close
        self.state = State.CLOSED

    @property
    def closing(self) -> bool:
        """Whether the close is decided: nothing but what is already queued goes out."""
        return self.close is not None

    def message_prefix(self, subscription: Subscription) -> bytes:
        """The per-delivery headers of a MESSAGE: subscription, message-id and, if acked, ack."""
        self._message_counter += 1
        message_id = str(self._message_counter)
        if subscription.ack is not AckMode.AUTO:
            if len(self._unacked) >= self.limits.max_unacked:
                raise StompProtocolError(
                    "too many unacknowledged messages", close_code=CloseCode.POLICY_VIOLATION
                )
            self._unacked[message_id] = subscription
            ack = b"ack:" + message_id.encode() + b"\n" if self.version is Version.V1_2 else b""
            return subscription.prefix + b"message-id:" + message_id.encode() + b"\n" + ack
        return subscription.prefix + b"message-id:" + message_id.encode() + b"\n"

    def message_frame(self, subscription: Subscription, tail: bytes) -> bytes:
        """A whole MESSAGE: `message_prefix`, then `tail` (the headers every subscriber shares,
        the blank line, the body and the NUL). One formatting step, no intermediate copies:
        this runs once per delivery."""
        if subscription.ack is not AckMode.AUTO:
            return self.message_prefix(subscription) + tail
        self._message_counter += 1
        return b"%bmessage-id:%d\n%b" % (subscription.prefix, self._message_counter, tail)

    def encode_user_headers(self, headers: Headers) -> bytes:
        return encode_headers(headers, self.version)

    # --- subscriptions ------------------------------------------------------------------------

    def add_subscription(self, frame: Frame) -> Subscription:
        destination = frame.get("destination") or ""
        # STOMP 1.0 allows a SUBSCRIBE without id: the destination then names it.
        sub_id = frame.get("id") or destination
        if sub_id in self.subscriptions:
            raise self._error(frame, "Duplicated subscription identifier")
        if len(self.subscriptions) >= self.limits.max_subscriptions:
            raise self._error(frame, "too many subscriptions", CloseCode.POLICY_VIOLATION)
        raw_ack = frame.get("ack") or AckMode.AUTO.value
        if raw_ack not in AckMode._value2member_map_:
            raise self._error(frame, "unsupported ack mode")
        subscription = Subscription(sub_id, destination, AckMode(raw_ack))
        escaped_id = escape(sub_id, self.version).encode()
        subscription.prefix = b"MESSAGE\nsubscription:" + escaped_id + b"\n"
        self.subscriptions[sub_id] = subscription
        return subscription

    def remove_subscription(self, frame: Frame) -> Subscription:
        sub_id = frame.get("id") or frame.get("destination") or ""
        subscription = self.subscriptions.pop(sub_id, None)
        if subscription is None:
            raise self._error(frame, "unknown subscription")
        self._forget_unacked(subscription)
        return subscription

    def drop_subscription(self, subscription: Subscription) -> None:
        """End a subscription from the server's side (e.g. the user left the room)."""
        if self.subscriptions.get(subscription.id) is subscription:
            del self.subscriptions[subscription.id]
            self._forget_unacked(subscription)

    def _forget_unacked(self, subscription: Subscription) -> None:
        for message_id in [m for m, s in self._unacked.items() if s is subscription]:
            del self._unacked[message_id]

    def acknowledge(self, frame: Frame) -> None:
        """ACK or NACK: settle one message (client-individual) or all up to it (client)."""
        # STOMP 1.2 acknowledges by the MESSAGE's `ack` header, sent as `id`; 1.0/1.1 by message-id.
        id_header = "id" if self.version is Version.V1_2 else "message-id"
        message_id = frame.get(id_header)
        if not message_id:
            raise self._error(frame, f"Missing {id_header}")
        subscription = self._unacked.get(message_id)
        if subscription is None:
            raise self._error(frame, "unknown message")
        if subscription.ack is AckMode.CLIENT:
            # STOMP 1.2: ACK in client mode is cumulative for that subscription.
            for earlier in list(self._unacked):
                if self._unacked[earlier] is subscription:
                    del self._unacked[earlier]
                if earlier == message_id:
                    break
        else:
            del self._unacked[message_id]

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    # --- transactions -------------------------------------------------------------------------

    def begin(self, frame: Frame) -> None:
        name = frame.get("transaction") or ""
        if name in self._transactions:
            raise self._error(frame, "transaction already begun")
        if len(self._transactions) >= self.limits.max_transactions:
            raise self._error(frame, "too many transactions", CloseCode.POLICY_VIOLATION)
        self._transactions[name] = _Transaction()

    def enlist(self, frame: Frame) -> bool:
        """Hold a SEND/ACK/NACK that names a transaction until COMMIT; False if it names none."""
        name = frame.get("transaction")
        if name is None:
            return False
        transaction = self._transactions.get(name)
        if transaction is None:
            raise self._error(frame, "unknown transaction")
        if len(transaction.frames) >= self.limits.max_transaction_frames:
            raise self._error(frame, "transaction too large", CloseCode.POLICY_VIOLATION)
        transaction.frames.append(frame)
        return True

    def commit(self, frame: Frame) -> list[Frame]:
        """The frames the transaction held, to be processed now, in order."""
        transaction = self._transactions.pop(frame.get("transaction") or "", None)
        if transaction is None:
            raise self._error(frame, "unknown transaction")
        return transaction.frames

    def abort(self, frame: Frame) -> None:
        if self._transactions.pop(frame.get("transaction") or "", None) is None:
            raise self._error(frame, "unknown transaction")

    # --- time ---------------------------------------------------------------------------------

    def incomplete_frame_since(self, now: float) -> float | None:
        """Since when the peer owes the rest of a frame it began (BAD_INPUTS F1), or None
        between frames. The clock starts the first time this is asked about that frame: ask
        when about to wait for the peer, so the time the server spends handling the frames
        before it does not count."""
        if not self._parser.buffered_bytes:
            self._incomplete = None
            return None
        if self._incomplete is None or self._incomplete[0] != self._frames_parsed:
            self._incomplete = (self._frames_parsed, now)
        return self._incomplete[1]

    def peer_deadline(self, connect_timeout_s: float, started: float) -> float | None:
        """When the peer's silence ends the connection (monotonic seconds), or None."""
        if self.state is State.AWAITING_CONNECT:
            return started + connect_timeout_s
        if self.heart_beats.receive_ms:
            return self.last_received + SILENCE_FACTOR * self.heart_beats.receive_ms / 1000
        return None
