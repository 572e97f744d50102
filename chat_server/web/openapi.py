"""GET /api/openapi.json: the REST API described from the schemas that validate it (apispec).

Every rule a request must meet is stated here as the server checks it: patterns and lengths come
from the marshmallow fields (whose patterns are `chat_server.charsets`), ranges from their
validators, limits from the settings; every status a route can answer is listed with its error
codes. What JSON Schema cannot say is said in a description.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from chat_server import __version__
from chat_server.config import Settings
from chat_server.schemas import (
    MAX_ID,
    DirectRoomSchema,
    ErrorOut,
    GroupRoomSchema,
    HealthOut,
    HistoryQuerySchema,
    MemberSchema,
    MessageListOut,
    MessageOut,
    PresenceOut,
    ReadinessOut,
    ReadOut,
    ReadsOut,
    RoomListOut,
    RoomMessageSchema,
    RoomOut,
    RoomReadSchema,
    UserIdField,
)
from chat_server.stomp.negotiation import SUBPROTOCOLS

_ROOM_ID = {
    "name": "roomId", "in": "path", "required": True,
    "description": "a room's id, in ASCII digits without leading zeros; any other roomId is "
                   "answered 404 as an unknown room is",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
_RETRY_AFTER = {"Retry-After": {
    "description": "seconds to wait before retrying", "required": True,
    "schema": {"type": "integer", "minimum": 1},
}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: str, links: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = {"description": description, **_json(_ref(schema))}
    if links:
        answer["links"] = links
    return answer


def _error(description: str, *codes: str, retry_after: bool = False) -> dict[str, Any]:
    """An error answer: the JSON error body, with the codes this status carries here."""
    schema = {"allOf": [_ref("Error"), {"type": "object", "properties": {"error": {
        "type": "object", "properties": {"code": {"type": "string", "enum": list(codes)}},
    }}}]}
    codes_text = ", ".join(f"`{code}`" for code in codes)
    answer = {"description": f"{description} (code {codes_text})", **_json(schema)}
    if retry_after:
        answer["headers"] = _RETRY_AFTER
    return answer


class _Answers:
    """The error answers of the API, worded with this server's limits."""

    def __init__(self, settings: Settings) -> None:
        rate = (f"more than {settings.rest_burst} calls at once or {settings.rest_requests_per_s:g}"
                " per second from one user (CHAT_REST_REQUESTS_PER_S, CHAT_REST_BURST)"
                if settings.rest_requests_per_s else "never here (CHAT_REST_REQUESTS_PER_S=0)")
        self.authenticated = {
            "401": _error("no Authorization: Bearer token, or one that is invalid or expired",
                          "unauthorized"),
            "429": _error(f"rate limited: {rate}", "rate_limited", retry_after=True),
            "503": _error("the database is unavailable", "unavailable", retry_after=True),
        }
        self.body = {
            "400": _error("the body is not one JSON object in UTF-8: malformed, a duplicate key, "
                          "NaN or Infinity, or nested too deeply", "malformed_request"),
            "413": _error(f"the body is over {settings.max_rest_body_bytes} bytes "
                          "(CHAT_MAX_REST_BODY_BYTES)", "request_too_large"),
            "415": _error("Content-Type is not application/json, or the body is compressed "
                          "(any Content-Encoding but identity)", "unsupported_media_type"),
        }
        self.no_room = _error("no such room among the caller's, or a roomId that is not one",
                              "room_not_found", "not_found")
        self.invalid = _error("a field breaks its rule; `details` names each one",
                              "validation_failed")

    def operation(self, operation_id: str, summary: str, responses: dict[str, Any], *,
                  body: str | None = None, parameters: list[Any] | None = None) -> dict[str, Any]:
        """An operation of the API proper: a bearer token, and the answers that go with it."""
        described: dict[str, Any] = {
            "operationId": operation_id, "summary": summary, "security": [{"bearer": []}],
            "responses": {**responses, **self.authenticated},
        }
        if body is not None:
            described["requestBody"] = {"required": True, **_json(_ref(body))}
            described["responses"].update(self.body)
        if parameters:
            described["parameters"] = parameters
        return described


def _link(operation_id: str, body: dict[str, str] | None = None,
          **parameters: str) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, "parameters": parameters}
    if body is not None:
        link["requestBody"] = body
    return link


def _room_links() -> dict[str, Any]:
    """What a client does next with the room it was just given."""
    room = "$response.body#/id"
    return {
        "GetRoom": _link("getRoom", roomId=room),
        "ListMessages": _link("listMessages", roomId=room),
        "PostMessage": _link("postMessage", roomId=room),
        "MarkRead": _link("markRead", {"seq": "$response.body#/lastSeq"}, roomId=room),
        "ListReads": _link("listReads", roomId=room),
        "GetPresence": _link("getPresence", roomId=room),
        "AddMember": _link("addMember", roomId=room),
    }


