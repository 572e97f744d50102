"""W16: a request head must be complete within CHAT_REQUEST_HEAD_TIMEOUT_S (slowloris); idle
keep-alive connections and WebSockets are not that timer's business."""

from __future__ import annotations

import asyncio
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
