"""A worker's memory while clients flood it with WebSocket pings and never read the pongs
(BAD_INPUTS W9/W17), before CONNECT and after it.

    python -m benchmarks.ping_flood [--runs 5] [--seconds 8] [--clients 4]

Each run starts one `python -m chat_server serve` worker on a free loopback port (a fresh SQLite
database), reads its RSS from /proc, then lets `--clients` connections send pings with a 125-byte
payload as fast as the worker takes them, for `--seconds` (less than the 10 s CONNECT window, so
the before-CONNECT phase is not ended by the CONNECT timeout). A client never reads, and its
receive buffer is 4 KiB, so every pong the worker makes stays in the worker. A connection the
worker closes is opened again at once. Printed per phase: the RSS before, its peak during the
flood and the growth, each as a median and spread over the runs, and how many times the worker
closed a flooding connection.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.microbench import figure
from benchmarks.servers import ChatTarget, Layout, rss_bytes
from chat_server.auth import TokenAuthority
from tests.stomp_client import RawWebSocket, connect_bytes, flood_pings

MIB = 1024 * 1024
SAMPLE_S = 0.2


@dataclass
class Phase:
    before: float
    peak: float
    closed_by_server: int

    @property
    def growth(self) -> float:
        return self.peak - self.before


async def _phase(port: int, pid: int, token: str | None, seconds: float, clients: int) -> Phase:
    before = rss_bytes([pid]) / MIB
    peak = before
    until = time.monotonic() + seconds
    flooders = [
        asyncio.create_task(flood_pings("127.0.0.1", port, token=token, connections=10**9,
                                        until=until))
        for _ in range(clients)
    ]
    while time.monotonic() < until:
        await asyncio.sleep(SAMPLE_S)
        peak = max(peak, rss_bytes([pid]) / MIB)
    closes = await asyncio.gather(*flooders)
    peak = max(peak, rss_bytes([pid]) / MIB)
    return Phase(before, peak, sum(closes))


async def _settle(port: int, token: str) -> None:
    """One ordinary connection first, so the RSS before a phase includes a warmed-up worker."""
    raw = await RawWebSocket.open("127.0.0.1", port)
    await raw.send_text(connect_bytes(token))
    await raw.receive()
    raw.writer.transport.abort()
    await asyncio.sleep(0.5)


def one_run(root: Path, connect: bool, seconds: float, clients: int) -> Phase:
    """One phase on a fresh worker, so that no phase inherits another's freed memory."""
    secret = secrets.token_urlsafe(32)
    target = ChatTarget("ping-flood", root, secret=secret)
    servers = target.start(Layout(rooms=1, subs_per_room=1, publishers=0))
    try:
        [pid] = servers.worker_pids
        port = int(servers.urls[0].rsplit(":", 1)[1].split("/")[0])
        token = TokenAuthority(secret).mint("flooder")

        async def phase() -> Phase:
            await _settle(port, token)
            return await _phase(port, pid, token if connect else None, seconds, clients)

        return asyncio.run(phase())
    finally:
        target.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    phases: dict[str, list[Phase]] = {"before CONNECT": [], "after CONNECT": []}
    with tempfile.TemporaryDirectory(prefix="chat-ping-flood-") as tmp:
        for run in range(args.runs):
            for name, results in phases.items():
                root = Path(tmp) / f"{run}-{name.split()[0]}"
                root.mkdir()
                results.append(one_run(root, name == "after CONNECT", args.seconds, args.clients))
    print(f"ping flood: {args.clients} clients, {args.seconds:.0f} s per phase, never reading; "
          "a fresh worker per phase and run")
    for name, results in phases.items():
        print(f"[{name}]")
        print("  " + figure("RSS before", [p.before for p in results], "MiB"))
        print("  " + figure("RSS peak during the flood", [p.peak for p in results], "MiB"))
        print("  " + figure("RSS growth", [p.growth for p in results], "MiB"))
        print("  " + figure("flooding connections closed by the worker",
                            [p.closed_by_server for p in results], "closes", 0))


if __name__ == "__main__":
    main()
