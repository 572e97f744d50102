"""The JSON REST API under /api, plus /healthz and /readyz."""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chat_server.auth import AuthenticationFailed, bearer_token
from chat_server.broker.base import BrokerState
from chat_server.chat import ChatService
from chat_server.config import Settings
from chat_server.errors import ChatError, NotAMember, RoomNotFound, StoreUnavailable
from chat_server.models import MessageDraft, RoomId, UserId
from chat_server.schemas import (
    MAX_ID,
    DirectRoomSchema,
    GroupRoomSchema,
    HistoryQuerySchema,
    MemberSchema,
    RoomReadSchema,
    load,
    parse_json_object,
    room_message_schema,
)
from chat_server.web.openapi import build_openapi
from chat_server.web.services import SERVICES

log = logging.getLogger(__name__)

api_routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ROOM_ID = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
#: How long a client should wait before retrying when the database is unavailable.
RETRY_AFTER_S = "2"


def json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def json_error(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return json_response({"error": error}, status=status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as a JSON error body with the right status; never a traceback.

    One coroutine, not two: it stays on the stack of every open WebSocket.
    """
    if _encoded_body(request):
        response = await _refuse_encoded_body(request)
    else:
        try:
            response = await handler(request)
        except Exception as exc:
            response = _error_response(request, exc)
    if response.status >= 400 and (services := request.app.get(SERVICES)) is not None:
        services.metrics.errors.labels("rest", str(response.status)).inc()
    return response


def _encoded_body(request: web.Request) -> bool:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return encoding not in ("", "identity")


async def _refuse_encoded_body(request: web.Request) -> web.StreamResponse:
    """415 for a compressed request body, on any route; the connection is not reused.

    No route takes one, and the app never inflates one (create_app turns aiohttp's
    auto_decompress off), so a body of a few KiB cannot cost a GiB of inflating. A body still
    arriving is not drained either: once the answer is out, the connection is closed.
    """
    response = json_error(
        415, "unsupported_media_type", "compressed request bodies are not accepted"
    )
    response.force_close()
    if request.content.is_eof():
        return response
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()
    return response


def _error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    if isinstance(exc, RateLimited):
        response = json_error(exc.status, exc.code, exc.message)
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response
    if isinstance(exc, ChatError):
        return json_error(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, StoreUnavailable):
        response = json_error(503, "unavailable", "the database is unavailable; retry shortly")
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = json_error(exc.status, code, exc.reason)
        if exc.status == 405:
            response.headers["Allow"] = exc.headers.get("Allow", "")
        return response
    log.error("internal error on %s %s", request.method, request.path, exc_info=exc)
    return json_error(500, "internal_error", "internal error")


class Unauthorized(ChatError):
    code = "unauthorized"
    status = 401


class RateLimited(ChatError):
    code = "rate_limited"
    status = 429

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("too many requests; retry later")
        self.retry_after_s = retry_after_s


class UnsupportedMediaType(ChatError):
    code = "unsupported_media_type"
    status = 415


def _caller(request: web.Request) -> UserId:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise Unauthorized("an Authorization: Bearer token is required")
    services = request.app[SERVICES]
    try:
        user = services.tokens.verify(token).user_id
    except AuthenticationFailed:
        raise Unauthorized("authentication failed") from None
    # Per user, checked before any body is read or any query runs.
    wait = services.rest_limiter.acquire(user)
    if wait:
        raise RateLimited(wait)
    return user


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    return parse_json_object(await request.read())


def _room_id(request: web.Request) -> RoomId:
    raw = request.match_info["roomId"]
    # The same exact rule as STOMP destinations; a route regex with `\d` would take "٧" (A4).
    if _ROOM_ID.fullmatch(raw) is None or int(raw) > MAX_ID:
        raise web.HTTPNotFound()
    return RoomId(int(raw))


def _chat(request: web.Request) -> ChatService:
    return request.app[SERVICES].chat


@api_routes.post("/api/chat-rooms")
async def create_room(request: web.Request) -> web.Response:
    user = _caller(request)
    body = await _json_body(request)
    chat = _chat(request)
    if "participantId" in body:
        room = await chat.create_direct_room(user, load(DirectRoomSchema(), body))
    else:
        room = await chat.create_group_room(user, load(GroupRoomSchema(), body))
    return json_response(room.to_json(), status=201)


@api_routes.get("/api/chat-rooms")
async def list_rooms(request: web.Request) -> web.Response:
    rooms = await _chat(request).rooms_of(_caller(request))
    return json_response({"rooms": [room.to_json() for room in rooms]})


@api_routes.get("/api/chat-rooms/{roomId}")
async def get_room(request: web.Request) -> web.Response:
    room = await _chat(request).room(_caller(request), _room_id(request))
    return json_response(room.to_json())


@api_routes.get("/api/chat-rooms/{roomId}/messages")
async def history(request: web.Request) -> web.Response:
    user = _caller(request)
    query = load(HistoryQuerySchema(), dict(request.query))
    messages = await _chat(request).history(user, _room_id(request), query)
    return json_response({"messages": [message.to_json() for message in messages]})


@api_routes.post("/api/chat-rooms/{roomId}/messages")
async def post_message(request: web.Request) -> web.Response:
    user = _caller(request)
    room_id = _room_id(request)
    settings = request.app[SERVICES].settings
    content, client_message_id = load(
        room_message_schema(settings.max_body_bytes), await _json_body(request)
    )
    try:
        result = await _chat(request).post(user, MessageDraft(room_id, content, client_message_id))
    except NotAMember:
        # The same answer as GET for someone else's room and for no room: existence never leaks.
        raise RoomNotFound(f"no room {room_id} among yours") from None
    return json_response(result.message.to_json(), status=201 if result.created else 200)


@api_routes.post("/api/chat-rooms/{roomId}/read")
async def mark_read(request: web.Request) -> web.Response:
    """Move the caller's read marker forward (a lower seq is accepted and changes nothing)."""
    user = _caller(request)
    room_id = _room_id(request)
    seq = load(RoomReadSchema(), await _json_body(request))
    try:
        marker = await _chat(request).mark_read(user, room_id, seq)
    except NotAMember:
        raise RoomNotFound(f"no room {room_id} among yours") from None
    return json_response({"roomId": marker.room_id, "seq": marker.seq})


@api_routes.get("/api/chat-rooms/{roomId}/reads")
async def reads(request: web.Request) -> web.Response:
    reads = await _chat(request).reads(_caller(request), _room_id(request))
    return json_response({"reads": dict(sorted(reads.items()))})


@api_routes.get("/api/chat-rooms/{roomId}/presence")
async def presence(request: web.Request) -> web.Response:
    online = await _chat(request).online(_caller(request), _room_id(request))
    return json_response({"online": online})


@api_routes.post("/api/chat-rooms/{roomId}/members")
async def add_member(request: web.Request) -> web.Response:
    user = _caller(request)
    room_id = _room_id(request)
    new_member = load(MemberSchema(), await _json_body(request))
    room = await _chat(request).add_member(user, room_id, new_member)
    return json_response(room.to_json())


@api_routes.delete("/api/chat-rooms/{roomId}/members/{userId}")
async def remove_member(request: web.Request) -> web.Response:
    user = _caller(request)
    room_id = _room_id(request)
    member = load(MemberSchema(), {"userId": request.match_info["userId"]})
    await _chat(request).remove_member(user, room_id, member)
    return web.Response(status=204)


@api_routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(_openapi_document(request.app[SERVICES].settings))


@functools.lru_cache(maxsize=4)
def _openapi_document(settings: Settings) -> dict[str, Any]:
    """Built once per settings (a process has one; tests make many): the document states this
    server's limits."""
    return build_openapi(settings)


@api_routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: connections, subscriptions, frames, messages, latency, broker, errors."""
    body, content_type = request.app[SERVICES].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


@api_routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@api_routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        await services.store.ping()
        checks["database"] = "ok"
    except StoreUnavailable:
        checks["database"] = "unavailable"
    broker_state = services.broker.state
    checks["broker"] = "ok" if broker_state is BrokerState.CONNECTED else broker_state.value
    if not services.connections.accepting:
        checks["worker"] = "shutting down"
    ready = all(value == "ok" for value in checks.values())
    return json_response(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )

