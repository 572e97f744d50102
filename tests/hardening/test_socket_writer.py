"""The socket writer: frames straight into the transport, coalesced, with a task only for a
peer that lags; whatever path a frame takes, it arrives whole and in order."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import WSMsgType, web

from chat_server.stomp.frames import Command
from chat_server.web.socket_writer import text_header
from tests.conftest import AiohttpClient
from tests.hardening.conftest import Server, ServerFactory, connect_bytes, frame, send_body


def writer_tasks() -> list[asyncio.Task[object]]:
    return [
        task for task in asyncio.all_tasks()
        if "SocketWriter" in getattr(task.get_coro(), "__qualname__", "")
    ]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
async def test_text_header_makes_frames_a_client_reads(
    aiohttp_client: AiohttpClient, size: int
) -> None:
    payload = bytes(ord("a") + i % 26 for i in range(size))

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert request.transport is not None
        request.transport.write(text_header(len(payload)) + payload)
        await ws.receive()  # the client's close
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    ws = await client.ws_connect("/", max_msg_size=0)
    message = await ws.receive()
    assert message.type is WSMsgType.TEXT
    assert message.data == payload.decode()
    await ws.close()


async def test_frames_queued_in_one_loop_iteration_leave_in_one_message(server: Server) -> None:
    alice = await server.ws("alice")
    (session,) = [s for s in server.services.connections.sessions if s.user == "alice"]
    for part in (b"\n", b"\n\n", b"\n\n\n"):
        session.outbox.put(part)
    message = await alice.ws.receive(timeout=5)
    assert message.type is WSMsgType.TEXT
    assert message.data == "\n" * 6
    assert writer_tasks() == []  # the fast path needed no task


async def test_idle_connections_own_no_writer_task(server: Server) -> None:
    room = await server.room("alice", "bob", "carol")
    clients = [await server.subscribed(user, room) for user in ("bob", "carol")]
    await server.say(await server.ws("alice"), room, "hello")
    for client in clients:
        _, body = await client.receive_message()
        assert body["content"] == "hello"
    assert writer_tasks() == []


async def test_a_peer_that_lags_then_reads_gets_everything_in_order(
    make_server: ServerFactory,
) -> None:
    server = await make_server(outbox_bytes=256 * 1024 * 1024, send_stall_s=30.0)
    room = await server.room("alice", "bob")
    lagging = await server.raw(rcvbuf=4096)
    await lagging.send_text(connect_bytes(server.tokens.mint("bob")))
    assert (await lagging.receive()).payload.startswith(b"CONNECTED\n")
    await lagging.send_text(frame("SUBSCRIBE", [("id", "0"), ("receipt", "s"),
                                                ("destination", f"/queue/chat-rooms/{room}")]))
    assert (await lagging.receive()).payload.startswith(b"RECEIPT\n")
    alice = await server.ws("alice")
    count = 0
    # Until the kernel's buffers and the transport's are full and bob's writer has to wait.
    while not writer_tasks() and count < 2000:
        await server.say(alice, room, f"{count:04d}" + "x" * 8000)
        count += 1
    assert len(writer_tasks()) == 1, "the writer never had to wait"
    for _ in range(5):  # queued in the outbox while the writer waits
        await server.say(alice, room, f"{count:04d}" + "x" * 8000)
        count += 1

    data = b""
    while data.count(b"\0") < count:
        received = await lagging.receive()
        assert received.opcode == 1  # text
        data += received.payload
    frames = data.split(b"\0")[:count]
    contents = [json.loads(f.partition(b"\n\n")[2])["content"][:4] for f in frames]
    assert contents == [f"{n:04d}" for n in range(count)]
    # Caught up: the writer is back on the fast path and the connection still serves.
    assert writer_tasks() == []
    await server.say(alice, room, "after")
    assert b'"content":"after"' in (await lagging.receive()).payload


async def test_a_send_after_the_peer_vanished_is_dropped_quietly(server: Server) -> None:
    room = await server.room("alice", "bob")
    bob = await server.subscribed("bob", room)
    alice = await server.ws("alice")
    await bob.ws.close()
    await server.say(alice, room, "into the void")
    assert [m["content"] for m in await server.history("alice", room)] == ["into the void"]
    await alice.send(Command.SEND, {"destination": "/app/message",
                                    "content-type": "application/json", "receipt": "r"},
                     send_body(room, "still fine"))
    assert (await alice.receive()).command is Command.RECEIPT
