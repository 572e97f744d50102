"""Races between workers, on both databases: several `SqlStore`s (each its own engine and pool,
as separate worker processes have) hit one database at the same moment.

Each test prints its figures (run with `-s` to see them): attempts, rooms created, rows per id.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from chat_server.errors import RoomExists
from chat_server.models import NewMessage, Room, UserId
from chat_server.store.sql import SqlStore
from tests.store.conftest import StoreOpener

WORKERS = 4


async def _workers(store: SqlStore, open_another: StoreOpener) -> list[SqlStore]:
    return [store, *[await open_another() for _ in range(WORKERS - 1)]]


def _report(database_url: str, figures: str) -> None:
    print(f"\n[race {database_url.split(':', 1)[0]}] {figures}")


async def test_workers_appending_to_one_room_get_unique_seqs_without_holes(
    store: SqlStore, open_another: StoreOpener, database_url: str
) -> None:
    workers = await _workers(store, open_another)
    room = await store.create_group_room(UserId("alice"), "busy", [UserId("bob")])
    per_worker = 40
    sender = [UserId("alice"), UserId("bob")]

    async def post(worker: int, n: int) -> int:
        result = await workers[worker].append_message(
            NewMessage(room.id, sender[n % 2], f"w{worker}-{n}")
        )
        assert result.created
        return result.message.seq

    seqs = await asyncio.gather(
        *(post(worker, n) for n in range(per_worker) for worker in range(WORKERS))
    )
    total = WORKERS * per_worker
    stored = await store.messages(room.id, after=0, limit=100)
    stored += await store.messages(room.id, after=100, limit=100)
    _report(
        database_url,
        f"{WORKERS} workers x {per_worker} appends: {len(set(seqs))} distinct seqs, "
        f"range {min(seqs)}..{max(seqs)}, {len(stored)} rows",
    )
    assert sorted(seqs) == list(range(1, total + 1))
    assert [m.seq for m in stored] == list(range(1, total + 1))
    assert len({m.id for m in stored}) == total
    assert await workers[-1].last_seq(room.id) == total


async def test_two_users_creating_one_direct_room_at_once_get_one_room(
    store: SqlStore, open_another: StoreOpener, database_url: str
) -> None:
    workers = await _workers(store, open_another)
    attempts = 60
    outcomes: list[Room | BaseException] = []
    for n in range(attempts):
        # Each user on a different worker, at the same moment (A->B and B->A).
        one, other = UserId(f"a{n}"), UserId(f"b{n}")
        outcomes += await asyncio.gather(
            workers[n % WORKERS].create_direct_room(one, other),
            workers[(n + 1) % WORKERS].create_direct_room(other, one),
            return_exceptions=True,
        )
    rooms = [o for o in outcomes if isinstance(o, Room)]
    refusals = [o for o in outcomes if isinstance(o, RoomExists)]
    others = [o for o in outcomes if not isinstance(o, Room | RoomExists)]
    _report(
        database_url,
        f"{attempts} simultaneous pairs of creates ({2 * attempts} calls): "
        f"{len(rooms)} rooms created, {len(refusals)} RoomExists, {len(others)} other outcomes",
    )
    assert others == []
    assert len(rooms) == attempts
    assert len(refusals) == attempts
    assert {r.room_id for r in refusals} == {room.id for room in rooms}
    for n in range(attempts):
        assert len(await store.rooms_of(UserId(f"a{n}"))) == 1


async def test_a_client_message_id_retried_on_every_worker_at_once_is_one_row(
    store: SqlStore, open_another: StoreOpener, database_url: str
) -> None:
    workers = await _workers(store, open_another)
    room = await store.create_group_room(UserId("alice"), "retries", [UserId("bob")])
    ids, copies = 30, 2  # each id sent twice by each worker, all at once
    results = await asyncio.gather(
        *(
            worker.append_message(
                NewMessage(room.id, UserId("bob"), f"m{n}", client_message_id=f"cid-{n}")
            )
            for n in range(ids)
            for worker in workers
            for _ in range(copies)
        )
    )
    stored = await store.messages(room.id, after=0, limit=100)
    rows_per_id = Counter(m.client_message_id for m in stored)
    created = Counter(r.message.client_message_id for r in results if r.created)
    _report(
        database_url,
        f"{ids} client ids x {WORKERS * copies} concurrent sends ({len(results)} calls): "
        f"{len(stored)} rows, rows per id min {min(rows_per_id.values())} "
        f"max {max(rows_per_id.values())}",
    )
    assert set(rows_per_id.values()) == {1}
    assert len(rows_per_id) == ids
    assert set(created.values()) == {1}
    # Every caller got the one stored row; the retries used no seq.
    by_id = {m.client_message_id: m for m in stored}
    assert all(r.message == by_id[r.message.client_message_id] for r in results)
    assert [m.seq for m in stored] == list(range(1, ids + 1))
