"""Session: one client's STOMP conversation, dispatched frame by frame to the parts that own it.

The connection (`StompConnection`) owns the protocol's state and decides the close; the
outlet writes to the client; the subscription registry and the SEND pipeline do the rest.
The session only reads frames in order and hands each to its owner.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import assert_never

from chat_server.auth import AuthenticationFailed, Identity, TokenAuthority, bearer_token
from chat_server.chat import ChatService
from chat_server.config import Settings
from chat_server.destinations import NOTIFICATIONS_DESTINATION, ROOM_SIGNALS
from chat_server.fanout import Fanout
from chat_server.inbound import SendReader
from chat_server.metrics import Metrics
from chat_server.models import UserEvent, UserEventKind, UserId
from chat_server.outbox import Outbox
from chat_server.outlet import Outlet
from chat_server.ratelimit import TokenBucket
from chat_server.room_signals import RoomSignals
from chat_server.send_pipeline import SendPipeline
from chat_server.stomp.connection import Limits, State, StompConnection
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Command, Frame, Version
from chat_server.stomp.parser import ParserLimits
from chat_server.subscriptions import SubscriptionRegistry


@functools.lru_cache(maxsize=8)
def connection_limits(settings: Settings) -> Limits:
    """The STOMP limits of a worker's settings, built once and shared by its connections."""
    return Limits(
        ParserLimits(
            max_frame_bytes=settings.max_frame_bytes,
            max_body_bytes=settings.max_body_bytes,
            max_headers=settings.max_headers,
            max_header_bytes=settings.max_header_bytes,
        ),
        max_subscriptions=settings.max_subscriptions,
        max_unacked=settings.max_unacked,
    )


