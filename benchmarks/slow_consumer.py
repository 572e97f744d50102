"""How long a fast subscriber waits while a client in the same room never reads, until that client
is closed as a slow consumer (by the outbox limit, or by the send stall).

    python -m benchmarks.slow_consumer [--runs 5]

Per limit it prints the messages sent before the close and the fast client's median and worst
round trip (SEND to its MESSAGE), each as a median and spread over the runs, and the budget that
used to sit in tests/hardening/test_slow_consumer.py (median < 100 ms, worst < 1 s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from benchmarks.microbench import figure, runs_argument, serving
from chat_server.stomp.frames import Command
from tests.stomp_client import connect_bytes, frame, send_body

CONTENT = "x" * 8000
MAX_MESSAGES = 2000
LIMITS: dict[str, dict[str, Any]] = {
    "outbox": {"outbox_bytes": 64 * 1024, "send_stall_s": 60.0},
    "stall": {"outbox_bytes": 256 * 1024 * 1024, "send_stall_s": 1.0},
}
MEDIAN_BUDGET_MS, WORST_BUDGET_MS = 100.0, 1000.0


async def one_run(overrides: dict[str, Any]) -> tuple[int, float, float]:
    """(messages sent when the slow client was closed, fast median ms, fast worst ms)."""
    async with serving(**overrides) as server:
        room = await server.room("alice", "bob", "carol")
        fast = await server.subscribed("bob", room)
        slow = await server.raw(rcvbuf=4096)
        await slow.send_text(connect_bytes(server.tokens.mint("carol")))
        await slow.receive()
        await slow.send_text(frame("SUBSCRIBE", [("id", "0"),
                                                 ("destination", f"/queue/chat-rooms/{room}"),
                                                 ("receipt", "s")]))
        await slow.receive()
        sessions = server.services.connections.sessions
        alice = await server.ws("alice")
        latencies: list[float] = []
        closed_after: int | None = None
        sent = 0
        while sent < MAX_MESSAGES and (closed_after is None or sent < closed_after + 20):
            started = time.monotonic()
            await alice.send(Command.SEND, {"destination": "/app/message",
                                            "content-type": "application/json"},
                             send_body(room, CONTENT))
            await fast.receive_message()
            latencies.append(time.monotonic() - started)
            sent += 1
            if closed_after is None and not any(s.user == "carol" for s in sessions):
                closed_after = sent
        if closed_after is None:
            raise RuntimeError(f"the slow consumer was not closed within {MAX_MESSAGES} messages")
        return closed_after, statistics.median(latencies) * 1000, max(latencies) * 1000


async def main(runs: int) -> None:
    for limit, overrides in LIMITS.items():
        results = [await one_run(overrides) for _ in range(runs)]
        closed, medians, worsts = (list(column) for column in zip(*results, strict=True))
        print(f"[{limit}] {overrides}")
        print("  " + figure("closed after (messages of 8 KB)", closed, "messages", 0))
        print("  " + figure("fast client round trip, median", medians, "ms")
              + f"  budget < {MEDIAN_BUDGET_MS:.0f} ms")
        print("  " + figure("fast client round trip, worst", worsts, "ms")
              + f"  budget < {WORST_BUDGET_MS:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(runs_argument(__doc__ or "", default=5).runs))
