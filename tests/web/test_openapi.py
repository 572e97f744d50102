"""GET /api/openapi.json: a valid OpenAPI 3 document that describes every route."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate


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