class Session:
    """Everything one WebSocket client does, from CONNECT to the close."""

    __slots__ = (
        "_admit_user",
        "_auth_failed",
        "_budget",
        "_busy",
        "_chat",
        "_fanout",
        "_metrics",
        "_settings",
        "_signals",
        "_stopper",
        "_tokens",
        "_watching_user",
        "admitted",
        "conn",
        "identity",
        "outbox",
        "outlet",
        "sends",
        "started",
        "subscriptions",
    )

    def __init__(
        self,
        *,
        chat: ChatService,
        fanout: Fanout,
        tokens: TokenAuthority,
        settings: Settings,
        reader: SendReader,
        metrics: Metrics,
        subprotocol: Version | None = None,
        admit_user: Callable[[Session, UserId], bool] = lambda _session, _user: True,
        auth_failed: Callable[[], object] = lambda: None,
    ) -> None:
        self._fanout = fanout
        self._tokens = tokens
        self._settings = settings
        self._metrics = metrics
        self._admit_user = admit_user
        self._auth_failed = auth_failed
        self.started = time.monotonic()
        self.conn = StompConnection(
            connection_limits(settings),
            server_heartbeat_ms=settings.heartbeat_ms,
            subprotocol=subprotocol,
            now=self.started,
        )
        self.outbox = Outbox(settings.outbox_bytes)
        self.outlet = Outlet(self.conn, self.outbox, metrics)
        self.subscriptions = SubscriptionRegistry(
            self.conn, self.outlet, fanout, chat.may_read, metrics, chat.room_state
        )
        self.sends = SendPipeline(
            chat=chat,
            reader=reader,
            outlet=self.outlet,
            subscriptions=self.subscriptions,
            metrics=metrics,
            max_pipelined=settings.max_pipelined_sends,
        )
        self._chat = chat
        #: Made at the first typing or read SEND (most connections never send one).
        self._signals: RoomSignals | None = None
        self.identity: Identity | None = None
        #: True once the user counted against its connection cap (released on close).
        self.admitted = False
        self._budget = TokenBucket.full(settings.frames_per_s, settings.frames_burst, self.started)
        #: A frame is being handled (a SEND may be waiting for its commit).
        self._busy = False
        self._watching_user = False
        self._stopper: asyncio.Task[None] | None = None

    @property
    def log_context(self) -> dict[str, object]:
        """`extra=` for log records about this connection (never its token)."""
        return self.outlet.log_context

    @property
    def signals(self) -> RoomSignals:
        """This connection's SENDs to /app/typing and /app/read."""
        if self._signals is None:
            self._signals = RoomSignals(
                chat=self._chat, outlet=self.outlet, subscriptions=self.subscriptions,
                refuse=self.sends.refuse,
            )
        return self._signals

    @property
    def user(self) -> UserId | None:
        return self.identity.user_id if self.identity else None

    # --- input --------------------------------------------------------------------------------

    async def receive(self, data: bytes) -> None:
        """Bytes from the socket: handle every complete frame, in order."""
        conn = self.conn
        try:
            conn.receive_data(data, time.monotonic())
            counted = self._metrics.frames_received_by_command
            for frame in conn.events_received():
                counted[frame.command].inc()
                self._busy = True
                try:
                    pause = self._budget.borrow(time.monotonic())
                    if pause:
                        await asyncio.sleep(pause)  # not reading the socket is back-pressure
                    await self._handle(frame)
                finally:
                    self._busy = False
                if conn.closing:
                    return
            if conn.state is State.STOPPING:
                await self._finish_stopping()
        except Exception as exc:
            if not conn.closing:
                await self.sends.settle()  # the ERROR comes after the earlier SENDs' replies
            self.outlet.fail_on(exc)

    def read_deadline(self) -> float | None:
        """Monotonic time by which the peer must have sent something, or completed the frame
        it began (or its token expired); called each time the reader is about to wait."""
        # Plain comparisons, no list or generator: this runs once per WebSocket message.
        now = time.monotonic()
        deadline = self.conn.peer_deadline(self._settings.connect_timeout_s, self.started)
        frame_deadline = self._frame_deadline(now)
        if frame_deadline is not None and (deadline is None or frame_deadline < deadline):
            deadline = frame_deadline
        identity = self.identity
        if identity is not None and identity.expires_at is not None:
            expiry = now + (identity.expires_at - time.time())
            if deadline is None or expiry < deadline:
                deadline = expiry
        return deadline

    def _frame_deadline(self, now: float) -> float | None:
        """When the frame in progress must be complete (CHAT_FRAME_TIMEOUT_S; BAD_INPUTS F1)."""
        if not self._settings.frame_timeout_s:
            return None
        since = self.conn.incomplete_frame_since(now)
        return None if since is None else since + self._settings.frame_timeout_s

    def timed_out(self) -> None:
        """The read deadline passed: say why, then close."""
        now = time.monotonic()
        frame_deadline = self._frame_deadline(now)
        if self.conn.state is State.AWAITING_CONNECT:
            reason = "no CONNECT in time"
        elif frame_deadline is not None and frame_deadline <= now:
            reason = "frame timeout"
        else:
            silence = self.conn.peer_deadline(self._settings.connect_timeout_s, self.started)
            silent = silence is not None and silence <= now
            reason = "heart-beat timeout" if silent else "session expired"
        self.outlet.fail(StompProtocolError(reason, close_code=CloseCode.POLICY_VIOLATION))

    async def refused(self, code: CloseCode, reason: str) -> None:
        """The WebSocket layer refused what the peer sent next; the frames before it are
        answered first. A message over the size limit gets ERROR `frame too large` before the
        close (STOMP 1.2, "Size Limits": the server SHOULD send ERROR, then close)."""
        if self.conn.closing:
            return
        await self.sends.settle()
        if code is CloseCode.MESSAGE_TOO_BIG:
            self.outlet.fail(StompProtocolError("frame too large", detail=reason, close_code=code))
        else:
            self.outlet.close(code, reason)

    def going_away(self) -> None:
        """The server is shutting down: take no new frame, let the one in hand finish (a SEND
        is stored and receipted), flush, then close with 1001."""
        if self.conn.closing:
            return
        self.conn.stop()
        if not self._busy:  # else `receive` finishes the frame in hand, then stops
            self._stopper = asyncio.get_running_loop().create_task(self._finish_stopping())

    async def _finish_stopping(self) -> None:
        await self.sends.settle()
        self.outlet.close(CloseCode.GOING_AWAY, "server shutting down")

    # --- dispatch -----------------------------------------------------------------------------

    async def _handle(self, frame: Frame) -> None:
        if frame.command is Command.SEND and frame.get("destination") not in ROOM_SIGNALS:
            # Not awaited: the SENDs of a burst share a group commit, answered in order.
            await self.sends.send(frame, self._require_user())
            return
        await self.sends.settle()  # answered after the SENDs before it
        if self.conn.closing:
            return  # one of those SENDs failed the connection
        self.sends.end_burst()
        if frame.command is Command.SEND:  # typing or a read marker
            if self.conn.enlist(frame):
                self.outlet.receipt(frame)  # held for its transaction's COMMIT
            else:
                await self.signals.send(frame, self._require_user())
            return
        await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        match frame.command:
            case Command.CONNECT | Command.STOMP:
                await self._connect(frame)
            case Command.SUBSCRIBE:
                await self.subscriptions.subscribe(frame, self._require_user())
            case Command.UNSUBSCRIBE:
                self.subscriptions.unsubscribe(frame)
            case Command.ACK | Command.NACK:
                if not self.conn.enlist(frame):
                    self.conn.acknowledge(frame)
            case Command.BEGIN:
                self.conn.begin(frame)
            case Command.COMMIT:
                await self._commit(frame)
            case Command.ABORT:
                self.conn.abort(frame)
            case Command.DISCONNECT:
                # Frames are handled in order, so everything before DISCONNECT is done.
                self.outlet.receipt(frame)
                self.outlet.close(CloseCode.NORMAL, "disconnect")
                return
            case (
                Command.SEND | Command.CONNECTED | Command.MESSAGE | Command.RECEIPT | Command.ERROR
            ):
                raise self.conn.refuse(frame, "Bad command")  # the connection filters these
            case _:
                assert_never(frame.command)
        self.outlet.receipt(frame)

    async def _commit(self, frame: Frame) -> None:
        for held in self.conn.commit(frame):
            if held.command is Command.SEND and held.get("destination") in ROOM_SIGNALS:
                await self.signals.send(held, self._require_user(), receipt=False)
            elif held.command is Command.SEND:
                await self.sends.commit_held(held, self._require_user())
            else:
                self.conn.acknowledge(held)

    def _require_user(self) -> UserId:
        user = self.user
        assert user is not None  # the connection admits frames but CONNECT only after it
        return user

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
        self.outlet.user = identity.user_id
        self.outlet.reply(self.conn.accept(frame, identity.user_id), "CONNECTED")
        await self._fanout.watch_user(identity.user_id, self._on_user_event)
        self._watching_user = True

    # --- events for the user (called by the fan-out; never block) -----------------------------

    def _on_user_event(self, event: UserEvent) -> None:
        if self.conn.closing:
            return
        if event.kind is UserEventKind.ROOM_REMOVED:
            # Membership ended: end this connection's subscriptions to the room (A8).
            self.subscriptions.room_removed(event.room_id)
            if self._signals is not None:
                self._signals.room_removed(event.room_id)
        notifications = self.subscriptions.notifications
        if notifications is not None:
            self.outlet.push(notifications, NOTIFICATIONS_DESTINATION, event.payload)

    # --- end ----------------------------------------------------------------------------------

    def release(self) -> None:
        """Detach from the fan-out and count how it ended; called once when the socket is gone."""
        self.subscriptions.release()
        if self._watching_user and self.user is not None:
            self._fanout.unwatch_user(self.user, self._on_user_event)
            self._watching_user = False
        close = self.conn.close
        if close is not None and close.error:
            # The close code, not the message, is the label: messages may name ids (unbounded).
            self._metrics.errors.labels("stomp", close.code.name.lower()).inc()
            self._metrics.frames_sent.labels("ERROR").inc()
