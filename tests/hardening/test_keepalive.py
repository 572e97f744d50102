"""WebSocket pings (CHAT_WS_PING_S) from the worker's one keep-alive sweep: an idle client that
answers stays, one that answers nothing is cut, and a client's own ping is answered."""

from __future__ import annotations

import asyncio

from tests.hardening.conftest import ServerFactory
from tests.stomp_client import PING, PONG, TEXT, RawWebSocket, connect_bytes, frame, ws_frame

INTERVAL_S = 0.1


async def connected(make_server: ServerFactory) -> tuple[RawWebSocket, int]:
    server = await make_server(ws_ping_s=INTERVAL_S)
    raw = await server.raw()
    await raw.send_text(connect_bytes(server.tokens.mint("alice")))
    received = await raw.receive()
    while received.opcode == PING:  # a sweep may come before the CONNECT is answered
        received = await raw.receive()
    assert received.payload.startswith(b"CONNECTED\n")
    return raw, len(server.services.connections.sessions)


async def test_an_idle_client_that_answers_pings_stays_connected(
    make_server: ServerFactory,
) -> None:
    raw, sessions = await connected(make_server)
    assert sessions == 1
    pings = 0
    while pings < 5:  # five sweeps: each would have cut a silent peer
        received = await raw.receive()
        assert received.opcode == PING
        pings += 1
        await raw.send(ws_frame(received.payload, PONG))
    await raw.send_text(frame("DISCONNECT", [("receipt", "bye")]))
    received = await raw.receive()
    while received.opcode == PING:
        received = await raw.receive()
    assert received.opcode == TEXT and received.payload.startswith(b"RECEIPT\nreceipt-id:bye")


async def test_a_client_that_answers_nothing_is_cut(make_server: ServerFactory) -> None:
    raw, _ = await connected(make_server)
    opcodes = []
    try:
        while True:  # read, but never answer
            opcodes.append((await raw.receive(timeout=5 * INTERVAL_S + 2)).opcode)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        pass
    assert opcodes == [PING]  # pinged once, then cut at the next sweep


async def test_a_clients_ping_gets_a_pong_with_its_payload(make_server: ServerFactory) -> None:
    server = await make_server(ws_ping_s=0)  # no sweeps: only the client pings here
    raw = await server.raw()
    await raw.send(ws_frame(b"are you there", PING))
    received = await raw.receive()
    assert (received.opcode, received.payload) == (PONG, b"are you there")

