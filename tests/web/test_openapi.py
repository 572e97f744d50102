"""GET /api/openapi.json: a valid OpenAPI 3 document that describes every route."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from chat_server import charsets
from chat_server.config import Settings
from chat_server.web.app import create_app
from tests.conftest import AiohttpClient


async def test_openapi_document_is_valid_and_describes_every_route(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)

    app: web.Application = client.app
    served: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS") or route.resource is None:
            continue
        path = route.resource.canonical
        served.add((path, route.method.lower()))
    described = {
        (path, method) for path, item in document["paths"].items() for method in item
    }
    assert served == described


async def test_request_bodies_are_the_validating_schemas(client: TestClient[Any, Any]) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    message = document["components"]["schemas"]["RoomMessage"]
    assert message["required"] == ["content"]
    assert message["properties"]["clientMessageId"]["maxLength"] == 128
    member = document["components"]["schemas"]["Member"]
    assert member["required"] == ["userId"]
    for path in document["paths"]:
        assert not re.search(r"\{[a-z]+_[a-z]+\}", path), "path parameters are camelCase"


# --- what the document states, against what the server checks --------------------------------


async def document_of(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


async def test_patterns_are_the_ones_the_server_checks(client: TestClient[Any, Any]) -> None:
    document = await document_of(client)
    identifier = charsets.IDENTIFIER.pattern
    assert schema_of(document, "DirectRoom")["properties"]["participantId"]["pattern"] == identifier
    assert schema_of(document, "Member")["properties"]["userId"]["pattern"] == identifier
    group = schema_of(document, "GroupRoom")["properties"]
    assert group["memberIds"]["items"]["pattern"] == identifier
    assert group["name"]["pattern"] == charsets.NAME.pattern
    message = schema_of(document, "RoomMessage")["properties"]
    assert message["clientMessageId"]["pattern"] == identifier
    assert message["content"]["pattern"] == charsets.TEXT.pattern
    remove = document["paths"]["/api/chat-rooms/{roomId}/members/{userId}"]["delete"]
    (user_id,) = [p for p in remove["parameters"] if p["name"] == "userId"]
    assert user_id["schema"]["pattern"] == identifier


async def test_lengths_and_ranges_are_stated(client: TestClient[Any, Any]) -> None:
    document = await document_of(client)
    participant = schema_of(document, "DirectRoom")["properties"]["participantId"]
    assert (participant["minLength"], participant["maxLength"]) == (1, 128)
    group = schema_of(document, "GroupRoom")["properties"]
    assert (group["name"]["minLength"], group["name"]["maxLength"]) == (1, 100)
    assert group["memberIds"]["maxItems"] == 100
    assert schema_of(document, "ReadIn")["properties"]["seq"]["minimum"] == 0
    history = document["paths"]["/api/chat-rooms/{roomId}/messages"]["get"]["parameters"]
    limit = {p["name"]: p for p in history}["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 50)
    assert "nullable" not in {p["name"]: p for p in history}["before"]["schema"]


async def test_a_body_with_participant_id_is_a_direct_room_whatever_else_it_holds(
    client: TestClient[Any, Any],
) -> None:
    document = await document_of(client)
    create = schema_of(document, "CreateRoom")
    assert create["oneOf"] == [{"$ref": "#/components/schemas/DirectRoom"},
                               {"$ref": "#/components/schemas/GroupRoom"}]
    assert schema_of(document, "GroupRoom")["not"] == {"required": ["participantId"]}


async def test_the_content_limit_is_the_configured_one(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(replace(settings, max_body_bytes=300)))
    content = schema_of(await document_of(client), "RoomMessage")["properties"]["content"]
    assert content["maxLength"] == 300
    assert "300 bytes" in content["description"]


async def test_every_status_a_route_answers_is_documented(client: TestClient[Any, Any]) -> None:
    document = await document_of(client)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            if operation.get("security"):
                assert {"401", "429", "503"} <= statuses, (method, path)
                assert "Retry-After" in operation["responses"]["429"]["headers"]
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= statuses, (method, path)
            if any(p["in"] == "path" for p in operation.get("parameters", [])):
                assert "404" in statuses, (method, path)
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    schema = answer["content"]["application/json"]["schema"]
                    assert {"$ref": "#/components/schemas/Error"} in schema["allOf"]
    assert "409" in document["paths"]["/api/chat-rooms"]["post"]["responses"]
    add = document["paths"]["/api/chat-rooms/{roomId}/members"]["post"]["responses"]
    assert "403" in add


async def test_the_documented_error_codes_are_the_ones_answered(
    client: TestClient[Any, Any], auth: Callable[[str], dict[str, str]]
) -> None:
    document = await document_of(client)

    def codes(path: str, method: str, status: str) -> list[str]:
        schema = document["paths"][path][method]["responses"][status]["content"][
            "application/json"]["schema"]
        enum: list[str] = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
        return enum

    answer = await client.get("/api/chat-rooms/7", headers=auth("alice"))
    assert answer.status == 404
    assert (await answer.json())["error"]["code"] in codes("/api/chat-rooms/{roomId}", "get", "404")
    answer = await client.get("/api/chat-rooms/07", headers=auth("alice"))
    assert answer.status == 404
    assert (await answer.json())["error"]["code"] in codes("/api/chat-rooms/{roomId}", "get", "404")
    answer = await client.get("/api/chat-rooms")
    assert (await answer.json())["error"]["code"] in codes("/api/chat-rooms", "get", "401")


async def test_a_plain_get_of_ws_is_the_documented_400(client: TestClient[Any, Any]) -> None:
    document = await document_of(client)
    ws = document["paths"]["/ws"]["get"]
    assert {"101", "400", "403", "429", "503"} <= set(ws["responses"])
    required = {p["name"] for p in ws["parameters"] if p["required"]}
    assert required == {"Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key"}
    assert "security" not in ws  # the token travels in STOMP CONNECT
    answer = await client.get("/ws")
    assert answer.status == 400
    assert (await answer.json())["error"]["code"] == "bad_request"
    foreign = await client.get("/ws", headers={"Origin": "https://elsewhere.example"})
    assert foreign.status == 403
    assert (await foreign.json())["error"]["code"] == "origin_not_allowed"


async def test_a_created_room_links_to_the_calls_that_use_it(
    client: TestClient[Any, Any],
) -> None:
    document = await document_of(client)
    operation_ids = {operation["operationId"] for item in document["paths"].values()
                     for operation in item.values()}
    created = document["paths"]["/api/chat-rooms"]["post"]["responses"]["201"]["links"]
    assert {link["operationId"] for link in created.values()} >= {
        "getRoom", "listMessages", "postMessage", "markRead", "listReads", "getPresence",
        "addMember"}
    for link in created.values():
        assert link["operationId"] in operation_ids
        assert link["parameters"]["roomId"] == "$response.body#/id"
