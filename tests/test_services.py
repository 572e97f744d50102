"""tests/services.py against the real binaries: Redis, PostgreSQL, nginx, and the TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.services import (
    NginxServer,
    PostgresServer,
    RedisServer,
    TcpProxy,
    free_port,
    render_nginx_template,
)

HANG_S = 0.3  # how long "nothing arrives" is watched for


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_server(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server on the test's loop; yields its port."""
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handlers, return_exceptions=True)


@contextlib.asynccontextmanager
async def open_stream(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# ---- plain helpers


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if something holds the port
        assert sock.getsockname() == ("127.0.0.1", port)
    assert 0 < port < 65536


def test_nginx_template_renders_every_placeholder() -> None:
    template = Path(__file__).resolve().parent.parent / "nginx" / "chat_server.conf.template"
    text = render_nginx_template(template.read_text(), [8001, "10.0.0.2:8002"], "127.0.0.1:80")
    assert "server 127.0.0.1:8001;" in text
    assert "server 10.0.0.2:8002;" in text
    assert "listen 127.0.0.1:80;" in text
    assert "ip_hash" not in text and "sticky" not in text.replace("No sticky", "")
    with pytest.raises(ValueError, match="unfilled"):
        render_nginx_template("listen {{listen}};\nfoo {{other}};\n", [1], "80")


def test_example_nginx_conf_holds_the_rendered_template() -> None:
    nginx_dir = Path(__file__).resolve().parent.parent / "nginx"
    example = (nginx_dir / "nginx.conf").read_text()
    begin = example.index("\n", example.index("# ---- BEGIN")) + 1
    embedded = example[begin:example.index("    # ---- END")]
    rendered = render_nginx_template((nginx_dir / "chat_server.conf.template").read_text(),
                                     [8001, 8002, 8003, 8004], "80")
    assert textwrap.dedent(embedded) == rendered
    assert "\nworker_shutdown_timeout 30s;" in example


# ---- Redis


def test_redis_ping_kill_and_restart_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"
    assert redis_server.ping()
    assert redis_server.command("SET", "k", "v") == "OK"
    first_pid = redis_server.pid

    redis_server.kill()
    assert _refused(port)

    redis_server.start()
    assert redis_server.port == port and redis_server.pid != first_pid
    assert redis_server.ping()
    assert redis_server.command("GET", "k") is None  # nothing kept on disk

    redis_server.restart()
    assert redis_server.port == port and redis_server.ping()


def test_redis_config_set_and_pubsub_kill(redis_server: RedisServer) -> None:
    redis_server.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 5")
    reply = redis_server.command("CONFIG", "GET", "client-output-buffer-limit")
    assert isinstance(reply, list) and b"pubsub 65536 32768 5" in reply[1]  # type: ignore[operator]

    with redis_server.connect() as subscriber:
        assert subscriber.command("SUBSCRIBE", "room.1") == [b"subscribe", b"room.1", 1]
        assert redis_server.command("PUBLISH", "room.1", "hi") == 1
        assert subscriber.read_reply() == [b"message", b"room.1", b"hi"]

        assert redis_server.client_kill_pubsub() == 1
        with pytest.raises(ConnectionError):
            subscriber.read_reply()
    assert redis_server.client_kill_pubsub() == 0


# ---- PostgreSQL


async def test_postgres_connect_restart_and_kill(postgres_server: PostgresServer) -> None:
    pg = postgres_server
    assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/chat"
    if os.geteuid() == 0:
        assert pwd.getpwuid(pg.data_dir.stat().st_uid).pw_name == "postgres"
    assert pg.socket_dir.joinpath(f".s.PGSQL.{pg.port}").is_socket()

    conn = await asyncpg.connect(pg.url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "chat"
        await conn.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")

        pg.restart(mode="fast")
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")  # the old connection is gone
    finally:
        await conn.close()

    conn = await asyncpg.connect(pg.url)
    try:
        assert await conn.fetchval("SELECT n FROM kept") == 7
    finally:
        await conn.close()

    pg.kill()  # a crash: recovered from the WAL on the next start
    assert not pg.running and _refused(pg.port)
    pg.start()
    conn = await asyncpg.connect(pg.url)
    try:
        assert await conn.fetchval("SELECT n FROM kept") == 7
    finally:
        await conn.close()


# ---- nginx


def _upstream_app(name: str) -> web.Application:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({
            "server": name,
            "forwardedFor": request.headers.get("X-Forwarded-For"),
            "forwardedProto": request.headers.get("X-Forwarded-Proto"),
            "host": request.headers.get("Host"),
        })

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{name}:{message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_route("*", "/api/whoami", whoami)
    return app


async def test_nginx_proxies_http_and_websocket(
    tmp_path: Path, aiohttp_server: AiohttpServer
) -> None:
    upstreams = [await aiohttp_server(_upstream_app(name)) for name in ("a", "b")]
    ports = [server.port for server in upstreams]
    assert all(isinstance(port, int) for port in ports)
    nginx = NginxServer(tmp_path, [port for port in ports if port is not None])
    nginx.start()
    try:
        async with aiohttp.ClientSession() as session:
            seen = set()
            for _ in range(4):
                async with session.get(f"{nginx.url}/api/whoami") as response:
                    assert response.status == 200
                    body = await response.json()
                seen.add(body["server"])
                assert body["forwardedFor"] == "127.0.0.1"
                assert body["forwardedProto"] == "http"
                assert body["host"] == f"127.0.0.1:{nginx.port}"
            assert seen == {"a", "b"}  # round robin: no stickiness

            async with session.post(f"{nginx.url}/api/whoami", data=b"x" * 70_000) as response:
                assert response.status == 413  # client_max_body_size 64k, refused at the edge

            async with session.ws_connect(nginx.ws_url) as ws:
                await ws.send_str("hello")
                first = await ws.receive_str(timeout=5)
                assert first.endswith(":hello")

                nginx.reload(upstream_ports=[ports[0] or 0])  # an open WebSocket survives
                await ws.send_str("again")
                assert await ws.receive_str(timeout=5) == first.replace("hello", "again")

        async with aiohttp.ClientSession() as session:  # new connections, to the new workers
            for _ in range(2):
                async with session.get(f"{nginx.url}/api/whoami") as response:
                    assert (await response.json())["server"] == "a"  # the reloaded upstreams
    finally:
        nginx.stop()
    assert _refused(nginx.port)


# ---- TcpProxy


async def test_tcp_proxy_forwards_pauses_resumes_and_resets(echo_server: int) -> None:
    with TcpProxy("127.0.0.1", echo_server) as proxy:
        async with open_stream(proxy.port) as (reader, writer):
            writer.write(b"one")
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"one"
            assert proxy.connection_count == 1

            proxy.pause()
            writer.write(b"two")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(3), HANG_S)

            proxy.resume()  # the same connection carries on, nothing lost
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"two"

            proxy.reset()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
            assert proxy.connection_count == 0

        async with open_stream(proxy.port) as (reader, writer):  # new connections still work
            writer.write(b"three")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"three"


async def test_tcp_proxy_makes_redis_silent(redis_server: RedisServer) -> None:
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        async with open_stream(proxy.port) as (reader, writer):
            writer.write(b"PING\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"

            proxy.pause()
            writer.write(b"PING\r\n")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readline(), HANG_S)
            proxy.resume()
            assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"

            proxy.set_delay(0.2)
            started = asyncio.get_running_loop().time()
            writer.write(b"PING\r\n")
            assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"
            assert asyncio.get_running_loop().time() - started >= 0.35  # both directions
            proxy.set_delay(0)

            proxy.reset()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
    assert _refused(proxy.port)
