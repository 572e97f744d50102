"""The batch append: its rules on a stand-in executor, and its executors on real databases
when a statement fails or a room goes away under a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

import pytest
from sqlalchemy import text

from chat_server.errors import NotAMember, StoreUnavailable
from chat_server.models import NewMessage, PostResult, Room, RoomId, SendChain, UserId
from chat_server.store.appends import (
    Append,
    Member,
    NewRow,
    Outcome,
    Position,
    RetryKey,
    StoredRow,
    append_batch,
    append_batch_async,
)
from chat_server.store.engine import build_engine
from chat_server.store.sql import SqlStore
from tests.waiting import eventually

ALICE, BOB, MALLORY = UserId("alice"), UserId("bob"), UserId("mallory")


class Recorder:
    """An executor over a few rooms in memory, recording each call: alice and bob are members
    of rooms 1-3; every room starts at `last_seq` 10."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.last_seq = {RoomId(room): 10 for room in (1, 2, 3)}
        self.next_id = 100

    def lock_rooms(self, room_ids: Sequence[RoomId]) -> None:
        self.calls.append(("lock_rooms", list(room_ids)))

    def members(self, candidates: Sequence[Member]) -> Iterable[Member]:
        self.calls.append(("members", sorted(candidates)))
        return [(r, u) for r, u in candidates if r in self.last_seq and u in (ALICE, BOB)]

    def stored_retries(self, keys: Sequence[RetryKey]) -> Iterable[StoredRow]:
        self.calls.append(("stored_retries", sorted(keys)))
        return [StoredRow(7, 1, 3, ALICE, "stored", "old", "[]", 5)]

    def take_seqs(self, counts: Sequence[tuple[RoomId, int]]) -> Mapping[RoomId, Position]:
        self.calls.append(("take_seqs", list(counts)))
        for room, count in counts:
            self.last_seq[room] += count
        return {room: (self.last_seq[room], 1_000 + room) for room, _ in counts}

    def insert(self, rows: Sequence[NewRow]) -> Mapping[tuple[RoomId, int], int]:
        self.calls.append(("insert", [(row.room_id, row.seq, row.content) for row in rows]))
        ids = {}
        for row in rows:
            self.next_id += 1
            ids[(row.room_id, row.seq)] = self.next_id
        return ids

    def move_markers(self, marks: Sequence[tuple[RoomId, UserId, int]]) -> None:
        self.calls.append(("move_markers", sorted(marks)))


class AsyncRecorder:
    """`Recorder` behind awaited calls."""

    def __init__(self) -> None:
        self.sync = Recorder()

    async def lock_rooms(self, room_ids: Sequence[RoomId]) -> None:
        self.sync.lock_rooms(room_ids)

    async def members(self, candidates: Sequence[Member]) -> Iterable[Member]:
        return self.sync.members(candidates)

    async def stored_retries(self, keys: Sequence[RetryKey]) -> Iterable[StoredRow]:
        return self.sync.stored_retries(keys)

    async def take_seqs(self, counts: Sequence[tuple[RoomId, int]]) -> Mapping[RoomId, Position]:
        return self.sync.take_seqs(counts)

    async def insert(self, rows: Sequence[NewRow]) -> Mapping[tuple[RoomId, int], int]:
        return self.sync.insert(rows)

    async def move_markers(self, marks: Sequence[tuple[RoomId, UserId, int]]) -> None:
        self.sync.move_markers(marks)


def mixed_batch() -> list[Append]:
    chain = SendChain(1)
    return [
        (NewMessage(RoomId(3), ALICE, "a"), None),
        (NewMessage(RoomId(1), BOB, "b", client_message_id="new"), None),
        (NewMessage(RoomId(9), ALICE, "no room"), chain),
        (NewMessage(RoomId(1), ALICE, "behind a refusal"), chain),
        (NewMessage(RoomId(1), ALICE, "retry", client_message_id="old"), None),
        (NewMessage(RoomId(1), BOB, "b again", client_message_id="new"), None),
        (NewMessage(RoomId(3), ALICE, "c"), None),
        (NewMessage(RoomId(1), MALLORY, "not a member"), None),
    ]


def test_the_rules_come_out_of_one_plan() -> None:
    executor = Recorder()
    outcomes = append_batch(executor, mixed_batch())
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == [
        "PostResult", "PostResult", "NotAMember", "NotStored",
        "PostResult", "PostResult", "PostResult", "NotAMember",
    ]
    results = [o for o in outcomes if isinstance(o, PostResult)]
    a, b, retry, echo, c = results
    assert (a.message.room_id, a.message.seq, a.message.created_at_ms) == (3, 11, 1_003)
    assert (c.message.seq, c.message.id) == (12, a.message.id + 1)
    assert (b.message.seq, b.created) == (11, True)
    assert (echo.message, echo.created) == (b.message, False)  # the first in the batch
    assert (retry.message.id, retry.message.content, retry.created) == (7, "stored", False)
    # Rooms locked and numbered in ascending id; only what is stored moves a marker.
    calls = dict(executor.calls)
    assert calls["lock_rooms"] == [1, 3, 9]
    assert calls["take_seqs"] == [(1, 1), (3, 2)]
    assert calls["move_markers"] == [(1, BOB, 11), (3, ALICE, 12)]
    assert calls["stored_retries"] == [(1, ALICE, "old"), (1, BOB, "new")]