def build_openapi(settings: Settings) -> dict[str, Any]:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="chat_server",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[plugin],
        info={"description": (
            "Rooms, history and read markers over REST; real time is STOMP over /ws. Every "
            "error is a JSON body `{\"error\": {\"code\", \"message\", \"details\"?}}`. A method "
            "a path does not list is answered 405 with an Allow header. Request bodies ignore "
            "fields they do not name. Patterns are ECMA-262 and Python `re` alike."
        )},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"})
    for name, schema in {
        "Room": RoomOut, "RoomList": RoomListOut, "Message": MessageOut,
        "MessageList": MessageListOut, "Error": ErrorOut, "DirectRoom": DirectRoomSchema,
        "RoomMessage": RoomMessageSchema(max_content_bytes=settings.max_body_bytes),
        "Member": MemberSchema, "ReadIn": RoomReadSchema, "Read": ReadOut, "Reads": ReadsOut,
        "Presence": PresenceOut, "Health": HealthOut, "Readiness": ReadinessOut,
    }.items():
        spec.components.schema(name, schema=schema)
    # The server takes a body with `participantId` as a direct room, whatever else it holds.
    spec.components.schema("GroupRoom", {"not": {"required": ["participantId"]}},
                           schema=GroupRoomSchema)
    spec.components.schema("CreateRoom", {
        "description": "`participantId` (a direct room), or `name` and `memberIds` (a group "
                       "room, without `participantId`)",
        "oneOf": [_ref("DirectRoom"), _ref("GroupRoom")],
    })
    converter = plugin.converter
    assert converter is not None  # set when the plugin joined the spec
    user_id = {"name": "userId", "in": "path", "required": True,
               "schema": converter.field2property(UserIdField())}
    _rooms(spec, _Answers(settings), user_id)
    _unauthenticated(spec)
    spec.path("/ws", operations={"get": _websocket(settings)})
    return spec.to_dict()


