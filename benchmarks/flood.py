"""An inbound flood, measured: how closely one connection's flood of SENDs is paced to the frame
budget, how long another connection's round trips take meanwhile, and how much memory the server
holds while a client floods it with big frames.

    python -m benchmarks.flood [--runs 5]

Each figure is a median and spread over the runs, next to the budget that used to sit in
tests/hardening/test_flood.py.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc

from benchmarks.microbench import figure, runs_argument, serving
from tests.stomp_client import frame, send_body

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]
RATE, BURST, COUNT = 60.0, 20, 200
FLOOR_S = (COUNT - BURST) / RATE  # the bucket's pace: 3 s


async def paced_flood() -> tuple[float, float, float]:
    """(seconds until the flood's last RECEIPT, quiet median ms, quiet worst ms)."""
    async with serving(frames_per_s=RATE, frames_burst=BURST) as server:
        room = await server.room("alice", "bob")
        quiet_room = await server.room("carol", "dave")
        dave = await server.subscribed("dave", quiet_room)
        carol = await server.ws("carol")
        flooder = await server.ws("alice")
        flood = b"".join(
            frame("SEND", [*SEND_JSON, ("receipt", str(n))], send_body(room, f"m{n}"))
            for n in range(COUNT)
        )
        started = time.monotonic()
        await flooder.send_raw(flood, binary=True)
        latencies = []
        for n in range(10):
            sent = time.monotonic()
            await server.say(carol, quiet_room, f"q{n}")
            await dave.receive_message()
            latencies.append(time.monotonic() - sent)
        for _ in range(COUNT):
            await flooder.receive(timeout=30)
        elapsed = time.monotonic() - started
        return elapsed, statistics.median(latencies) * 1000, max(latencies) * 1000


async def memory_during_flood() -> tuple[float, float]:
    """(KiB retained, KiB peak) of traced memory over 2000 frames of 8 KB on one connection."""
    async with serving() as server:
        alice = await server.ws("alice")
        pad = "v" * 8000
        batch = b"".join(frame("BEGIN", [("transaction", "t"), ("x-pad", pad)])
                         + frame("ABORT", [("transaction", "t"), ("x-pad", pad)])
                         for _ in range(4))  # 8 frames: one WebSocket message under 64 KiB
        for _ in range(10):
            await alice.send_raw(batch)  # warm up caches and buffers
        await alice.send_raw(frame("BEGIN", [("transaction", "w"), ("receipt", "warm")]))
        await alice.receive()
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for _ in range(250):
                await alice.send_raw(batch)
            await alice.send_raw(frame("ABORT", [("transaction", "w"), ("receipt", "done")]))
            await alice.receive(timeout=30)
            gc.collect()
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return (after - before) / 1024, (peak - before) / 1024


async def main(runs: int) -> None:
    paced = [await paced_flood() for _ in range(runs)]
    elapsed, medians, worsts = (list(column) for column in zip(*paced, strict=True))
    print(f"[paced flood] {COUNT} SENDs at once, budget {RATE:.0f}/s, burst {BURST}")
    print("  " + figure("until the last RECEIPT", elapsed, "s", 2)
          + f"  budget {0.85 * FLOOR_S:.2f} .. {4 * FLOOR_S + 5:.2f} s (floor {FLOOR_S:.1f} s)")
    print("  " + figure("other connection round trip, median", medians, "ms")
          + "  budget < 250 ms")
    print("  " + figure("other connection round trip, worst", worsts, "ms")
          + "  budget < 1500 ms")
    memory = [await memory_during_flood() for _ in range(runs)]
    retained, peaks = (list(column) for column in zip(*memory, strict=True))
    print("[memory] 2000 frames of 8 KB (16 MB) on one connection, traced by tracemalloc")
    print("  " + figure("retained", retained, "KiB", 0) + "  budget < 512 KiB")
    print("  " + figure("peak", peaks, "KiB", 0) + "  budget < 4096 KiB")


if __name__ == "__main__":
    asyncio.run(main(runs_argument(__doc__ or "", default=5).runs))