async def test_the_awaited_runner_follows_the_same_plan() -> None:
    executor, reference = AsyncRecorder(), Recorder()
    awaited = await append_batch_async(executor, mixed_batch())
    plain = append_batch(reference, mixed_batch())
    assert [_comparable(o) for o in awaited] == [_comparable(o) for o in plain]
    assert executor.sync.calls == reference.calls


def _comparable(outcome: Outcome) -> object:
    """Refusals are exceptions, equal only to themselves: compare their kind and details."""
    if isinstance(outcome, PostResult):
        return outcome
    return (type(outcome), outcome.details)


def test_a_batch_with_nothing_to_store_writes_nothing() -> None:
    executor = Recorder()
    outcomes = append_batch(executor, [(NewMessage(RoomId(1), MALLORY, "no"), None)])
    assert isinstance(outcomes[0], NotAMember)
    assert [name for name, _ in executor.calls] == ["lock_rooms", "members"]


async def _execute(database_url: str, statement: str) -> None:
    engine = build_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def test_a_failed_statement_answers_every_message_and_leaves_no_hole(
    store: SqlStore, room: Room, database_url: str
) -> None:
    other = await store.create_group_room(BOB, "other", [ALICE])
    # A row where the next seq would go: the insert fails with a unique violation.
    await _execute(
        database_url,
        "INSERT INTO messages (room_id, seq, sender_id, content, headers, created_at_ms)"
        f" VALUES ({room.id}, 1, 'alice', 'squatter', '[]', 0)",
    )
    batch = [
        store.append_message(NewMessage(other.id, BOB, "fine alone")),
        store.append_message(NewMessage(room.id, ALICE, "collides")),
        store.append_message(NewMessage(room.id, BOB, "after it")),
    ]
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    # Rolled back whole: no seq taken, no marker moved, in either room.
    assert await store.last_seq(room.id) == 0 and await store.last_seq(other.id) == 0
    assert (await store.reads(other.id))[BOB] == 0
    await _execute(database_url, f"DELETE FROM messages WHERE room_id = {room.id}")
    # The writer recovers (on PostgreSQL: a fresh connection, its statements prepared again).
    again = await store.append_message(NewMessage(room.id, ALICE, "collides no more"))
    assert (again.message.seq, again.created) == (1, True)


async def test_a_room_deleted_before_its_batch_is_refused_per_message(
    store: SqlStore, room: Room, database_url: str
) -> None:
    doomed = await store.create_group_room(ALICE, "doomed", [BOB])
    await _execute(database_url, f"DELETE FROM rooms WHERE id = {doomed.id}")
    batch = [
        store.append_message(NewMessage(doomed.id, ALICE, "gone")),
        store.append_message(NewMessage(room.id, ALICE, "here")),
        store.append_message(NewMessage(doomed.id, BOB, "gone too")),
    ]
    gone, here, gone_too = await asyncio.gather(*batch, return_exceptions=True)
    assert isinstance(gone, NotAMember) and isinstance(gone_too, NotAMember)
    assert isinstance(here, PostResult) and here.message.seq == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_room_deleted_while_its_batch_waits_for_the_lock_is_refused(
    store: SqlStore, room: Room, database_url: str
) -> None:
    engine = build_engine(database_url, pool_size=2)
    try:
        async with engine.connect() as watcher, engine.connect() as deleter:
            transaction = await deleter.begin()
            await deleter.execute(text(f"DELETE FROM rooms WHERE id = {room.id}"))
            pending = store.append_message(NewMessage(room.id, ALICE, "too late"))

            async def waiting_for_the_room_lock() -> bool:
                waiting = await watcher.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                )
                await watcher.rollback()  # a fresh snapshot each time
                return bool(waiting)

            await eventually(waiting_for_the_room_lock, 10, "the append waits for the room")
            await transaction.commit()
            with pytest.raises(NotAMember):
                await pending
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_appends_prepare_again_on_a_new_connection_after_the_old_one_dies(
    store: SqlStore, room: Room, database_url: str
) -> None:
    first = await store.append_message(NewMessage(room.id, ALICE, "before"))
    engine = build_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            mine = await conn.scalar(text("SELECT pg_backend_pid()"))
            others = (
                "FROM pg_stat_activity WHERE application_name = 'chat_server'"
                f" AND pid <> {mine} AND datname = current_database()"
            )
            killed = await conn.scalar(text(f"SELECT count(pg_terminate_backend(pid)) {others}"))
            assert killed

            async def gone() -> bool:
                left = await conn.scalar(text(f"SELECT count(*) {others}"))
                await conn.rollback()
                return bool(left == 0)

            await eventually(gone, 10, "the killed backends have exited")
    finally:
        await engine.dispose()
    with pytest.raises(StoreUnavailable):
        await store.append_message(NewMessage(room.id, ALICE, "on the dead connection"))
    after = await store.append_message(NewMessage(room.id, ALICE, "after"))
    assert (first.message.seq, after.message.seq) == (1, 2)
    assert [m.content for m in await store.messages(room.id, after=0)] == ["before", "after"]
