"""R6: a compressed request body is refused (415 JSON) on every route, never inflated, and its
connection closed rather than drained; a 256 MiB gzip bomb costs the server next to no CPU."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import zlib

import pytest

from tests.hardening.conftest import Server

INFLATED_MIB = 256


def gzip_bomb(mebibytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(mebibytes)), packer.flush()])


async def exchange(server: Server, head: str, body: bytes, *, declared: int | None = None,
                   ) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a request (Content-Length `declared`, default the body's), return the response head
    and body bytes read so far, and the open stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    length = len(body) if declared is None else declared
    # Not drained: the server may answer, and close, before it has taken the whole body.
    writer.write(f"{head}Host: x\r\nContent-Length: {length}\r\n\r\n".encode() + body)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    size = int(next(line.split(b":")[1] for line in answer.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")))
    return answer + await asyncio.wait_for(reader.readexactly(size), 5), reader, writer


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "gzip, identity", "x"])
@pytest.mark.parametrize("route", ["GET /healthz", "POST /api/chat-rooms", "GET /ws"])
async def test_compressed_body_is_415_json_on_any_route(
    server: Server, route: str, encoding: str
) -> None:
    body = gzip.compress(json.dumps({"participantId": "bob"}).encode())
    head = (f"{route} HTTP/1.1\r\nContent-Encoding: {encoding}\r\n"
            "Content-Type: application/json\r\n")
    answer, reader, writer = await exchange(server, head, body)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 415 Unsupported Media Type"
    assert b"Connection: close" in rest
    assert b"Content-Type: application/json" in rest
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "unsupported_media_type"
    assert await asyncio.wait_for(reader.read(), 2) == b""  # not kept alive
    writer.close()


async def test_identity_encoding_is_an_ordinary_body(server: Server) -> None:
    answer, _, writer = await exchange(server, "GET /healthz HTTP/1.1\r\n"
                                               "Content-Encoding: identity\r\n", b"{}")
    assert answer.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_a_gzip_bomb_is_never_inflated(server: Server) -> None:
    bomb = gzip_bomb(INFLATED_MIB)
    started = time.process_time()  # this process runs the server too
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
                 f"Content-Length: {len(bomb)}\r\n\r\n".encode() + bomb)
    # The server answers 415 and closes with most of the body unread, so the kernel resets
    # the connection, which may overtake the answer: what counts here is the CPU spent.
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            received += chunk
    writer.close()
    assert received == b"" or received.startswith(b"HTTP/1.1 415 ")
    await asyncio.sleep(0.5)  # anything the server would still do with the body, it does now
    # Inflating 256 MiB takes about 0.7 s of CPU here; refusing it takes milliseconds.
    assert time.process_time() - started < 0.25


async def test_the_rest_of_a_refused_body_is_not_waited_for(server: Server) -> None:
    """The client declares 10 MiB and stops after 64 KiB: the server answers and closes at
    once, rather than lingering for the rest (aiohttp drains for up to 10 s)."""
    started = time.monotonic()
    answer, reader, writer = await exchange(
        server, "POST /api/chat-rooms HTTP/1.1\r\nContent-Encoding: gzip\r\n",
        bytes(65536), declared=10 << 20,
    )
    assert answer.startswith(b"HTTP/1.1 415 ")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - started < 1.0
    writer.close()
