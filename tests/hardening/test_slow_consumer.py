"""W10 / FAULTS "slow consumer": a client that stops reading is cut off at the outbox limit or
the send stall, while a fast client in the same room keeps receiving everything, in order.

How long the fast client waits meanwhile is measured by `python -m benchmarks.slow_consumer`."""

from __future__ import annotations

import asyncio
import logging

import pytest

from chat_server.models import UserId
from chat_server.stomp.frames import Command
from tests.hardening.conftest import ServerFactory
from tests.stomp_client import connect_bytes, frame, send_body

CONTENT = "x" * 8000
#: Longest the slow consumer may stay connected while the room is busy (limits are 1 s here).
GIVE_UP_S = 30.0


@pytest.mark.parametrize(
    ("limit", "overrides"),
    [("outbox", {"outbox_bytes": 64 * 1024, "send_stall_s": 60.0}),
     ("stall", {"outbox_bytes": 256 * 1024 * 1024, "send_stall_s": 1.0})],
)
async def test_a_client_that_never_reads_is_closed_and_others_keep_receiving_in_order(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture,
    limit: str, overrides: dict[str, float],
) -> None:
    caplog.set_level(logging.INFO, logger="chat_server")
    server = await make_server(**overrides)
    room = await server.room("alice", "bob", "carol")
    fast = await server.subscribed("bob", room)
    slow = await server.raw(rcvbuf=4096)
    await slow.send_text(connect_bytes(server.tokens.mint("carol")))
    assert (await slow.receive()).payload.startswith(b"CONNECTED\n")
    await slow.send_text(frame("SUBSCRIBE", [("id", "0"), ("destination",
                                                           f"/queue/chat-rooms/{room}"),
                                             ("receipt", "s")]))
    assert (await slow.receive()).payload.startswith(b"RECEIPT\n")
    # From here on carol reads nothing: her socket's buffers, then her outbox, fill up.
    sessions = server.services.connections.sessions
    assert any(s.user == "carol" for s in sessions)
    alice = await server.ws("alice")
    sent = 0
    closed_after: int | None = None
    # Bounded by time, not by a message count: how many messages fit in the stall depends on
    # how fast the server stores them (2 000 once took longer than the 1 s stall; no longer).
    give_up_at = asyncio.get_running_loop().time() + GIVE_UP_S
    while closed_after is None or sent < closed_after + 20:
        if closed_after is None and asyncio.get_running_loop().time() > give_up_at:
            break
        await alice.send(Command.SEND, {"destination": "/app/message",
                                        "content-type": "application/json"},
                         send_body(room, CONTENT))
        _, body = await fast.receive_message()
        sent += 1
        assert body["seq"] == sent  # in order, none missing, for the fast client
        if closed_after is None and not any(s.user == "carol" for s in sessions):
            closed_after = sent
    assert closed_after is not None, "the slow consumer was never closed"
    assert any("slow consumer" in record.getMessage() for record in caplog.records)
    # Carol, reading again, finds the stream ended: an ERROR if it reached her, then the end.
    data, code = await slow.stomp_until_close(timeout=10)
    assert code in (1008, None)
    if b"ERROR\n" in data:
        assert b"message:slow consumer" in data
    assert server.services.connections.per_user.counts.get(UserId("carol")) is None
