"""CPU per stored message on the append path alone: batches of SENDs to many rooms through
`SqlStore.append_message` (group commit, the writer, the database), no sockets.

    python -m benchmarks.append_cost [--batch 20] [--batches 400] [--repeat 5]
        [--database-url postgresql://...]   # an empty database; default a temp SQLite file

Prints process CPU microseconds per message (every thread of this process: the event loop and
the writer), median and min-max over the repetitions, and the wall time for reference. Works
against any checkout that has `open_store` and `append_message`, so before and after compare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from chat_server.models import NewMessage, RoomId, UserId
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, open_store

ROOMS = 1_000


async def _seed(store: SqlStore) -> list[tuple[RoomId, UserId]]:
    """1 000 group rooms of two members each, as scenario (b) has them."""
    senders = []
    for n in range(ROOMS):
        owner = UserId(f"user{n}")
        room = await store.create_group_room(owner, f"room {n}", [UserId(f"peer{n}")])
        senders.append((room.id, owner))
    return senders


async def _run(store: SqlStore, senders: list[tuple[RoomId, UserId]], batch: int,
               batches: int, offset: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for b in range(batches):
        sends = []
        for n in range(batch):
            room, sender = senders[(offset + b * batch + n) % len(senders)]
            sends.append(store.append_message(NewMessage(room, sender, f"hello {b}/{n}")))
        await asyncio.gather(*sends)
    messages = batch * batches
    return ((time.process_time() - cpu) / messages * 1e6,
            (time.perf_counter() - wall) / messages * 1e6)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=20, help="SENDs committed together")
    parser.add_argument("--batches", type=int, default=400, help="batches per repetition")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", help="an empty database (default: a temp SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chat-append-") as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'chat.db'}"
        await migrate(url)
        store = await open_store(url)
        try:
            senders = await _seed(store)
            await _run(store, senders, args.batch, 20, 0)  # warm up: connections, statements
            figures = [await _run(store, senders, args.batch, args.batches, r * 7919)
                       for r in range(args.repeat)]
        finally:
            await store.close()
    cpu = sorted(f[0] for f in figures)
    wall = sorted(f[1] for f in figures)
    print(f"append, batches of {args.batch}: CPU {statistics.median(cpu):.1f} us/message "
          f"({cpu[0]:.1f}-{cpu[-1]:.1f}), wall {statistics.median(wall):.1f} us/message "
          f"({wall[0]:.1f}-{wall[-1]:.1f}), {args.repeat} runs of {args.batches} batches")


if __name__ == "__main__":
    asyncio.run(main())
