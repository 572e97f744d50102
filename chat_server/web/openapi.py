"""GET /api/openapi.json: the REST API described from the schemas that validate it (apispec)."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from chat_server import __version__
from chat_server.schemas import (
    CreateRoomIn,
    ErrorOut,
    HistoryQuerySchema,
    MemberSchema,
    MessageListOut,
    MessageOut,
    PresenceOut,
    ReadOut,
    ReadsOut,
    RoomListOut,
    RoomMessageSchema,
    RoomOut,
    RoomReadSchema,
)

_ROOM_ID = {"name": "roomId", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1}}
_USER_ID = {"name": "userId", "in": "path", "required": True, "schema": {"type": "string"}}
_ERRORS = {
    status: {"description": reason, "content": {"application/json": {"schema": "ErrorOut"}}}
    for status, reason in {
        "400": "malformed request",
        "401": "missing or invalid token",
        "404": "no such room among yours",
        "413": "body too large",
        "415": "Content-Type is not application/json",
        "422": "invalid fields",
        "429": "rate limited",
        "503": "database unavailable (retry after Retry-After)",
    }.items()
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(summary: str, answers: dict[str, Any], *, body: str | None = None,
               parameters: list[Any] | None = None, secured: bool = True) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {**answers}}
    if secured:
        operation["security"] = [{"bearer": []}]
        operation["responses"].update(_ERRORS)
    if body is not None:
        operation["requestBody"] = {"required": True, **_json(body)}
    if parameters:
        operation["parameters"] = parameters
    return operation


def build_openapi() -> dict[str, Any]:
    spec = APISpec(
        title="chat_server",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Rooms and history over REST; real time is STOMP over /ws."},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"})
    for name, schema in {
        "Room": RoomOut, "RoomList": RoomListOut, "Message": MessageOut,
        "MessageList": MessageListOut, "ErrorOut": ErrorOut, "CreateRoom": CreateRoomIn,
        "RoomMessage": RoomMessageSchema(max_content_bytes=0), "Member": MemberSchema,
        "ReadIn": RoomReadSchema, "Read": ReadOut, "Reads": ReadsOut, "Presence": PresenceOut,
    }.items():
        spec.components.schema(name, schema=schema)
    history_query = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "integer"}}
        for name in HistoryQuerySchema().fields
    ]
    spec.path("/api/chat-rooms", operations={
        "post": _operation("Create a direct or group room", {
            "201": {"description": "the new room", **_json("Room")},
            "409": {"description": "the two users already share a direct room",
                    **_json("ErrorOut")},
        }, body="CreateRoom"),
        "get": _operation("The caller's rooms, most recent activity first",
                          {"200": {"description": "rooms", **_json("RoomList")}}),
    })
    spec.path("/api/chat-rooms/{roomId}", operations={
        "get": _operation("A room and its members", {
            "200": {"description": "the room", **_json("Room")}}, parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/messages", operations={
        "get": _operation("History by seq cursor (newest first unless `after`)", {
            "200": {"description": "messages", **_json("MessageList")}},
            parameters=[_ROOM_ID, *history_query]),
        "post": _operation("Post a message (the same path as STOMP SEND /app/message)", {
            "201": {"description": "stored", **_json("Message")},
            "200": {"description": "a retried clientMessageId: the stored one",
                    **_json("Message")},
        }, body="RoomMessage", parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/read", operations={
        "post": _operation(
            "Move the caller's read marker forward (a lower seq is accepted and changes "
            "nothing); the room's events and the caller's other connections hear of it", {
                "200": {"description": "the caller's marker now", **_json("Read")},
                "422": {"description": "invalid_seq: past the room's last message, or not an "
                                       "integer from 0", **_json("ErrorOut")},
            }, body="ReadIn", parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/reads", operations={
        "get": _operation("Every member's read marker", {
            "200": {"description": "markers by user", **_json("Reads")}},
            parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/presence", operations={
        "get": _operation("Members online in the room now, on any worker", {
            "200": {"description": "online members", **_json("Presence")}},
            parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/members", operations={
        "post": _operation("Add a member to a group room", {
            "200": {"description": "the room", **_json("Room")},
            "403": {"description": "not a group room", **_json("ErrorOut")},
        }, body="Member", parameters=[_ROOM_ID]),
    })
    spec.path("/api/chat-rooms/{roomId}/members/{userId}", operations={
        "delete": _operation("Leave a group room, or remove a member (the creator only)", {
            "204": {"description": "removed"},
            "403": {"description": "not allowed", **_json("ErrorOut")},
        }, parameters=[_ROOM_ID, _USER_ID]),
    })
    for path, summary in {"/healthz": "Liveness", "/readyz": "Readiness: database and broker",
                          "/api/openapi.json": "This document",
                          "/metrics": "Prometheus metrics (text exposition format)"}.items():
        spec.path(path, operations={"get": _operation(summary, {
            "200": {"description": "ok"}, "503": {"description": "not ready"}}, secured=False)})
    spec.path("/ws", operations={"get": _operation(
        "STOMP 1.2/1.1/1.0 over WebSocket (subprotocols v12.stomp, v11.stomp, v10.stomp); "
        "authenticate in CONNECT", {"101": {"description": "switching protocols"},
                                    "403": {"description": "Origin not allowed"},
                                    "429": {"description": "too many connections"}},
        secured=False)})
    return spec.to_dict()
