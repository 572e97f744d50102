"""How long the room list takes with hundreds of rooms, unread counts included.

    python -m benchmarks.room_list [--rooms 100,300,1000] [--messages 30] [--runs 21]
                                   [--database-url URL]

For each size, a fresh database (a temp SQLite file unless `--database-url` names an empty,
migratable PostgreSQL one) gets that many group rooms of alice, bob and carol, each with
`--messages` messages (alice writes in the first half only); alice has read a third of her rooms
to the end, a third half way, and the last third only up to her own last message. Then
`GET /api/chat-rooms` as alice, through the whole app (aiohttp in process, loopback), and the
store's `rooms_of` alone: the median (and min, p90) over `--runs` calls after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.models import NewMessage, RoomId, UserId
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, open_store
from chat_server.web.app import create_app

SECRET = "room-list-benchmark-secret-long-enough-for-hs256"
ALICE, BOB, CAROL = UserId("alice"), UserId("bob"), UserId("carol")


async def seed(store: SqlStore, rooms: int, messages: int) -> int:
    """The rooms and their messages; alice's markers at the end, half way or 0. Returns how
    many messages alice has unread in all."""
    ids: list[RoomId] = []
    for n in range(rooms):
        ids.append((await store.create_group_room(ALICE, f"room {n}", [BOB, CAROL])).id)

    def sender(k: int) -> UserId:
        """Alice takes part in the first half of each conversation (her marker follows)."""
        if k % 3 == 0 and k < messages // 2:
            return ALICE
        return BOB if k % 2 else CAROL

    answers = [
        store.append_message(NewMessage(room, sender(k), f"message {k} in {room}"))
        for k in range(messages) for room in ids
    ]
    for answer in answers:
        await answer
    await asyncio.gather(*(
        store.mark_read(room, ALICE, messages if n % 3 == 0 else messages // 2)
        for n, room in enumerate(ids) if n % 3 != 2
    ))
    listed = await store.rooms_of(ALICE)
    return sum(room.unread_count for room in listed)


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    await call()  # warm-up: connections opened, statements compiled and cached
    took: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def summary(took: list[float]) -> str:
    ordered = sorted(took)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(took):8.2f} {ordered[0]:8.2f} {p90:8.2f}"


async def measure(database_url: str, rooms: int, messages: int, runs: int) -> str:
    await migrate(database_url)
    store = await open_store(database_url)
    try:
        unread = await seed(store, rooms, messages)
        store_ms = await timed(lambda: store.rooms_of(ALICE), runs)
    finally:
        await store.close()
    settings = Settings(database_url=database_url, jwt_secret=SECRET, rest_requests_per_s=0)
    headers = {"Authorization": f"Bearer {TokenAuthority(SECRET).mint(ALICE)}"}
    size = 0
    async with TestClient(TestServer(create_app(settings))) as client:

        async def get() -> None:
            nonlocal size
            response = await client.get("/api/chat-rooms", headers=headers)
            body = await response.read()
            assert response.status == 200, body[:200]
            size = len(body)

        http_ms = await timed(get, runs)
    return (f"{rooms:6d} {rooms * messages:9d} {unread:7d} {size / 1024:8.0f}   "
            f"{summary(http_ms)}   {summary(store_ms)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.room_list", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", default="100,300,1000", help="comma list of room counts")
    parser.add_argument("--messages", type=int, default=30, help="messages per room")
    parser.add_argument("--runs", type=int, default=21, help="timed calls per figure")
    parser.add_argument("--database-url",
                        help="an empty, migratable database (default: a temp SQLite file per size)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.rooms.split(",") if n.strip()]
    if args.database_url and len(sizes) > 1:
        parser.error("--database-url takes one size (the database must start empty)")
    print(f"GET /api/chat-rooms as alice; {args.runs} calls after a warm-up; milliseconds")
    print(f"{'rooms':>6} {'messages':>9} {'unread':>7} {'KiB':>8}   "
          f"{'HTTP med':>8} {'min':>8} {'p90':>8}   {'store med':>8} {'min':>8} {'p90':>8}")
    for rooms in sizes:
        with tempfile.TemporaryDirectory(prefix="room-list-") as tmp:
            url = args.database_url or f"sqlite:///{Path(tmp) / 'chat.db'}"
            print(asyncio.run(measure(url, rooms, args.messages, args.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
