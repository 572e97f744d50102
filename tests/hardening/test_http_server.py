"""The HTTP server as `serve` and the gunicorn workers run it (web/serving.py).

W16: a request head must be complete within CHAT_REQUEST_HEAD_TIMEOUT_S (slowloris); idle
keep-alive connections and WebSockets are not that timer's business.
W12/R15: a request aiohttp cannot parse gets a JSON error and one WARNING line, without the
request's bytes (a token may be among them) and without a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from chat_server.config import Settings
from chat_server.web.app import create_app
from chat_server.web.serving import ChatRunner
from tests.services import free_port

HEAD_TIMEOUT_S = 1.0


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[int]:
    """The app behind ChatRunner (as `serve` and the gunicorn workers run it); its port."""
    chosen = replace(settings, request_head_timeout_s=HEAD_TIMEOUT_S)
    runner = ChatRunner(create_app(chosen), head_timeout_s=HEAD_TIMEOUT_S, keepalive_timeout=75)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def trickle_head(port: int, gap_s: float, limit_s: float, prefix: bytes = b"") -> float:
    """Send a head one line every `gap_s`; the seconds until the server closed (or `limit_s`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(prefix + b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    line = 0
    try:
        while time.monotonic() - started < limit_s:
            try:
                if await asyncio.wait_for(reader.read(65536), gap_s) == b"":
                    break
            except TimeoutError:
                line += 1
                writer.write(f"X-Slow-{line}: y\r\n".encode())
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def test_a_slow_head_is_closed_at_the_timeout(served: int) -> None:
    held = await trickle_head(served, gap_s=0.2, limit_s=5.0)
    assert HEAD_TIMEOUT_S - 0.1 <= held < HEAD_TIMEOUT_S + 1.0


async def test_a_connection_that_sends_nothing_is_closed_at_the_timeout(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - started < HEAD_TIMEOUT_S + 1.0
    writer.close()


async def test_a_slow_second_head_on_a_kept_alive_connection_is_closed(served: int) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    held = await trickle_head(served, gap_s=0.2, limit_s=5.0, prefix=first)
    assert held < HEAD_TIMEOUT_S + 1.0


async def test_an_idle_keep_alive_connection_outlives_the_head_timeout(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(HEAD_TIMEOUT_S * 2)  # idle, between requests
    finally:
        writer.close()


async def test_a_websocket_outlives_the_head_timeout(served: int) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"ws://127.0.0.1:{served}/ws", protocols=("v12.stomp",)
    ) as ws:
        await asyncio.sleep(HEAD_TIMEOUT_S * 2)
        await ws.send_str("\n")  # a heart-beat EOL: still open
        assert not ws.closed


TOKEN_PREFIX = "Bearer eyJhbGciOiJIUzI1NiJ9.secret-looking"
GARBAGE = {
    "nul-in-header": f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN_PREFIX}"
                     "\x00tail\r\n\r\n",
    "2000-headers": f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN_PREFIX}\r\n"
                    + "".join(f"X-H{i}: v\r\n" for i in range(2000)) + "\r\n",
    "10k-header": f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN_PREFIX}"
                  + "A" * 10240 + "\r\n\r\n",
    "bad-method": f"G\x01T /healthz HTTP/1.1\r\nAuthorization: {TOKEN_PREFIX}\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", list(GARBAGE.values()), ids=list(GARBAGE))
async def test_garbage_http_gets_json_and_one_quiet_log_line(
    served: int, request_bytes: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    writer.write(request_bytes.encode("latin-1"))
    try:
        answer = await asyncio.wait_for(reader.read(), 5)  # then closed
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1].startswith(b"4"), answer[:200]  # HTTP/1.0: version unparsed
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] in {"bad_request", "request_header_fields_too_large"}
    assert b"secret-looking" not in answer
    await asyncio.sleep(0.05)
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == []
    said = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1
    assert "secret-looking" not in said[0].getMessage()
    assert "\n" not in said[0].getMessage()
