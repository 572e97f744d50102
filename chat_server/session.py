"""Session: one client's STOMP conversation, turned into ChatService calls and room deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import assert_never

import orjson

from chat_server.auth import AuthenticationFailed, Identity, TokenAuthority, bearer_token
from chat_server.chat import ChatService
from chat_server.config import Settings
from chat_server.errors import (
    ChatError,
    NotAMember,
    RoomNotFound,
    StoreUnavailable,
    ValidationFailed,
)
from chat_server.fanout import Delivery, Fanout, Tap
from chat_server.metrics import Metrics
from chat_server.models import (
    MessageDraft,
    PostResult,
    RoomId,
    SendChain,
    UserEvent,
    UserEventKind,
    UserHeaders,
    UserId,
)
from chat_server.outbox import Outbox, OutboxOverflow
from chat_server.schemas import load, message_schema, parse_json_object
from chat_server.stomp.connection import Limits, State, StompConnection, Subscription
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Command, Frame, Version, encodable, encode_headers
from chat_server.stomp.parser import ParserLimits

log = logging.getLogger(__name__)

SEND_DESTINATION = "/app/message"
ERRORS_DESTINATION = "/user/queue/errors"
NOTIFICATIONS_DESTINATION = "/user/queue/notifications"
# Exact match, ASCII digits, no leading zero, at most 18 digits: no normalisation, no patterns
# (BAD_INPUTS A4, A5, A7); `\d` without re.ASCII would accept "٧".
_ROOM_DESTINATION = re.compile(r"/queue/chat-rooms/([1-9][0-9]{0,17})", re.ASCII)
_SEQ = re.compile(r"0|[1-9][0-9]{0,17}", re.ASCII)
_JSON_TYPES = ("application/json",)
# Stopgap until the STOMP side names its chains: ids unique within the process (the group
# commit keys broken chains by id).
_CHAIN_IDS = itertools.count(1)


def room_of(destination: str) -> RoomId | None:
    match = _ROOM_DESTINATION.fullmatch(destination)
    return RoomId(int(match[1])) if match else None


def message_tail(delivery: Delivery, version: Version) -> bytes:
    """The subscriber-independent part of a room MESSAGE, encoded once per version per worker."""
    tail = delivery.encoded.get(version)
    if tail is None:
        message = delivery.message
        body = message.body_bytes()
        headers = (
            ("destination", f"/queue/chat-rooms/{message.room_id}"),
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


@dataclass(slots=True)
class FrameBudget:
    """Token bucket for inbound frames: when empty the reader pauses (back-pressure, no drops)."""

    rate: float
    burst: int
    tokens: float = 0.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def delay(self) -> float:
        """Seconds to wait before the next frame may be processed (and take its token)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(frozen=True, slots=True)
class CloseRequest:
    code: CloseCode
    reason: str


