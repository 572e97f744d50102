"""BAD_INPUTS C4 rows not covered in tests/web/test_rest.py: R1, R8, R11, R12, R15-R17."""

from __future__ import annotations

import asyncio

import pytest

from tests.hardening.conftest import Server, ServerFactory


async def test_r17_rest_rate_limit_is_429_with_retry_after_per_user(
    make_server: ServerFactory,
) -> None:
    server = await make_server(rest_requests_per_s=0.5, rest_burst=3)
    for _ in range(3):
        response = await server.client.get("/api/chat-rooms", headers=server.auth("alice"))
        assert response.status == 200
    limited = await server.client.get("/api/chat-rooms", headers=server.auth("alice"))
    assert limited.status == 429
    assert (await limited.json())["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    # Per user: bob is not slowed down by alice.
    assert (await server.client.get("/api/chat-rooms", headers=server.auth("bob"))).status == 200


@pytest.mark.parametrize(
    "path",
    ["/api/chat-rooms/1%20OR%201=1", "/api/chat-rooms/1'%3B%20DROP%20TABLE%20messages%3B--",
     "/api/chat-rooms/1;--/messages"],
)
async def test_r1_sql_in_the_path_is_404_and_harms_nothing(server: Server, path: str) -> None:
    room = await server.room("alice", "bob")
    response = await server.client.get(path, headers=server.auth("alice"))
    assert response.status == 404
    assert (await server.client.get(f"/api/chat-rooms/{room}",
                                    headers=server.auth("alice"))).status == 200


async def test_r1_sql_in_the_query_is_a_400_class_answer(server: Server) -> None:
    room = await server.room("alice", "bob")
    response = await server.client.get(f"/api/chat-rooms/{room}/messages?limit=1;--",
                                       headers=server.auth("alice"))
    assert response.status in (400, 422)


@pytest.mark.parametrize(
    "body",
    [b'{"content": "a", "content": "b"}',  # R8: duplicate keys are refused
     b'{"content": "a\\u0000b"}',  # R11: NUL
     b'{"content": "\\ud800"}',  # R12: a lone surrogate
     b'{"content": "a\\udfff\\ud800b"}'],
)
async def test_r8_r11_r12_bad_json_text_is_4xx_never_500(server: Server, body: bytes) -> None:
    room = await server.room("alice", "bob")
    response = await server.client.post(
        f"/api/chat-rooms/{room}/messages", data=body,
        headers={**server.auth("alice"), "Content-Type": "application/json"},
    )
    assert response.status in (400, 422), await response.text()
    assert await server.history("alice", room) == []


@pytest.mark.parametrize(
    "smuggle",
    [b"POST /api/chat-rooms HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",  # obs-fold
     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",  # bare CR in a value
     b"POST /api/chat-rooms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1;a\nb\r\nx\r\n0\r\n\r\n"],  # newline in a chunk extension
)
async def test_r15_request_smuggling_is_400_and_nothing_follows(
    server: Server, smuggle: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(smuggle)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400", answer[:80]
    assert answer.count(b"HTTP/1.") == 1  # no second request was served


async def test_r16_cors_preflight_from_a_foreign_origin_gets_no_allow_origin(
    server: Server,
) -> None:
    response = await server.client.options(
        "/api/chat-rooms",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"},
    )
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert response.status < 500
