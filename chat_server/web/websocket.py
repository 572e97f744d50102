"""GET /ws: the WebSocket endpoint; pumps bytes between the socket and a Session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from aiohttp import WSMsgType, web

from chat_server.session import Session
from chat_server.stomp.connection import SUBPROTOCOLS
from chat_server.stomp.frames import HEARTBEAT
from chat_server.web.rest import json_error
from chat_server.web.services import SERVICES, Services

log = logging.getLogger(__name__)

_MAX_OFFERED_PROTOCOLS = 16
#: After a slow consumer's ERROR and close frame are handed to the socket, how long the peer
#: has to take them before the connection is cut (the buffered bytes are then freed).
SLOW_CONSUMER_GRACE_S = 1.0


def choose_subprotocol(header: str | None) -> str | None:
    """The highest STOMP version the client offers, whatever order it lists them in."""
    if not header:
        return None
    offered = {p.strip() for p in header.split(",")[:_MAX_OFFERED_PROTOCOLS]}
    known = [name for name in SUBPROTOCOLS if name in offered]
    return max(known, key=lambda name: SUBPROTOCOLS[name]) if known else None


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Exact-match allow-list; same origin by default; no Origin: a non-browser client."""
    origin = request.headers.get("Origin")
    if origin is None:
        # Browsers always send Origin on a WebSocket upgrade; auth is a token in CONNECT, never
        # an ambient cookie, so a client without one gains nothing it could not do anyway.
        return True
    if allowed:
        return origin in allowed
    # Behind a TLS-terminating proxy the page is https while this hop is http.
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return origin == f"{scheme}://{request.host}"


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    connections = services.connections
    if not connections.accepting:
        return json_error(503, "shutting_down", "the server is shutting down")
    if not origin_allowed(request, settings.allowed_origins):
        return json_error(403, "origin_not_allowed", "this Origin may not open /ws")
    ip = request.remote or "?"
    retry_after = services.auth_failures.retry_after(ip)
    if retry_after:
        response = json_error(
            429, "too_many_failed_logins", "too many failed CONNECTs from this address"
        )
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response
    if not connections.admit_ip(ip):
        return json_error(429, "too_many_connections", "too many connections from this address")
    try:
        chosen = choose_subprotocol(request.headers.get("Sec-WebSocket-Protocol"))
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (),
            heartbeat=settings.ws_ping_s or None,
            # aiohttp refuses a message of max_msg_size bytes or more; the limit itself is allowed.
            max_msg_size=settings.max_frame_bytes + 1,
            compress=False,
        )
        await ws.prepare(request)
        session = Session(
            chat=services.chat,
            fanout=services.fanout,
            tokens=services.tokens,
            settings=settings,
            subprotocol=SUBPROTOCOLS[chosen] if chosen else None,
            admit_user=connections.admit_user,
            auth_failed=lambda: _count_auth_failure(services, ip),
            metrics=services.metrics,
        )
        connections.add(session)
        services.metrics.connections.inc()
        try:
            await _serve(ws, session, services, request.transport)
        finally:
            services.metrics.connections.dec()
            session.release()
            connections.discard(session)
        return ws
    finally:
        connections.release_ip(ip)


def _count_auth_failure(services: Services, ip: str) -> None:
    services.auth_failures.acquire(ip)  # once empty, the address's next upgrades get 429


async def _serve(
    ws: web.WebSocketResponse,
    session: Session,
    services: Services,
    transport: asyncio.Transport | None,
) -> None:
    stall = services.settings.send_stall_s or None
    writer = asyncio.create_task(_write(ws, session, stall, transport))
    try:
        await _read(ws, session)
    finally:
        if session.close_request is None:
            session.outbox.discard()  # the peer went away first: nothing left to say
        with contextlib.suppress(asyncio.CancelledError):
            await writer


async def _read(ws: web.WebSocketResponse, session: Session) -> None:
    while session.close_request is None:
        deadline = session.read_deadline()
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            session.timed_out()  # also when frames keep coming: a token expires on time
            return
        try:
            message = await ws.receive(timeout=timeout)
        except TimeoutError:
            session.timed_out()
            return
        if message.type is WSMsgType.TEXT:
            await session.receive(message.data.encode("utf-8"))
        elif message.type is WSMsgType.BINARY:
            await session.receive(message.data)
        else:  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp already answered 1009, 1007, 1002)
            return


async def _write(
    ws: web.WebSocketResponse,
    session: Session,
    stall: float | None,
    transport: asyncio.Transport | None,
) -> None:
    """The only writer of the socket: frames from the outbox, heart-beats when idle.

    A write may wait for the peer (the transport's buffer is full), never longer than `stall`,
    and never past the moment the outbox overflows: the session then abandons the outbox, which
    cuts the write short. Fan-out only ever appends to the outbox, so no one else waits here.
    """
    outbox = session.outbox
    loop = asyncio.get_running_loop()
    try:
        while True:
            interval = session.conn.heart_beats.send_ms / 1000 or None
            data = await outbox.take(timeout=interval)
            if data is None:
                break
            frame = data or HEARTBEAT  # STOMP 1.2: any byte counts as a heart-beat
            if _cannot_block(transport, len(frame)):
                # The kernel takes it now and the transport stays below its high-water mark, so
                # aiohttp will not wait for the peer: no stall timer needed (the common case).
                await ws.send_frame(frame, WSMsgType.TEXT)
                continue
            async with asyncio.timeout(stall) as scope:
                outbox.waker = lambda: scope.reschedule(loop.time())
                try:
                    await ws.send_frame(frame, WSMsgType.TEXT)
                finally:
                    outbox.waker = None
        request = session.close_request
        if request is not None:
            closing = ws.close(code=request.code, message=request.reason.encode())
            await asyncio.wait_for(closing, stall)
    except TimeoutError:
        await _drop_slow_consumer(ws, session, transport)
    except (ConnectionResetError, RuntimeError):
        outbox.discard()


#: Room for the WebSocket frame header on top of the payload.
_FRAME_OVERHEAD = 14


def _cannot_block(transport: asyncio.Transport | None, size: int) -> bool:
    """Whether writing `size` bytes keeps the transport under its high-water mark."""
    if transport is None or transport.is_closing():
        return False
    _, high = transport.get_write_buffer_limits()
    return transport.get_write_buffer_size() + size + _FRAME_OVERHEAD < high


async def _drop_slow_consumer(
    ws: web.WebSocketResponse, session: Session, transport: asyncio.Transport | None
) -> None:
    """Send ERROR and a 1008 close without waiting for the peer, then cut the connection."""
    log.info("cutting a slow consumer's connection", extra=session.log_context)
    session.slow_consumer()  # if the stall, not an overflow, found it: ERROR replaces the queue
    outbox = session.outbox
    final = outbox.take_now()
    outbox.discard()
    with contextlib.suppress(Exception):
        if final:
            await asyncio.wait_for(ws.send_frame(final, WSMsgType.TEXT), 0.05)
        await asyncio.wait_for(ws.close(code=1008, message=b"slow consumer", drain=False), 0.05)
    if transport is not None:
        # close() waits for the buffer to flush, which a peer that never reads never allows.
        asyncio.get_running_loop().call_later(SLOW_CONSUMER_GRACE_S, transport.abort)