class Session:
    """Everything one WebSocket client does, from CONNECT to the close."""

    def __init__(
        self,
        *,
        chat: ChatService,
        fanout: Fanout,
        tokens: TokenAuthority,
        settings: Settings,
        subprotocol: Version | None = None,
        admit_user: Callable[[Session, UserId], bool] = lambda _session, _user: True,
        auth_failed: Callable[[], object] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self._chat = chat
        self._metrics = metrics or Metrics()
        #: Subscriptions counted in the gauge (kept in step by `_count_subscriptions`).
        self._counted_subscriptions = 0
        self._fanout = fanout
        self._tokens = tokens
        self._settings = settings
        self._admit_user = admit_user
        self._auth_failed = auth_failed
        self._message_schema = message_schema(settings.max_body_bytes)
        self.started = time.monotonic()
        self.conn = StompConnection(
            Limits(
                ParserLimits(
                    max_frame_bytes=settings.max_frame_bytes,
                    max_body_bytes=settings.max_body_bytes,
                    max_headers=settings.max_headers,
                    max_header_bytes=settings.max_header_bytes,
                ),
                max_subscriptions=settings.max_subscriptions,
                max_unacked=settings.max_unacked,
            ),
            server_heartbeat_ms=settings.heartbeat_ms,
            subprotocol=subprotocol,
            now=self.started,
        )
        self.outbox = Outbox(settings.outbox_bytes)
        self.identity: Identity | None = None
        #: True once the user counted against its connection cap (released on close).
        self.admitted = False
        self.close_request: CloseRequest | None = None
        self._budget = FrameBudget(settings.frames_per_s, settings.frames_burst)
        self._taps: dict[str, Tap] = {}
        self._errors_sub: Subscription | None = None
        self._notifications_sub: Subscription | None = None
        self._watching_user = False
        #: ROOM_REMOVED events seen per room, so a SUBSCRIBE whose membership check raced a
        #: removal notices it (BAD_INPUTS A1/A8).
        self._removals: dict[RoomId, int] = {}
        #: A frame is being handled (a SEND may be waiting for its commit).
        self._busy = False
        #: The server is shutting down: finish the frame in hand, then close with 1001.
        self._stopping = False
        #: SENDs queued for storing, oldest first, and the task that answers them in order.
        self._sends: list[tuple[Frame, Awaitable[PostResult]]] = []
        self._answerer: asyncio.Task[None] | None = None
        self._chain: SendChain | None = None

    @property
    def log_context(self) -> dict[str, str | None]:
        """`extra=` for log records about this connection (never its token)."""
        return {"session": self.conn.session_id, "user": self.user}

    @property
    def user(self) -> UserId | None:
        return self.identity.user_id if self.identity else None

    # --- input --------------------------------------------------------------------------------

    async def receive(self, data: bytes) -> None:
        """Bytes from the socket: handle every complete frame, in order."""
        try:
            self.conn.receive_data(data, time.monotonic())
            for frame in self.conn.events_received():
                self._metrics.frames_received.labels(frame.command.value).inc()
                if self._stopping:
                    break  # not started, so not receipted: the client sends it again elsewhere
                pause = self._budget.delay()
                if pause:
                    await asyncio.sleep(pause)  # not reading the socket is the back-pressure
                self._busy = True
                try:
                    await self._handle(frame)
                finally:
                    self._busy = False
                    self._count_subscriptions()
                if self.close_request is not None:
                    return
            if self._stopping:
                await self._settle_sends()
                self._close_going_away()
        except Exception as exc:
            if not isinstance(exc, OutboxOverflow):
                await self._settle_sends()  # the ERROR comes after the earlier SENDs' replies
            self._answer_failure(exc)

    def _answer_failure(self, exc: Exception) -> None:
        """The ERROR (or slow-consumer cut) that what handling a frame raised calls for."""
        if isinstance(exc, StompProtocolError):
            self.fail(exc)
        elif isinstance(exc, OutboxOverflow):
            self.slow_consumer()
        elif isinstance(exc, StoreUnavailable):
            # The database, not this client, failed (e.g. no pooled connection in time).
            log.warning("database unavailable", extra=self.log_context)
            self.fail(StompProtocolError("try again later", close_code=CloseCode.TRY_AGAIN_LATER))
        else:
            log.error("internal error", exc_info=exc, extra=self.log_context)
            self.fail(StompProtocolError("internal error", close_code=CloseCode.INTERNAL_ERROR))

    def read_deadline(self) -> float | None:
        """Monotonic time by which the peer must have sent something (or its token expired)."""
        deadline = self.conn.peer_deadline(self._settings.connect_timeout_s, self.started)
        if self.identity is not None and self.identity.expires_at is not None:
            expiry = time.monotonic() + (self.identity.expires_at - time.time())
            deadline = expiry if deadline is None else min(deadline, expiry)
        return deadline

    def timed_out(self) -> None:
        """The read deadline passed: say why, then close."""
        if self.conn.state is State.AWAITING_CONNECT:
            reason = "no CONNECT in time"
        else:
            silence = self.conn.peer_deadline(self._settings.connect_timeout_s, self.started)
            silent = silence is not None and silence <= time.monotonic()
            reason = "heart-beat timeout" if silent else "session expired"
        self.fail(StompProtocolError(reason, close_code=CloseCode.POLICY_VIOLATION))

    def slow_consumer(self) -> None:
        """The peer reads too slowly: drop what is queued, send only ERROR, then close."""
        if self.close_request is not None and self.close_request.reason == "slow consumer":
            return
        exc = StompProtocolError("slow consumer", close_code=CloseCode.POLICY_VIOLATION)
        log.info("closing: slow consumer", extra=self.log_context)
        self.close_request = CloseRequest(exc.close_code, exc.message)
        self._count_error(exc)
        self.outbox.abandon(self.conn.error(exc))

    def fail(self, exc: StompProtocolError) -> None:
        """Answer a protocol error with ERROR, then close (nothing else is sent after it)."""
        if self.close_request is not None:
            return
        log.info("closing: %s", exc.message, extra=self.log_context)
        self.close_request = CloseRequest(exc.close_code, exc.message)
        self._count_error(exc)
        self.outbox.close(self.conn.error(exc))

    def _count_error(self, exc: StompProtocolError) -> None:
        # The close code, not the message, is the label: messages may name ids (unbounded).
        self._metrics.errors.labels("stomp", exc.close_code.name.lower()).inc()
        self._metrics.frames_sent.labels("ERROR").inc()

    def going_away(self) -> None:
        """The server is shutting down: take no new frame, let the one in hand finish (a SEND
        is stored and receipted), flush, then close with 1001."""
        if self.close_request is not None:
            return
        self._stopping = True
        if not self._busy and not self._sends:
            self._close_going_away()

    def _close_going_away(self) -> None:
        if self.close_request is None:
            self.close_request = CloseRequest(CloseCode.GOING_AWAY, "server shutting down")
            self.conn.disconnect()
            self.outbox.close()

    # --- dispatch -----------------------------------------------------------------------------

    async def _handle(self, frame: Frame) -> None:
        if frame.command is not Command.SEND:
            # Answered after the SENDs before it (replies keep the frames' order); a SEND does
            # not wait, so that a burst of them shares a group commit.
            await self._settle_sends()
            if self.close_request is not None:
                return  # one of those SENDs failed the connection
            self._chain = None  # nothing in flight: the next SEND starts a chain (errors sub?)
        await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        match frame.command:
            case Command.CONNECT | Command.STOMP:
                await self._connect(frame)
            case Command.SEND:
                await self._on_send(frame)
                return  # receipted once its message is stored
            case Command.SUBSCRIBE:
                await self._subscribe(frame)
            case Command.UNSUBSCRIBE:
                self._unsubscribe(self.conn.remove_subscription(frame))
            case Command.ACK | Command.NACK:
                self._on_ack(frame)
            case Command.BEGIN:
                self.conn.begin(frame)
            case Command.COMMIT:
                await self._commit(frame)
            case Command.ABORT:
                self.conn.abort(frame)
            case Command.DISCONNECT:
                self._disconnect(frame)
                return
            case Command.CONNECTED | Command.MESSAGE | Command.RECEIPT | Command.ERROR:
                raise self.conn.refuse(frame, "Bad command")  # the connection filters these
            case _:
                assert_never(frame.command)
        self._reply_receipt(frame)

    def _on_ack(self, frame: Frame) -> None:
        if not self.conn.enlist(frame):
            self.conn.acknowledge(frame)

    def _disconnect(self, frame: Frame) -> None:
        # Frames are handled in order, so everything before DISCONNECT is done: receipt it.
        self._reply_receipt(frame)
        self.close_request = CloseRequest(CloseCode.NORMAL, "disconnect")
        self.conn.disconnect()
        self.outbox.close()

    def _reply_receipt(self, frame: Frame) -> None:
        receipt = self.conn.receipt(frame)
        if receipt is not None:
            self.outbox.put(receipt)
            self._metrics.frames_sent.labels("RECEIPT").inc()

    async def _commit(self, frame: Frame) -> None:
        for held in self.conn.commit(frame):
            if held.command is Command.SEND:
                await self._send(held)
            else:
                self.conn.acknowledge(held)

    # --- CONNECT ------------------------------------------------------------------------------

    async def _connect(self, frame: Frame) -> None:
        token = bearer_token(frame.get("Authorization") or frame.get("authorization"))
        token = token or frame.get("passcode")
        try:
            if not token:
                raise AuthenticationFailed("no token")
            identity = self._tokens.verify(token)
        except AuthenticationFailed:
            self._auth_failed()
            raise self.conn.refuse(
                frame, "authentication failed", CloseCode.POLICY_VIOLATION
            ) from None
        if not self._admit_user(self, identity.user_id):
            raise self.conn.refuse(frame, "too many connections", CloseCode.TRY_AGAIN_LATER)
        self.admitted = True
        self.identity = identity
        self.outbox.put(self.conn.accept(frame, identity.user_id))
        self._metrics.frames_sent.labels("CONNECTED").inc()
        await self._fanout.watch_user(identity.user_id, self._on_user_event)
        self._watching_user = True

    # --- SEND ---------------------------------------------------------------------------------

    async def _on_send(self, frame: Frame) -> None:
        """Queue the message for storing and go on reading: the SENDs of a burst share a group
        commit. Each is receipted, in order, by `_answer_sends` once its commit is done."""
        try:
            held = self.conn.enlist(frame)  # in a transaction: stored at its COMMIT
            prepared = None if held else self._draft(frame)
        except (StompProtocolError, ChatError) as refusal:
            await self._settle_sends()  # the refusal comes after the replies to earlier SENDs
            if self.close_request is not None:
                return
            if isinstance(refusal, StompProtocolError):
                raise
            self._refuse_send(frame, refusal)
            return
        if prepared is None or len(self._sends) >= self._settings.max_pipelined_sends:
            await self._settle_sends()  # in order; at the limit, stop reading: back-pressure
            if self.close_request is not None:
                return
        if prepared is None:
            self._reply_receipt(frame)
            return
        if self.close_request is not None:
            return  # an earlier SEND failed while this frame waited (for the frame budget, say)
        if self._chain is None:
            # One chain until the next non-SEND frame. Once broken it stays broken: whatever
            # this connection sends after a failure is dropped, however late it is read.
            self._chain = SendChain(next(_CHAIN_IDS), stop_on_refusal=self._errors_sub is None)
        draft, headers = prepared
        stored = self._chat.submit(self._require_user(), draft, headers, self._chain)
        self._sends.append((frame, stored))
        if self._answerer is None:
            self._answerer = asyncio.get_running_loop().create_task(self._answer_sends())

    async def _answer_sends(self) -> None:
        """RECEIPT (or refuse) each queued SEND, in order, once its commit is done.

        Runs to the end even when the socket is gone: awaiting each SEND is what publishes it.
        """
        try:
            while self._sends:
                frame, stored = self._sends[0]
                try:
                    await stored
                except ChatError as refusal:
                    if self.close_request is None:
                        self._refuse_send(frame, refusal)
                    continue
                except StoreUnavailable:
                    # Outcome unknown: no RECEIPT; the client retries with its clientMessageId.
                    raise self.conn.refuse(
                        frame, "message not stored: try again", CloseCode.TRY_AGAIN_LATER
                    ) from None
                finally:
                    del self._sends[0]
                if self.close_request is None:
                    self._reply_receipt(frame)
        except Exception as exc:
            self._answer_failure(exc)
            for _, stored in self._sends:  # published if stored; never receipted
                with contextlib.suppress(Exception):
                    await stored
            self._sends.clear()
        finally:
            self._answerer = None
            if self._stopping and not self._busy:
                self._close_going_away()

    async def _settle_sends(self) -> None:
        """Until every queued SEND has been answered."""
        while self._answerer is not None:
            await asyncio.shield(self._answerer)

    async def _send(self, frame: Frame) -> None:
        """A SEND held by a transaction, stored at its COMMIT (which is receipted, not it)."""
        try:
            draft, headers = self._draft(frame)
            await self._chat.post(self._require_user(), draft, headers)
        except ChatError as refusal:
            self._refuse_send(frame, refusal)
        except StoreUnavailable:
            raise self.conn.refuse(
                frame, "message not stored: try again", CloseCode.TRY_AGAIN_LATER
            ) from None

    def _draft(self, frame: Frame) -> tuple[MessageDraft, UserHeaders]:
        if frame.get("destination") != SEND_DESTINATION:
            raise self.conn.refuse(frame, "Unknown destination")
        draft = load(self._message_schema, self._json_body(frame))
        return draft, self._user_headers(frame)

    def _require_user(self) -> UserId:
        user = self.user
        assert user is not None  # the connection admits SEND only after CONNECT
        return user

    def _json_body(self, frame: Frame) -> object:
        content_type = (frame.get("content-type") or "application/json").split(";")[0].strip()
        if content_type.lower() not in _JSON_TYPES:
            raise ValidationFailed("content-type must be application/json")
        return parse_json_object(frame.body)

    def _user_headers(self, frame: Frame) -> UserHeaders:
        """The SEND's `x-` headers (first of repeats wins), bounded; all others are dropped."""
        chosen: dict[str, str] = {}
        for name, value in frame.headers:
            if not name.startswith("x-") or name in chosen:
                continue
            if len(chosen) >= self._settings.max_user_headers:
                raise ValidationFailed(
                    f"at most {self._settings.max_user_headers} x- headers"
                )
            if len(value.encode("utf-8")) > self._settings.max_user_header_bytes:
                raise ValidationFailed(
                    f"x- header values are at most {self._settings.max_user_header_bytes} bytes"
                )
            chosen[name] = value
        return tuple(chosen.items())

    def _refuse_send(self, frame: Frame, refusal: ChatError) -> None:
        """Spring's convention: report on /user/queue/errors if watched, else ERROR and close."""
        if self._errors_sub is None:
            code = (
                CloseCode.POLICY_VIOLATION
                if isinstance(refusal, NotAMember | RoomNotFound)
                else CloseCode.PROTOCOL_ERROR
            )
            raise StompProtocolError(
                refusal.message, detail=refusal.code, close_code=code,
                receipt_id=frame.get("receipt"),
            )
        body = orjson.dumps(
            {
                "error": {
                    "code": refusal.code,
                    "message": refusal.message,
                    "details": refusal.details,
                },
                "receiptId": frame.get("receipt"),
                "clientMessageId": _client_message_id(frame.body),
            }
        )
        self._metrics.errors.labels("stomp", refusal.code).inc()
        self._push(self._errors_sub, ERRORS_DESTINATION, body)

    def _push(self, subscription: Subscription, destination: str, body: bytes) -> None:
        headers = self.conn.encode_user_headers(
            (
                ("destination", destination),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            )
        )
        self.outbox.put(self.conn.message_prefix(subscription) + headers + b"\n" + body + b"\0")
        self._metrics.message_frames_sent.inc()

    # --- SUBSCRIBE ----------------------------------------------------------------------------

    async def _subscribe(self, frame: Frame) -> None:
        destination = frame.get("destination") or ""
        room_id = room_of(destination)
        if room_id is None and destination not in (ERRORS_DESTINATION, NOTIFICATIONS_DESTINATION):
            raise self.conn.refuse(frame, "Unknown destination")
        resume_after = self._resume_after(frame)
        subscription = self.conn.add_subscription(frame)
        if destination == ERRORS_DESTINATION:
            self._errors_sub = self._errors_sub or subscription
            return
        if destination == NOTIFICATIONS_DESTINATION:
            self._notifications_sub = self._notifications_sub or subscription
            return
        assert room_id is not None and self.user is not None
        removals = self._removals.get(room_id, 0)
        # Nothing of the room reaches this connection before the check: the tap attaches after.
        allowed = await self._chat.may_read(self.user, room_id)
        if not allowed or self._removals.get(room_id, 0) != removals:
            self.conn.drop_subscription(subscription)
            raise self.conn.refuse(frame, "forbidden", CloseCode.POLICY_VIOLATION)
        tap = Tap(
            room_id,
            sink=partial(self._deliver, subscription),  # lighter than a closure
            drain=self.outbox.wait_drained,
        )
        self._taps[subscription.id] = tap
        await self._fanout.attach(tap, resume_after)

    def _resume_after(self, frame: Frame) -> int | None:
        raw = frame.get("x-resume-after")
        if raw is None:
            return None
        if not _SEQ.fullmatch(raw):
            raise self.conn.refuse(frame, "invalid x-resume-after")
        return int(raw)

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription is self._errors_sub:
            self._errors_sub = None
        if subscription is self._notifications_sub:
            self._notifications_sub = None
        tap = self._taps.pop(subscription.id, None)
        if tap is not None:
            self._fanout.detach(tap)

    # --- deliveries (called by the fan-out; never block) ----------------------------------------

    def _deliver(self, subscription: Subscription, delivery: Delivery) -> None:
        if self.close_request is not None:
            return
        try:
            tail = message_tail(delivery, self.conn.version)
            self.outbox.put(self.conn.message_prefix(subscription) + tail)
        except OutboxOverflow:
            self.slow_consumer()
        except StompProtocolError as exc:
            self.fail(exc)

    def _on_user_event(self, event: UserEvent) -> None:
        if self.close_request is not None:
            return
        if event.kind is UserEventKind.ROOM_REMOVED:
            self._removals[event.room_id] = self._removals.get(event.room_id, 0) + 1
            # Membership ended: end this connection's subscriptions to the room (A8).
            for sub_id, tap in list(self._taps.items()):
                if tap.room_id == event.room_id:
                    subscription = self.conn.subscriptions.get(sub_id)
                    if subscription is not None:
                        self.conn.drop_subscription(subscription)
                    self._taps.pop(sub_id)
                    self._fanout.detach(tap)
        self._count_subscriptions()
        if self._notifications_sub is not None:
            try:
                self._push(self._notifications_sub, NOTIFICATIONS_DESTINATION, event.payload)
            except OutboxOverflow:
                self.slow_consumer()
            except StompProtocolError as exc:
                self.fail(exc)

    # --- end ----------------------------------------------------------------------------------

    def release(self) -> None:
        """Detach from the fan-out; called once when the socket is gone."""
        for tap in self._taps.values():
            self._fanout.detach(tap)
        self._taps.clear()
        if self._watching_user and self.user is not None:
            self._fanout.unwatch_user(self.user, self._on_user_event)
            self._watching_user = False
        self._metrics.subscriptions.dec(self._counted_subscriptions)
        self._counted_subscriptions = 0

    def _count_subscriptions(self) -> None:
        change = len(self.conn.subscriptions) - self._counted_subscriptions
        if change:
            self._metrics.subscriptions.inc(change)
            self._counted_subscriptions += change


def _client_message_id(body: bytes) -> str | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("clientMessageId"), str):
        return str(value["clientMessageId"])
    return None
