"""Every limit of CONTRACT.md's table: at the limit accepted, one byte or item over refused."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat_server.models import UserId
from chat_server.stomp.frames import Command
from tests.hardening.conftest import Server, ServerFactory, expect_fatal
from tests.stomp_client import connect_bytes, frame, send_body
from tests.waiting import eventually

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]


def padded_send(room: int, total: int) -> bytes:
    """A valid SEND of exactly `total` bytes on the wire (padding in dropped, non-x- headers)."""
    body = send_body(room, "pad")
    missing = total - len(frame("SEND", [*SEND_JSON, ("receipt", "r")], body))
    count = -(-missing // 8000)
    sizes = [missing // count + (1 if n < missing % count else 0) for n in range(count)]
    # Each header line is "pNN:" + value + LF.
    headers = [(f"p{n:02d}", "v" * (size - 5)) for n, size in enumerate(sizes)]
    data = frame("SEND", [*SEND_JSON, *headers, ("receipt", "r")], body)
    assert len(data) == total, (len(data), total)
    return data


@pytest.mark.parametrize("over", [0, 1])
async def test_frame_size_limit(server: Server, over: int) -> None:
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    data = padded_send(room, server.settings.max_frame_bytes + over)
    if over:
        # Split in two WebSocket messages, so the STOMP limit (not the WebSocket one) answers.
        await alice.send_raw(data[:40000], binary=True)
        await alice.send_raw(data[40000:], binary=True)
        await expect_fatal(alice, "frame too large", 1009)
    else:
        await alice.send_raw(data, binary=True)
        assert (await alice.receive()).get("receipt-id") == "r"


@pytest.mark.parametrize("pre_connect", [True, False])
async def test_websocket_message_over_the_limit_gets_error_then_1009(
    server: Server, pre_connect: bool
) -> None:
    """W3: one WebSocket message over CHAT_MAX_FRAME_BYTES gets ERROR `frame too large` before
    the close 1009 (STOMP 1.2, Size Limits: SHOULD send ERROR, then close), before CONNECT too;
    one at the limit is served; the worker stays up."""
    limit = server.settings.max_frame_bytes
    alice = await server.ws(None if pre_connect else "alice")
    await alice.send_raw(b"\n" * limit)  # heart-beat EOLs: at the limit, taken and ignored
    await alice.send_raw(b"\n" * (limit + 1))
    error = await expect_fatal(alice, "frame too large", 1009)
    assert error.get("version") == ("1.0,1.1,1.2" if pre_connect else None)
    assert (await server.ws("alice")).ws.closed is False


@pytest.mark.parametrize("pre_connect", [True, False])
async def test_bytes_without_nul_past_the_frame_limit_are_refused(
    server: Server, pre_connect: bool
) -> None:
    """F2: pre- and post-CONNECT; the parser never holds more than the limit."""
    stomp = await server.ws(None if pre_connect else "alice")
    head = b"SEND\n" if not pre_connect else b"CONNECT\n"
    data = head + b"".join(b"h%d:%s\n" % (n, b"v" * 7000) for n in range(10))
    await stomp.send_raw(data[:40000], binary=True)
    await stomp.send_raw(data[40000:], binary=True)
    error = await expect_fatal(stomp, "frame too large", 1009)
    assert error.get("version") == ("1.0,1.1,1.2" if pre_connect else None)


@pytest.mark.parametrize("over", [0, 1])
async def test_header_count_limit(server: Server, over: int) -> None:
    alice = await server.ws("alice")
    # SUBSCRIBE id + destination + receipt + padding = 32 (+1).
    extra = [(f"h{n}", "") for n in range(server.settings.max_headers - 3 + over)]
    await alice.send_raw(frame("SUBSCRIBE", [("id", "1"), ("destination", "/user/queue/errors"),
                                             *extra, ("receipt", "r")]))
    if over:
        await expect_fatal(alice, "too many headers", 1009)
    else:
        assert (await alice.receive()).get("receipt-id") == "r"


@pytest.mark.parametrize("over", [0, 1])
async def test_header_line_limit(server: Server, over: int) -> None:
    """8 KiB per header line, the room a JWT needs in CONNECT."""
    raw = await server.ws(None)
    token = server.tokens.mint("alice")
    limit = server.settings.max_header_bytes
    line = "passcode:" + token
    pad = ("x-pad", "v" * (limit - len("x-pad:") + over))
    await raw.send_raw(frame("CONNECT", [("accept-version", "1.2"), ("host", "h"),
                                         (line.split(":", 1)[0], token), pad]))
    if over:
        await expect_fatal(raw, "header too long", 1009)
    else:
        assert (await raw.receive()).command is Command.CONNECTED


@pytest.mark.parametrize("over", [0, 1])
async def test_send_body_limit(server: Server, over: int) -> None:
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    limit = server.settings.max_body_bytes
    body = send_body(room, "")
    body = send_body(room, "x" * (limit - len(body) + over))
    headers = [*SEND_JSON, ("content-length", str(len(body))), ("receipt", "r")]
    await alice.send_raw(frame("SEND", headers, body), binary=True)
    if over:
        await expect_fatal(alice, "body too large", 1009)
    else:
        assert (await alice.receive()).get("receipt-id") == "r"
    # And without content-length: refused as the excess arrives.
    alice = await server.ws("alice")
    await alice.send_raw(frame("SEND", [*SEND_JSON, ("receipt", "u")], body), binary=True)
    if over:
        await expect_fatal(alice, "body too large", 1009)
    else:
        assert (await alice.receive()).get("receipt-id") == "u"


async def test_subscription_limit(server: Server) -> None:
    """P14: the 50th subscription is taken, the 51st is fatal."""
    alice = await server.ws("alice")
    limit = server.settings.max_subscriptions
    data = b"".join(frame("SUBSCRIBE", [("id", str(n)),
                                        ("destination", "/user/queue/notifications")])
                    for n in range(limit - 1))
    await alice.send_raw(data + frame("SUBSCRIBE", [("id", "last"), ("receipt", "r"), (
        "destination", "/user/queue/notifications")]))
    assert (await alice.receive()).get("receipt-id") == "r"
    await alice.subscribe("/user/queue/notifications", "one-more")
    await expect_fatal(alice, "too many subscriptions", 1008)


async def test_connect_timeout_boundary(make_server: ServerFactory) -> None:
    """P10: CONNECT inside the window is served; silence past it is closed."""
    server = await make_server(connect_timeout_s=0.6)
    early = await server.ws(None)
    late = await server.ws(None)
    started = time.monotonic()
    await early.send_raw(connect_bytes(server.tokens.mint("alice")))
    assert (await early.receive()).command is Command.CONNECTED
    await expect_fatal(late, "no CONNECT in time", 1008)
    assert 0.5 < time.monotonic() - started < 3.0
    # The one that connected in time is still served after the window.
    await early.subscribe("/user/queue/errors", receipt="r")
    assert (await early.receive()).get("receipt-id") == "r"


async def test_frame_timeout_closes_a_frame_left_incomplete(make_server: ServerFactory) -> None:
    """F1: a frame begun and never finished, by a client that negotiated no heart-beats (so
    no silence check applies: WebSocket pings it answers would keep it open), is closed at
    CHAT_FRAME_TIMEOUT_S; nothing is stored. A frame arriving in pieces within the bound is
    served."""
    server = await make_server(frame_timeout_s=0.6)
    room = await server.room("alice", "bob")
    alice = await server.ws("alice", **{"heart-beat": "0,0"})
    data = frame("SEND", [*SEND_JSON, ("receipt", "in-time")], send_body(room, "slow"))
    await alice.send_raw(data[:20])
    await asyncio.sleep(0.3)
    await alice.send_raw(data[20:])
    assert (await alice.receive()).get("receipt-id") == "in-time"
    await alice.send_raw(frame("SEND", SEND_JSON, send_body(room, "never"))[:-1])  # no NUL
    started = time.monotonic()
    await expect_fatal(alice, "frame timeout", 1008)
    assert 0.5 < time.monotonic() - started < 3.0
    assert [m["content"] for m in await server.history("alice", room)] == ["slow"]


@pytest.mark.parametrize("over", [0, 1])
async def test_rest_body_limit(server: Server, over: int) -> None:
    limit = server.settings.max_rest_body_bytes
    base = b'{"name": "team", "memberIds": ["bob"], "pad": ""}'
    body = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (limit - len(base) + over) + b'"')
    assert len(body) == limit + over
    response = await server.client.post(
        "/api/chat-rooms", data=body,
        headers={**server.auth("alice"), "Content-Type": "application/json"},
    )
    # At the limit the body is read and served (an unknown field is ignored).
    assert response.status == (413 if over else 201), await response.text()
    if over:
        assert (await response.json())["error"]["code"] == "request_too_large"


async def test_connections_per_user_cap_is_1013(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_user=3)
    clients = [await server.ws("alice") for _ in range(3)]
    extra = await server.ws(None)
    await extra.send_raw(connect_bytes(server.tokens.mint("alice"), receipt="c"))
    error = await expect_fatal(extra, "too many connections", 1013)
    assert error.get("receipt-id") == "c"
    assert (await server.ws("bob")).ws.closed is False  # another user is unaffected
    await clients[0].ws.close()
    counts = server.services.connections.per_user.counts
    # The slot comes back once the server has seen the close.
    await eventually(lambda: counts.get(UserId("alice")) == 2, 2.0,
                     "alice's slot back after one close", lambda: f"counts: {counts}")
    assert (await server.ws("alice")).ws.closed is False


async def test_connections_per_ip_cap_is_429_before_the_upgrade(
    make_server: ServerFactory,
) -> None:
    """W11: the cap answers before the upgrade; descriptors come back."""
    server = await make_server(max_connections_per_ip=4)
    clients = [await server.ws(None) for _ in range(4)]
    refused = await server.raw()
    assert refused.status == 429
    for stomp in clients:
        await stomp.ws.close()
    per_ip = server.services.connections.per_ip
    await eventually(lambda: not per_ip.counts, 2.0, "every per-IP slot released",
                     lambda: f"counts: {per_ip.counts}")
    assert server.services.connections.per_ip.counts == {}
    assert (await server.raw()).status == 101
