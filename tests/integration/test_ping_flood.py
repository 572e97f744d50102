"""W9/W17 on a real worker: clients that flood it with pings and never read the pongs leave its
memory flat, before CONNECT and after it.

The figures (RSS before and after, median of several runs) are `python -m benchmarks.ping_flood`'s;
this test holds a bound with a wide margin. Bounded, a flooding connection costs about 3 MiB of RSS
(its 512 KiB of outgoing bytes, the reader's queue and what the allocators keep) however long it
floods, and the worker ends it; unbounded, the worker never ends it and its RSS grows for as
long as the flood lasts (50 to 150 MiB in this test's 30 s).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from chat_server.auth import TokenAuthority
from tests.conftest import SECRET
from tests.integration.conftest import Worker, worker_env
from tests.stomp_client import RawWebSocket, connect_bytes, flood_pings

CLIENTS = 2
#: Each client floods this many connections, one after the other, each until the worker ends it.
CONNECTIONS = 2
LIMIT_S = 30.0
MIB = 1024 * 1024
#: Over twice the bounded growth (about 6 MiB for two flooding connections at a time).
GROWTH_BOUND = 16 * MIB


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.parametrize("connect", [False, True], ids=["before CONNECT", "after CONNECT"])
async def test_a_ping_flood_that_never_reads_leaves_the_workers_memory_flat(
    tmp_path: Path, connect: bool
) -> None:
    worker = Worker("serve", tmp_path, worker_env(f"sqlite:///{tmp_path}/chat.db", None,
                                                  ws_ping_s=0))
    token = TokenAuthority(SECRET).mint("flooder")
    try:
        worker.start()
        warm = await RawWebSocket.open("127.0.0.1", worker.port)
        await warm.send_text(connect_bytes(token))
        assert (await warm.receive()).payload.startswith(b"CONNECTED\n")
        warm.close()
        await asyncio.sleep(0.3)
        before = rss(worker.pid)
        peak = before
        until = time.monotonic() + LIMIT_S
        flooders = asyncio.gather(*(
            flood_pings("127.0.0.1", worker.port, token=token if connect else None,
                        connections=CONNECTIONS, until=until)
            for _ in range(CLIENTS)
        ))
        while not flooders.done():
            peak = max(peak, rss(worker.pid))
            await asyncio.wait([flooders], timeout=0.1)
        closes = sum(await flooders)
        peak = max(peak, rss(worker.pid))
    finally:
        worker.stop()
    assert peak - before < GROWTH_BOUND, (
        f"RSS grew {(peak - before) / MIB:.1f} MiB under the ping flood\n{worker.output()}"
    )
    assert closes == CLIENTS * CONNECTIONS, worker.output()  # the worker ended every one
