"""P23: an inbound flood is slowed to the frame budget (the server stops reading), nothing is
dropped or refused, other connections are unaffected, and memory stays flat."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

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
    started = time.monotonic()
    await flooder.send_raw(flood, binary=True)  # all at once: 1000s of frames/s offered
    # Meanwhile another connection's round trips stay quick.
    latencies = []
    for n in range(10):
        sent = time.monotonic()
        await server.say(carol, quiet_room, f"q{n}")
        await dave.receive_message()
        latencies.append(time.monotonic() - sent)
    receipts = [(await flooder.receive(timeout=30)).get("receipt-id") for _ in range(count)]
    elapsed = time.monotonic() - started
    assert receipts == [str(n) for n in range(count)]  # none dropped, none refused, in order
    floor = (count - burst) / rate  # 3 s: the bucket's pace
    assert elapsed > 0.85 * floor, elapsed
    assert elapsed < 4 * floor + 5, elapsed
    assert statistics.median(latencies) < 0.25 and max(latencies) < 1.5, latencies
    contents = [m["content"] for m in await server.history("bob", room)]
    assert contents == [f"m{n}" for n in range(100)]  # the first page, in order
    assert server.services.metrics.value("chat_messages_stored_total") == count + 10


async def test_memory_stays_flat_while_a_client_floods(make_server: ServerFactory) -> None:
    """2000 frames of 8 KB on one connection: traced memory grows by far less than they weigh."""
    server = await make_server()
    alice = await server.ws("alice")
    pad = "v" * 8000
    batch = b"".join(frame("BEGIN", [("transaction", "t"), ("x-pad", pad)])
                     + frame("ABORT", [("transaction", "t"), ("x-pad", pad)])
                     for _ in range(4))  # 8 frames: one WebSocket message under 64 KiB
    for _ in range(10):
        await alice.send_raw(batch)  # warm up caches and buffers
    await alice.send_raw(frame("BEGIN", [("transaction", "w"), ("receipt", "warm")]))
    assert (await alice.receive()).get("receipt-id") == "warm"
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(250):  # 250 x 8 frames = 2000 frames, 16 MB
            await alice.send_raw(batch)
        await alice.send_raw(frame("ABORT", [("transaction", "w"), ("receipt", "done")]))
        assert (await alice.receive(timeout=30)).get("receipt-id") == "done"
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown, peak_grown = after - before, peak - before
    print(f"flood of 2000 x 8 KB frames: retained {grown / 1024:.0f} KiB, "
          f"peak {peak_grown / 1024:.0f} KiB")
    assert grown < 512 * 1024
    assert peak_grown < 4 * 1024 * 1024  # a few frames in flight, never the 16 MB sent
