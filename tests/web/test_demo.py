"""The demo page's server side: off by default, the static files, and the demo-only sign-in.

The page itself is driven in a real browser by tests/browser/test_demo_page.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat_server.__main__ import _parser
from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.web.app import create_app
from chat_server.web.demo import STATIC_DIR
from tests.conftest import SECRET, AiohttpClient

Client = TestClient[Any, Any]


@pytest.fixture
async def demo_client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    return await aiohttp_client(create_app(replace(settings, demo=True)))


@pytest.mark.parametrize("path", ["/", "/demo/app.js", "/demo/style.css"])
async def test_the_demo_is_off_by_default(client: Client, path: str) -> None:
    assert (await client.get(path)).status == 404
    signed_in = await client.post("/demo/sign-in", json={"userId": "alice"})
    assert signed_in.status == 404


def test_the_demo_is_switched_on_by_flag_or_environment() -> None:
    assert Settings.from_env({}).demo is False
    assert Settings.from_env({"CHAT_DEMO": "1"}).demo is True
    args = _parser().parse_args(["serve", "--demo"])
    assert Settings.from_env({}, demo=args.demo).demo is True
    args = _parser().parse_args(["serve"])
    assert Settings.from_env({"CHAT_DEMO": "1"}, demo=args.demo).demo is True


async def test_the_page_and_its_files_are_served_with_a_strict_policy(demo_client: Client) -> None:
    page = await demo_client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert "Demo only" in html
    assert "'self'" in page.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for name, content_type in [("app.js", "text/javascript"), ("stomp.js", "text/javascript"),
                               ("style.css", "text/css")]:
        served = await demo_client.get(f"/demo/{name}")
        assert served.status == 200
        assert served.content_type == content_type
        assert await served.read() == (STATIC_DIR / name).read_bytes()
        assert f"/demo/{name}" in html


@pytest.mark.parametrize(
    "path", ["/demo/index.html", "/demo/nothing.js", "/demo/..%2fdemo.py", "/demo/.%2e/demo.py"]
)
async def test_only_the_listed_files_are_served(demo_client: Client, path: str) -> None:
    assert (await demo_client.get(path)).status == 404


async def test_demo_sign_in_mints_a_token_for_the_server(demo_client: Client) -> None:
    response = await demo_client.post("/demo/sign-in", json={"userId": "alice"})
    assert response.status == 200
    body = await response.json()
    assert body["userId"] == "alice" and body["demo"] is True
    assert TokenAuthority(SECRET).verify(body["token"]).user_id == "alice"
    rooms = await demo_client.get(
        "/api/chat-rooms", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert rooms.status == 200


@pytest.mark.parametrize("body", [{}, {"userId": ""}, {"userId": " alice"}, {"userId": "a\nb"},
                                  {"userId": "x" * 129}, {"userId": 7}])
async def test_demo_sign_in_refuses_invalid_user_ids(
    demo_client: Client, body: dict[str, Any]
) -> None:
    response = await demo_client.post("/demo/sign-in", json=body)
    assert response.status == 422
    assert (await response.json())["error"]["code"] == "validation_failed"


async def test_demo_sign_in_takes_only_json(demo_client: Client) -> None:
    form = await demo_client.post("/demo/sign-in", data={"userId": "alice"})
    assert form.status == 415
    malformed = await demo_client.post(
        "/demo/sign-in", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert malformed.status == 400
