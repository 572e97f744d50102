"""Protocol behaviour over a real WebSocket: negotiation, framing, errors, time."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.stomp.frames import Command, Frame, Version, encode
from chat_server.web.app import create_app
from tests.conftest import AiohttpClient, StompFactory, create_direct_room
from tests.stomp_client import StompClient, connect_bytes


@pytest.mark.parametrize(
    ("offered", "chosen", "version"),
    [
        (("v10.stomp", "v11.stomp", "v12.stomp"), "v12.stomp", "1.2"),
        (("v12.stomp", "v10.stomp"), "v12.stomp", "1.2"),
        (("v10.stomp", "v11.stomp"), "v11.stomp", "1.1"),
        (("v10.stomp",), "v10.stomp", "1.0"),
        ((), None, "1.2"),
    ],
)
async def test_highest_offered_subprotocol_wins(
    client: TestClient[Any, Any], tokens: TokenAuthority,
    offered: tuple[str, ...], chosen: str | None, version: str,
) -> None:
    ws = await client.ws_connect("/ws", protocols=offered)
    assert ws.protocol == chosen
    stomp = StompClient(ws)
    frame = await stomp.connect(tokens.mint("alice"),
                                **{"accept-version": "1.0,1.1,1.2"})
    assert frame.get("version") == version
    await ws.close()


async def test_passcode_authenticates_like_the_authorization_header(
    stomp: StompFactory, tokens: TokenAuthority,
) -> None:
    raw = await stomp(None)
    await raw.send_raw(connect_bytes(tokens.mint("carol")))
    frame = await raw.receive()
    assert frame.get("user-name") == "carol"


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", TokenAuthority("another-secret-another-secret-32b").mint("alice"),
     TokenAuthority("test-secret-that-is-long-enough-for-hs256").mint("alice", ttl_s=-3600)],
)
async def test_bad_credentials_get_error_and_policy_close(stomp: StompFactory, token: str) -> None:
    raw = await stomp(None)
    await raw.send_raw(connect_bytes(token))
    error = await raw.receive()
    assert error.command is Command.ERROR
    assert error.get("message") == "authentication failed"
    assert await raw.expect_close() == 1008


@pytest.mark.parametrize("command", [Command.SEND, Command.SUBSCRIBE, Command.DISCONNECT])
async def test_frames_before_connect_are_refused(stomp: StompFactory, command: Command) -> None:
    raw = await stomp(None)
    await raw.send(command, {"destination": "/app/message", "id": "1", "receipt": "r"}, b"")
    error = await raw.receive()
    assert error.get("message") == "not connected"
    assert error.get("receipt-id") == "r"
    assert await raw.expect_close() == 1002


@pytest.mark.parametrize("data", [b"WRONGCOMMAND\n\n\0", b"send\n\n\0", b"MESSAGE\n\n\0"])
async def test_bad_command_is_fatal(stomp: StompFactory, data: bytes) -> None:
    alice = await stomp("alice")
    await alice.send_raw(data)
    error = await alice.expect_error()
    assert error.get("message") == "Bad command"


async def test_second_connect_is_refused(stomp: StompFactory, tokens: TokenAuthority) -> None:
    alice = await stomp("alice")
    await alice.send_raw(connect_bytes(tokens.mint("alice")))
    assert (await alice.expect_error()).get("message") == "already connected"


@pytest.mark.parametrize(
    "destination",
    ["/app/nowhere", "/queue/chat-rooms/1", "/topic/x", "/app/message/"],
)
async def test_send_to_unknown_destination_is_fatal(
    stomp: StompFactory, destination: str
) -> None:
    alice = await stomp("alice")
    await alice.send(Command.SEND, {"destination": destination}, b"{}")
    assert (await alice.expect_error()).get("message") == "Unknown destination"


@pytest.mark.parametrize(
    "destination",
    ["/topic/x", "/queue/chat-rooms/07", "/queue/chat-rooms/+1", "/queue/chat-rooms/1/",
     "/queue/chat-rooms/*", "/queue/chat-rooms/٧", "/queue/chat-rooms/0",
     "/queue/chat-rooms/99999999999999999999", "/user/queue/other"],
)
async def test_subscribe_to_unknown_destination_is_fatal(
    stomp: StompFactory, destination: str
) -> None:
    alice = await stomp("alice")
    await alice.subscribe(destination)
    assert (await alice.expect_error()).get("message") == "Unknown destination"


async def test_frame_over_the_limit_is_refused_with_1009(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: TokenAuthority,
) -> None:
    small = replace(settings, max_frame_bytes=4096, max_body_bytes=1024)
    client = await aiohttp_client(create_app(small))
    ws = await client.ws_connect("/ws", protocols=("v12.stomp",))
    alice = StompClient(ws)
    await alice.connect(tokens.mint("alice"))
    await alice.send(Command.SEND, {"destination": "/app/message"}, b"x" * 2000)
    error = await alice.receive()
    assert error.command is Command.ERROR
    assert await alice.expect_close() == 1009


async def test_frame_split_across_messages_and_frames_sharing_a_message(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    send = encode(Frame(Command.SEND, (("destination", "/app/message"), ("receipt", "1")),
                        b'{"chatRoomId": %d, "content": "split \xc3\xa9"}' % room), Version.V1_2)
    await alice.send_raw(send[:3], binary=True)
    await alice.send_raw(send[3:40], binary=True)
    await alice.send_raw(send[40:] + b"\n\n" + send.replace(b"receipt:1", b"receipt:2"),
                         binary=True)
    assert [(await alice.receive()).get("receipt-id") for _ in range(2)] == ["1", "2"]


async def test_binary_websocket_messages_carry_stomp_like_text(
    stomp: StompFactory, tokens: TokenAuthority,
) -> None:
    raw = await stomp(None)
    await raw.send_raw(connect_bytes(tokens.mint("dave")), binary=True)
    assert (await raw.receive()).command is Command.CONNECTED


async def test_no_connect_in_time_closes(
    aiohttp_client: AiohttpClient, settings: Settings,
) -> None:
    quick = replace(settings, connect_timeout_s=0.2)
    client = await aiohttp_client(create_app(quick))
    ws = await client.ws_connect("/ws")
    raw = StompClient(ws)
    error = await raw.receive()
    assert error.get("message") == "no CONNECT in time"
    assert await raw.expect_close() == 1008


async def test_server_sends_heart_beats_and_closes_a_silent_peer(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: TokenAuthority,
) -> None:
    fast = replace(settings, heartbeat_ms=100)
    client = await aiohttp_client(create_app(fast))
    ws = await client.ws_connect("/ws", protocols=("v12.stomp",))
    alice = StompClient(ws)
    await alice.connect(tokens.mint("alice"), **{"heart-beat": "100,100"})
    started = time.monotonic()
    beats = 0
    while True:
        message = await ws.receive(timeout=5)
        if message.type is not WSMsgType.TEXT:
            break
        if message.data == "\n":
            beats += 1
        else:
            assert message.data.startswith("ERROR\n")
            assert "message:heart-beat timeout" in message.data
    elapsed = time.monotonic() - started
    assert beats >= 1  # the server beat while the client stayed silent
    assert ws.close_code == 1008
    assert 0.15 < elapsed < 2.0  # twice the 100 ms interval, plus scheduling slack


async def test_foreign_origin_is_refused_before_the_upgrade(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get(
        "/ws",
        headers={"Origin": "https://evil.example", "Upgrade": "websocket",
                 "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "origin_not_allowed"


async def test_same_origin_is_allowed(client: TestClient[Any, Any],
                                      tokens: TokenAuthority) -> None:
    host = f"{client.server.host}:{client.server.port}"
    ws = await client.ws_connect("/ws", protocols=("v12.stomp",),
                                 headers={"Origin": f"http://{host}"})
    # Upgraded, and then served: a STOMP session works over it.
    stomp = StompClient(ws)
    connected = await stomp.connect(tokens.mint("alice"))
    assert connected.get("version") == "1.2"
    assert ws.protocol == "v12.stomp"
    await ws.close()

