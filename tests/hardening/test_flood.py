"""P23: an inbound flood under a frame budget is processed in full and in order (nothing dropped
or refused), other connections keep working meanwhile, and a flood of big frames is processed
without breaking the connection.

The pace, the other connection's round trips and the memory held are measured by
`python -m benchmarks.flood`; the token bucket itself is tested in test_ratelimit.py."""

from __future__ import annotations

from tests.hardening.conftest import ServerFactory
from tests.stomp_client import frame, send_body

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]


async def test_flood_of_sends_is_throttled_not_dropped_and_others_are_unaffected(
    make_server: ServerFactory,
) -> None:
    rate, burst, count = 60.0, 20, 200
    server = await make_server(frames_per_s=rate, frames_burst=burst)
    room = await server.room("alice", "bob")
    quiet_room = await server.room("carol", "dave")
    dave = await server.subscribed("dave", quiet_room)
    carol = await server.ws("carol")
    flooder = await server.ws("alice")
    flood = b"".join(frame("SEND", [*SEND_JSON, ("receipt", str(n))], send_body(room, f"m{n}"))
                     for n in range(count))
    await flooder.send_raw(flood, binary=True)  # all at once: 1000s of frames/s offered
    # Meanwhile another connection's messages go through, each delivered.
    for n in range(10):
        await server.say(carol, quiet_room, f"q{n}")
        _, body = await dave.receive_message()
        assert body["content"] == f"q{n}"
    receipts = [(await flooder.receive(timeout=30)).get("receipt-id") for _ in range(count)]
    assert receipts == [str(n) for n in range(count)]  # none dropped, none refused, in order
    contents = [m["content"] for m in await server.history("bob", room)]
    assert contents == [f"m{n}" for n in range(100)]  # the first page, in order
    assert server.services.metrics.value("chat_messages_stored_total") == count + 10


async def test_a_flood_of_big_frames_is_processed_and_the_connection_stays_usable(
    make_server: ServerFactory,
) -> None:
    """2000 frames of 8 KB on one connection: every one is handled, and the connection still
    answers afterwards (transactions begun and aborted in pairs leave nothing open)."""
    server = await make_server()
    alice = await server.ws("alice")
    pad = "v" * 8000
    batch = b"".join(frame("BEGIN", [("transaction", "t"), ("x-pad", pad)])
                     + frame("ABORT", [("transaction", "t"), ("x-pad", pad)])
                     for _ in range(4))  # 8 frames: one WebSocket message under 64 KiB
    await alice.send_raw(frame("BEGIN", [("transaction", "w"), ("receipt", "warm")]))
    assert (await alice.receive()).get("receipt-id") == "warm"
    for _ in range(250):  # 250 x 8 frames = 2000 frames, 16 MB
        await alice.send_raw(batch)
    await alice.send_raw(frame("ABORT", [("transaction", "w"), ("receipt", "done")]))
    assert (await alice.receive(timeout=30)).get("receipt-id") == "done"
    assert alice.ws.closed is False