def _rooms(spec: APISpec, answers: _Answers, user_id: dict[str, Any]) -> None:
    """The API proper: rooms, their messages, members and read state."""
    operation = answers.operation
    spec.path("/api/chat-rooms", operations={
        "post": operation("createRoom", "Create a direct or a group room", {
            "201": _ok("the new room, the caller a member", "Room", _room_links()),
            "409": _error("the two users already share a direct room; `details.roomId` is it",
                          "room_exists"),
            "422": _error("a field breaks its rule, or `participantId` is the caller",
                          "validation_failed"),
        }, body="CreateRoom"),
        "get": operation("listRooms", "The caller's rooms, most recent activity first",
                         {"200": _ok("the caller's rooms", "RoomList")}),
    })
    spec.path("/api/chat-rooms/{roomId}", operations={
        "get": operation("getRoom", "A room and its members, as the caller sees it", {
            "200": _ok("the room", "Room"), "404": answers.no_room}, parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/messages", operations={
        "get": operation("listMessages", "History by seq cursor: newest first unless `after`", {
            "200": _ok("the messages", "MessageList"), "404": answers.no_room,
            "422": answers.invalid,
        }, parameters=[_ROOM_ID, {"in": "query", "schema": HistoryQuerySchema}]),
        "post": operation("postMessage", "Post a message (the path of STOMP SEND /app/message)", {
            # No links from here: schemathesis would start its sequences with this call
            # (a random roomId, 404) rather than with createRoom.
            "201": _ok("stored and delivered", "Message"),
            "200": _ok("a retried clientMessageId: the message stored the first time", "Message"),
            "404": answers.no_room, "422": answers.invalid,
        }, body="RoomMessage", parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/read", operations={
        "post": operation(
            "markRead",
            "Move the caller's read marker forward (a lower seq is accepted and changes "
            "nothing); the room's events and the caller's other connections hear of it", {
                "200": _ok("the caller's marker now", "Read"), "404": answers.no_room,
                "422": _error("a field breaks its rule (`validation_failed`), or `seq` is past "
                              "the room's last message (`invalid_seq`, with `details.lastSeq`), "
                              "which no schema can know", "validation_failed", "invalid_seq"),
            }, body="ReadIn", parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/reads", operations={
        "get": operation("listReads", "Every member's read marker", {
            "200": _ok("markers by user", "Reads"), "404": answers.no_room},
            parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/presence", operations={
        "get": operation("getPresence", "Members online in the room now, on any worker", {
            "200": _ok("online members", "Presence"), "404": answers.no_room},
            parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/members", operations={
        "post": operation("addMember", "Add a member to a group room (any member may)", {
            "200": _ok("the room, the user a member (already one: unchanged)", "Room", {
                "RemoveMember": _link("removeMember", roomId="$request.path.roomId",
                                      userId="$request.body#/userId")}),
            "403": _error("a direct room: its members never change", "forbidden"),
            "404": answers.no_room, "422": answers.invalid,
        }, body="Member", parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/members/{userId}", operations={
        "delete": operation(
            "removeMember", "Leave a group room (yourself), or remove a member (its creator)", {
                "204": {"description": "removed; the user's subscriptions to the room end"},
                "403": _error("a direct room, or a member who is not the room's creator "
                              "removing someone else", "forbidden"),
                "404": _error("no such room among the caller's, a roomId that is not one, or "
                              "the user is not a member", "room_not_found", "not_found"),
                "422": _error("userId breaks its rule", "validation_failed"),
            }, parameters=[_ROOM_ID, user_id]),
    })


def _unauthenticated(spec: APISpec) -> None:
    """Probes and this document: no token, no rate limit, no database unless said."""
    spec.path("/healthz", operations={"get": {
        "operationId": "getHealth", "summary": "Liveness: the process answers",
        "responses": {"200": _ok("alive", "Health")}}})
    spec.path("/readyz", operations={"get": {
        "operationId": "getReadiness", "summary": "Readiness: database and broker reachable",
        "responses": {"200": _ok("ready", "Readiness"),
                      "503": _ok("not ready; `checks` names the failing part", "Readiness")}}})
    spec.path("/api/openapi.json", operations={"get": {
        "operationId": "getOpenApi", "summary": "This document",
        "responses": {"200": {"description": "an OpenAPI 3.0 document",
                              **_json({"type": "object"})}}}})
    spec.path("/metrics", operations={"get": {
        "operationId": "getMetrics", "summary": "Prometheus metrics",
        "responses": {"200": {"description": "the Prometheus text exposition format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}})


def _header(name: str, description: str, schema: dict[str, Any], *,
            required: bool = True) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": schema}


def _websocket(settings: Settings) -> dict[str, Any]:
    """The upgrade to STOMP over WebSocket (RFC 6455): no HTTP token, the STOMP CONNECT
    carries it. Not for generated HTTP clients; stated so a client knows every answer."""
    protocols = ", ".join(sorted(SUBPROTOCOLS, reverse=True))
    origins = (", ".join(settings.allowed_origins) if settings.allowed_origins
               else "this server's own origin (CHAT_ALLOWED_ORIGINS unset)")
    return {
        "operationId": "openWebSocket",
        "summary": f"STOMP 1.2, 1.1 and 1.0 over WebSocket (subprotocols {protocols}); "
                   "authenticate in CONNECT",
        "parameters": [
            _header("Upgrade", "`websocket`, in any case", {"type": "string",
                    "pattern": "^[ \\t]*[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt][ \\t]*(?![\\s\\S])"}),
            _header("Connection", "a list holding `Upgrade`", {"type": "string"}),
            _header("Sec-WebSocket-Version", "13 (8 and 7, drafts of RFC 6455, are taken too)",
                    {"type": "string", "enum": ["13", "8", "7"]}),
            _header("Sec-WebSocket-Key", "16 random bytes in base64 (RFC 6455 4.1)",
                    {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==(?![\\s\\S])"}),
            _header("Sec-WebSocket-Protocol", f"the STOMP versions the client speaks; the "
                    f"highest it offers is chosen; none known: STOMP 1.2 without a subprotocol "
                    f"({protocols})", {"type": "string"}, required=False),
            _header("Origin", f"sent by browsers: must be one of {origins}; a client without "
                    "one (not a browser) is let in", {"type": "string"}, required=False),
        ],
        "responses": {
            "101": {"description": "switching protocols: STOMP frames follow", "headers": {
                "Sec-WebSocket-Accept": {"required": True, "schema": {"type": "string"}},
                "Sec-WebSocket-Protocol": {
                    "description": "the chosen subprotocol, when one was offered",
                    "schema": {"type": "string", "enum": sorted(SUBPROTOCOLS)}},
            }},
            "400": _error("not a WebSocket upgrade: a header above is missing or wrong (a "
                          "plain GET is one)", "bad_request"),
            "403": _error("the Origin is not allowed", "origin_not_allowed"),
            "429": {"description": (
                f"too many connections from this address (CHAT_MAX_CONNECTIONS_PER_IP, "
                f"{settings.max_connections_per_ip}; code `too_many_connections`), or too many "
                f"failed CONNECTs from it (CHAT_AUTH_FAILURES_PER_MIN, "
                f"{settings.auth_failures_per_min:g}; code `too_many_failed_logins`, with "
                "Retry-After)"),
                **_json({"allOf": [_ref("Error"), {"type": "object", "properties": {"error": {
                    "type": "object", "properties": {"code": {"type": "string", "enum": [
                        "too_many_connections", "too_many_failed_logins"]}}}}}]}),
                "headers": {"Retry-After": {**_RETRY_AFTER["Retry-After"], "required": False}}},
            "503": _error("the worker is shutting down", "shutting_down"),
        },
    }
