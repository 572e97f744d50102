"""The only writer of one WebSocket: the outbox's frames, heart-beats, and the close.

Frames leave in the loop iteration after they were queued, joined into one WebSocket message and
written straight into the transport: no task wakes up per delivery, and an idle connection owns
no task at all. Only a peer that reads slowly (the transport above its high-water mark) gets a
task that waits for the transport to drain, never longer than the send stall and never past an
outbox overflow; the connection is then cut as a slow consumer.

Bytes that never sit in the outbox (pongs, pings, heart-beats) count against the same bound
as frames: the outbox's limit covers what it queues plus what the transport still holds, so a
peer that sends pings and never reads the pongs is a slow consumer like any other (BAD_INPUTS
W9, W17), before CONNECT too.

The writer decides nothing about the STOMP conversation: it asks the connection whether the
close is decided and with which code, and tells it when the peer reads too slowly (the
connection then makes the ERROR). `finished()` is how its owner learns that it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from chat_server.outbox import Outbox, OutboxOverflow
from chat_server.outlet import SLOW_CONSUMER
from chat_server.stomp.connection import StompConnection
from chat_server.stomp.frames import HEARTBEAT

log = logging.getLogger(__name__)

#: After a slow consumer's ERROR and close frame are handed to the socket, how long the peer
#: has to take them before the connection is cut (the buffered bytes are then freed).
SLOW_CONSUMER_GRACE_S = 1.0
#: Frames are joined into WebSocket messages of about this size at most.
MAX_MESSAGE_BYTES = 65536
#: Payloads this large are written after their header instead of copied into one buffer.
_COPY_LIMIT = 16384
#: A heart-beat timer that fires this close to its due time counts as due.
_TIMER_SLACK_S = 0.01

_FIN_TEXT = 0x81
_PING = b"\x89\x00"  # final, opcode 9, no payload
_FIN_PONG = 0x8A
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def text_header(length: int) -> bytes:
    """RFC 6455 §5.2 header of a final, unmasked text frame (servers never mask)."""
    if length < 126:
        return _SHORT.pack(_FIN_TEXT, length)
    if length < 65536:
        return _MEDIUM.pack(_FIN_TEXT, 126, length)
    return _LONG.pack(_FIN_TEXT, 127, length)


def _ignore() -> None:
    pass


class SocketWriter:
    """Moves one connection's outbox to its socket; `finished()` waits for the close."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        conn: StompConnection,
        outbox: Outbox,
        transport: asyncio.Transport | None,
        drain: Callable[[], Awaitable[None]],
        stall: float | None,
    ) -> None:
        self._ws = ws
        self._conn = conn
        self._outbox = outbox
        self._transport = transport
        self._drain = drain
        self._stall = stall
        self._loop = asyncio.get_running_loop()
        self._high_water = transport.get_write_buffer_limits()[1] if transport else 0
        self._flush_scheduled = False
        #: The slow path while it runs: waiting for a slow peer, or closing.
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._heartbeat_s = 0.0
        self._heartbeats_decided = False
        self._last_write = self._loop.time()
        #: The socket's side, not the conversation's: everything written and the socket closed.
        self._finished = False
        #: Made only when someone waits for the end (a future per idle connection adds up).
        self._done: asyncio.Future[None] | None = None
        #: Anything received since the last keep-alive sweep (the reader sets it; keepalive.py).
        self.heard_from = True
        self._outbox.on_ready = self._schedule_flush
        if transport is not None:
            self._outbox.downstream = transport.get_write_buffer_size
        if self._outbox.pending or self._conn.closing:
            self._schedule_flush()

    async def finished(self) -> None:
        """Until everything is written and the socket closed (or found gone)."""
        if self._finished:
            return
        if self._done is None:
            self._done = self._loop.create_future()
        await asyncio.shield(self._done)

    # --- the fast path: called from the event loop, never waits -------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._task is None and not self._finished:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._task is not None or self._finished:
            return
        outbox = self._outbox
        try:
            while outbox.pending:
                if self._peer_behind():
                    self._start(self._wait_for_peer())
                    return
                self._write(outbox.take(MAX_MESSAGE_BYTES))
        except ConnectionError:
            self._gone()
            return
        if self._conn.closing:
            self._start(self._close())
        elif not self._heartbeats_decided:
            # The first flush carries CONNECTED (or an ERROR): heart-beats are negotiated by now.
            self._heartbeats_decided = True
            self._start_heartbeats()

    def _peer_behind(self) -> bool:
        """The transport is above its high-water mark: aiohttp's protocol is paused."""
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > self._high_water

    def _write(self, payload: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._ws.closed:
            raise ConnectionResetError("the socket is closing")
        header = text_header(len(payload))
        if len(payload) < _COPY_LIMIT:
            transport.write(header + payload)
        else:
            transport.write(header)
            transport.write(payload)
        self._last_write = self._loop.time()

    # --- WebSocket control frames: straight to the transport, between whole frames, bounded ----

    def ping(self) -> None:
        self._control(_PING)

    def pong(self, payload: bytes) -> None:
        """Answer a client's ping (its payload is at most 125 bytes: RFC 6455 §5.5), if the
        answer fits within the outgoing bound; past it the peer is a slow consumer."""
        self._control(_SHORT.pack(_FIN_PONG, len(payload)) + payload)

    def cut(self) -> None:
        """The peer answers nothing, not even pings: drop the connection (the reader then ends)."""
        log.info("closing: no answer to pings", extra={"session": self._conn.session_id})
        if self._transport is not None:
            self._transport.abort()

    def _control(self, frame: bytes) -> None:
        transport = self._transport
        if (
            self._finished
            or self._conn.closing
            or transport is None
            or transport.is_closing()
            or self._ws.closed
        ):
            return
        try:
            self._outbox.admit(len(frame))
        except OutboxOverflow:
            self._overflowed()
            return
        transport.write(frame)

    def _overflowed(self) -> None:
        """Bytes the peer asked for (pongs) or is owed (heart-beats) do not fit: it takes less
        than it gets. Its socket is full already, so it is cut without waiting for the stall."""
        if self._finished:
            return
        if self._task is None:
            self._start(self._drop_slow_consumer())
        else:
            self._outbox.abandon()  # cuts the wait for the peer short; it then cuts the peer

    # --- heart-beats: one timer, re-armed from the last write -----------------------------------

    def _start_heartbeats(self) -> None:
        interval = self._conn.heart_beats.send_ms / 1000
        if interval:
            self._heartbeat_s = interval
            self._heartbeat = self._loop.call_at(self._last_write + interval, self._beat)

    def _beat(self) -> None:
        now = self._loop.time()
        due = self._last_write + self._heartbeat_s
        if now + _TIMER_SLACK_S >= due:
            if self._task is None and not self._outbox.pending:
                try:
                    self._outbox.admit(len(HEARTBEAT) + 2)  # with its WebSocket header
                    self._write(HEARTBEAT)  # STOMP 1.2: any byte counts as a heart-beat
                except OutboxOverflow:
                    self._heartbeat = None
                    self._overflowed()
                    return
                except ConnectionError:
                    self._gone()
                    return
            due = now + self._heartbeat_s
        self._heartbeat = self._loop.call_at(due, self._beat)

    # --- the slow path: one task, only while the peer lags or the socket closes -----------------

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self._task = self._loop.create_task(work)

    async def _wait_for_peer(self) -> None:
        """Wait, at most the stall, for the transport to drain; an overflow cuts the wait short."""
        outbox = self._outbox
        try:
            async with asyncio.timeout(self._stall) as scope:
                outbox.on_abandon = lambda: scope.reschedule(self._loop.time())
                try:
                    await self._drain()
                finally:
                    outbox.on_abandon = _ignore
        except TimeoutError:
            await self._drop_slow_consumer()
            return
        except ConnectionError:
            self._gone()
            return
        finally:
            self._task = None
        self._flush()

    async def _close(self) -> None:
        close = self._conn.close
        try:
            if close is not None:
                closing = self._ws.close(code=close.code, message=close.reason.encode())
                await asyncio.wait_for(closing, self._stall)
        except TimeoutError:
            await self._drop_slow_consumer()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._task = None
            self._finish()

    async def _drop_slow_consumer(self) -> None:
        """Send ERROR and the close without waiting for the peer, then cut the connection."""
        context = {"session": self._conn.session_id}
        # Found here (the stall, or pongs past the bound): the ERROR replaces whatever is
        # queued. When the close was decided before (an overflow left only its ERROR queued),
        # what is queued goes last.
        final = self._conn.error(SLOW_CONSUMER)
        if final:
            log.info("closing: slow consumer", extra=context)
        else:
            final = self._outbox.take()
        log.info("cutting a slow consumer's connection", extra=context)
        self._outbox.discard()
        close = self._conn.close
        assert close is not None
        with contextlib.suppress(Exception):
            if final:
                await asyncio.wait_for(self._ws.send_frame(final, WSMsgType.TEXT), 0.05)
            await asyncio.wait_for(
                self._ws.close(code=close.code, message=close.reason.encode(), drain=False), 0.05
            )
        if self._transport is not None:
            # close() waits for the buffer to flush, which a peer that never reads never allows.
            self._loop.call_later(SLOW_CONSUMER_GRACE_S, self._transport.abort)
        self._finish()

    # --- the end --------------------------------------------------------------------------------

    def _gone(self) -> None:
        """Nothing more can be written: drop what is queued."""
        self._finish()
        self._outbox.discard()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._done is not None:
            self._done.set_result(None)
        self._outbox.on_ready = _ignore
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
