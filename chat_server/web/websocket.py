"""GET /ws: the WebSocket endpoint; pumps bytes between the socket and a Session."""

from __future__ import annotations

import asyncio
import logging
import math
from functools import partial

from aiohttp import WSMessage, WSMsgType, web

from chat_server.session import Session
from chat_server.stomp.errors import CloseCode
from chat_server.stomp.negotiation import SUBPROTOCOLS
from chat_server.web.frame_check import ChatWebSocketResponse, FrameRefused
from chat_server.web.read_deadline import ReadDeadline
from chat_server.web.rest import json_error
from chat_server.web.services import SERVICES, Services
from chat_server.web.serving import ChatRequestHandler
from chat_server.web.socket_writer import SocketWriter

log = logging.getLogger(__name__)

_MAX_OFFERED_PROTOCOLS = 16


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
    ip = services.client_address(request)  # behind a trusted proxy: the client behind it
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
        ws = ChatWebSocketResponse(
            protocols=(chosen,) if chosen else (),
            # Pings come from one worker-wide sweep (keepalive.py), answered pings too.
            autoping=False,
            # The FrameCheck (ChatRunner's connections) refuses a larger message first, so that
            # the client gets ERROR before the 1009; aiohttp's own limit stays as a backstop.
            # aiohttp refuses a message of max_msg_size bytes or more; the limit itself is allowed.
            max_msg_size=settings.max_frame_bytes + 1,
            compress=False,
        )
        await ws.prepare(request)
        if isinstance(request.protocol, ChatRequestHandler) and request.protocol.frame_check:
            request.protocol.frame_check.watch(ws.refuse)
        session = Session(
            chat=services.chat,
            fanout=services.fanout,
            tokens=services.tokens,
            settings=settings,
            reader=services.send_reader,
            metrics=services.metrics,
            subprotocol=SUBPROTOCOLS[chosen] if chosen else None,
            admit_user=connections.admit_user,
            # Once the address's bucket is empty, its next upgrades get 429.
            auth_failed=partial(services.auth_failures.acquire, ip),
        )
        connections.add(session)
        services.metrics.connections.inc()
        try:
            await _serve(ws, session, services, request)
        finally:
            services.metrics.connections.dec()
            session.release()
            connections.discard(session)
        return ws
    finally:
        connections.release_ip(ip)


async def _serve(
    ws: web.WebSocketResponse, session: Session, services: Services, request: web.Request
) -> None:
    stall = services.settings.send_stall_s or None
    writer = SocketWriter(
        ws, session.conn, session.outbox, request.transport, request.writer.drain, stall
    )
    services.keepalive.add(writer)
    try:
        await _read(ws, session, writer)
    finally:
        services.keepalive.discard(writer)
        if not session.conn.closing:
            session.outlet.lost()  # the peer went away first: nothing left to say
        await writer.finished()


async def _read(ws: web.WebSocketResponse, session: Session, writer: SocketWriter) -> None:
    task = asyncio.current_task()
    assert task is not None
    # One frame of coroutine per idle connection, not two: the deadline lives in this one.
    deadline = ReadDeadline(session.read_deadline, task)
    try:
        while not session.conn.closing:
            if not deadline.arm():
                session.timed_out()  # also when frames keep coming: a token expires on time
                return
            deadline.waiting = True
            try:
                message = await ws.receive()
            except asyncio.CancelledError:
                if not deadline.claim_cancel():
                    raise  # not the deadline's doing (or a shutdown's too): pass it on
                session.timed_out()
                return
            finally:
                deadline.waiting = False
            writer.heard_from = True
            if message.type is WSMsgType.TEXT:
                await session.receive(message.data.encode("utf-8"))
            elif message.type is WSMsgType.BINARY:
                await session.receive(message.data)
            elif not await _other(message, session, writer):
                return
    finally:
        deadline.cancel()


async def _other(message: WSMessage, session: Session, writer: SocketWriter) -> bool:
    """A WebSocket message that carries no STOMP bytes; False when it ends the connection."""
    if message.type is WSMsgType.PING:
        writer.pong(message.data)
        return True
    if message.type is WSMsgType.PONG:
        return True  # heard from: that is all a pong says
    if isinstance(message.data, FrameRefused):  # ERROR, queued by the FrameCheck
        await session.refused(CloseCode(message.data.code), str(message.data))
    # CLOSE, CLOSING, CLOSED, ERROR (aiohttp already answered 1009, 1007, 1002)
    return False
