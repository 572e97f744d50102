"""BAD_INPUTS C5: WebSocket-level abuse, with a WebSocket client on a bare socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

import pytest

from tests.hardening.conftest import Server, ServerFactory
from tests.stomp_client import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PING_BATCH,
    PONG,
    TEXT,
    connect_bytes,
    frame,
    send_body,
    ws_frame,
)
from tests.waiting import eventually


@pytest.mark.parametrize("origin", ["null", "https://app.example.com.evil.com",
                                    "https://evil.example", "https://APP.example.com",
                                    "https://app.example.com/", "https://app.example.com:443"])
async def test_w1_origins_off_the_exact_list_are_403(
    make_server: ServerFactory, origin: str
) -> None:
    server = await make_server(allowed_origins=("https://app.example.com",))
    raw = await server.raw(headers={"Origin": origin})
    assert raw.status == 403
    assert (await server.raw(headers={"Origin": "https://app.example.com"})).status == 101


async def test_w2_no_origin_is_allowed_for_token_clients(server: Server) -> None:
    raw = await server.raw()
    assert raw.status == 101
    await raw.send_text(connect_bytes(server.tokens.mint("alice")))
    assert (await raw.receive()).payload.startswith(b"CONNECTED\n")


async def test_w4_huge_declared_length_closes_1009_before_buffering(server: Server) -> None:
    raw = await server.raw()
    await raw.send(ws_frame(b"", TEXT, declared_length=2**40))
    await raw.send(b"x" * 1000)  # trickled data that must never be buffered
    data, code = await raw.stomp_until_close()
    assert code == 1009
    assert data.startswith(b"ERROR\n") and b"\nmessage:frame too large\n" in data
    assert (await server.ws("alice")).ws.closed is False  # the worker is fine


@pytest.mark.parametrize("split", [False, True], ids=["one message", "fragmented"])
async def test_w3_frames_before_an_oversized_message_are_answered_before_its_error(
    server: Server, split: bool
) -> None:
    """The refusal of a message over the limit comes after the answers to what came before it
    in the same read, whether it is one frame or fragments adding up past the limit."""
    raw = await server.raw()
    limit = server.settings.max_frame_bytes
    subscribe = frame("SUBSCRIBE", [("id", "1"), ("destination", "/user/queue/errors"),
                                    ("receipt", "before")])
    if split:
        oversized = (ws_frame(b"\n" * (limit // 2), TEXT, fin=False)
                     + ws_frame(b"\n" * (limit // 2 + 1), CONTINUATION))
    else:
        oversized = ws_frame(b"\n" * (limit + 1), TEXT)
    await raw.send(ws_frame(connect_bytes(server.tokens.mint("alice")), TEXT)
                   + ws_frame(subscribe, TEXT) + oversized)
    data, code = await raw.stomp_until_close()
    assert code == 1009
    connected, receipt, error = data.split(b"\0")[:3]
    assert connected.startswith(b"CONNECTED\n")
    assert receipt.startswith(b"RECEIPT\nreceipt-id:before\n")
    assert error.startswith(b"ERROR\n") and b"\nmessage:frame too large\n" in error


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (ws_frame(b"CONNECT\n\n\0", TEXT, rsv=4), 1002),  # W5: RSV1, compression is off
        (ws_frame(b"CONNECT\n\n\0", TEXT, rsv=1), 1002),  # W8: RSV3
        (ws_frame("\xff\xfe".encode("latin-1"), TEXT), 1007),  # W6: invalid UTF-8 text
        (ws_frame(b"x", 0x3), 1002),  # W8: reserved opcode
        (ws_frame(b"x", PING, fin=False), 1002),  # W8: fragmented control frame
        (ws_frame(b"x" * 126, PING), 1002),  # W8: control payload over 125 bytes
        (ws_frame(b"x", CONTINUATION), 1002),  # W8: continuation without a start
        (ws_frame(b"\x03\xe7", CLOSE), 1002),  # W8: invalid close code 999
    ],
)
async def test_w5_w6_w8_bad_websocket_frames(server: Server, data: bytes, code: int) -> None:
    raw = await server.raw()
    await raw.send(data)
    assert await raw.close_code() == code
    assert (await server.ws("alice")).ws.closed is False


async def test_w8_an_unmasked_frame_is_refused_by_the_websocket_layer(server: Server) -> None:
    """RFC 6455 §5.1: a server MUST close on an unmasked client frame (1002), whatever is in it:
    a valid CONNECT gets no CONNECTED, and no STOMP frame answers the close."""
    raw = await server.raw()
    await raw.send(ws_frame(connect_bytes(server.tokens.mint("alice")), TEXT, masked=False))
    data, code = await raw.stomp_until_close()
    assert (data, code) == (b"", 1002)


async def test_w8_an_unmasked_ping_gets_no_pong(server: Server) -> None:
    raw = await server.raw()
    await raw.send(ws_frame(b"are you there", PING, masked=False))
    assert await raw.close_code() == 1002


async def test_w8_frames_before_an_unmasked_one_are_answered_and_it_is_never_read(
    server: Server,
) -> None:
    room = await server.room("alice", "bob")
    raw = await server.raw()
    send = frame("SEND", [("destination", "/app/message"), ("content-type", "application/json"),
                          ("receipt", "unmasked")], send_body(room, "never stored"))
    await raw.send(ws_frame(connect_bytes(server.tokens.mint("alice")), TEXT)
                   + ws_frame(frame("SUBSCRIBE", [("id", "1"), ("receipt", "masked"),
                                                  ("destination", "/user/queue/errors")]), TEXT)
                   + ws_frame(send, TEXT, masked=False))
    data, code = await raw.stomp_until_close()
    assert code == 1002
    connected, receipt, rest = data.split(b"\0", 2)
    assert connected.startswith(b"CONNECTED\n")
    assert receipt.startswith(b"RECEIPT\nreceipt-id:masked\n")
    assert rest == b""  # no RECEIPT for the SEND, no ERROR: the WebSocket layer closed
    assert await server.history("alice", room) == []


async def test_w7_binary_and_fragmented_messages_carry_stomp(server: Server) -> None:
    raw = await server.raw()
    data = connect_bytes(server.tokens.mint("alice"))
    await raw.send(ws_frame(data[:10], BINARY, fin=False) + ws_frame(data[10:], CONTINUATION))
    assert (await raw.receive()).payload.startswith(b"CONNECTED\n")


async def test_w9_ping_flood_is_answered_and_the_connection_still_serves(
    server: Server
) -> None:
    """Answered differently: pings are not rate limited; each is answered (bounded by the
    outbound limit) and the flood neither crashes nor starves the connection."""
    raw = await server.raw()
    await raw.send_text(connect_bytes(server.tokens.mint("alice")))
    assert (await raw.receive()).payload.startswith(b"CONNECTED\n")
    await raw.send(b"".join(ws_frame(b"p", PING) for _ in range(2000)))
    await raw.send_text(frame("SUBSCRIBE", [("id", "1"), ("destination", "/user/queue/errors"),
                                            ("receipt", "r")]))
    pongs = 0
    while True:
        received = await raw.receive()
        if received.opcode == PONG:
            pongs += 1
            continue
        assert received.payload.startswith(b"RECEIPT\n")
        break
    assert pongs == 2000


@pytest.mark.parametrize("connect", [False, True], ids=["before CONNECT", "after CONNECT"])
async def test_w17_pongs_a_client_never_reads_count_against_the_outgoing_bound(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, connect: bool
) -> None:
    """The pongs go into the same bound as frames (CHAT_OUTBOX_BYTES); past it the flooding
    connection is closed as a slow consumer, whether or not it sent CONNECT."""
    caplog.set_level(logging.INFO, logger="chat_server")
    server = await make_server(outbox_bytes=64 * 1024, ws_ping_s=0)
    sessions = server.services.connections.sessions
    raw = await server.raw(rcvbuf=4096)
    if connect:
        await raw.send_text(connect_bytes(server.tokens.mint("alice")))
        assert (await raw.receive()).payload.startswith(b"CONNECTED\n")
    # Up to 100 000 pings (12.7 MB of pongs, far past what the socket buffers hold), never
    # reading; the connection stays open on this side until the server ends it.
    with contextlib.suppress(ConnectionError):
        for _ in range(100):
            if not sessions:
                break
            raw.writer.write(PING_BATCH)
            await asyncio.wait_for(raw.writer.drain(), 5)
    await eventually(lambda: not sessions, 10.0, "the flooding connection is closed")
    assert any(record.getMessage() == "closing: slow consumer" for record in caplog.records)
    assert (await server.ws("bob")).ws.closed is False  # the worker is fine


@pytest.mark.parametrize("header", [b"X-Big: " + b"a" * 65536,
                                    b"\r\n".join(b"X-H%d: v" % n for n in range(2000))])
async def test_w12_huge_handshakes_are_refused(server: Server, header: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 + header + b"\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.split()[1] in (b"400", b"431")
    assert (await server.ws("alice")).ws.closed is False


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(None, None), ("mqtt", None), (", ".join(f"p{n}" for n in range(1000)), None),
     ("v10.stomp, v12.stomp, v11.stomp", "v12.stomp")],
)
async def test_w13_subprotocol_negotiation_is_bounded(
    server: Server, offered: str | None, chosen: str | None
) -> None:
    raw = await server.raw(headers={"Sec-WebSocket-Protocol": offered})
    assert raw.status == 101
    assert raw.headers.get("sec-websocket-protocol") == chosen
    await raw.send_text(connect_bytes(server.tokens.mint("alice")))
    assert b"version:1.2" in (await raw.receive()).payload  # proceeds as STOMP 1.2


async def test_w14_reset_mid_frame_returns_the_registry_to_baseline(server: Server) -> None:
    room = await server.room("alice", "bob")
    raw = await server.raw()
    await raw.send_text(connect_bytes(server.tokens.mint("alice")))
    assert (await raw.receive()).payload.startswith(b"CONNECTED\n")
    await raw.send_text(frame("SUBSCRIBE", [("id", "1"), ("destination",
                                                          f"/queue/chat-rooms/{room}"),
                                            ("receipt", "r")]))
    assert (await raw.receive()).payload.startswith(b"RECEIPT\n")
    await raw.send(ws_frame(b"SEND\ndestination:/app/message\n\n{\"chatRoomId\"", BINARY,
                            fin=False))
    assert server.services.fanout.rooms_watched == 1
    sock = raw.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.writer.transport.abort()  # RST
    services = server.services
    await eventually(
        lambda: not services.connections.sessions and not services.fanout.rooms_watched, 2.0,
        "the reset session and its room watch are gone",
        lambda: f"sessions {services.connections.sessions}, rooms {services.fanout.rooms_watched}",
    )
    assert not server.services.connections.sessions
    assert server.services.fanout.rooms_watched == 0
    assert server.services.connections.per_ip.counts == {}
    assert await server.history("alice", room) == []
    assert (await server.ws("alice")).version.value == "1.2"
