"""The `MessageStore` contract, checked against `SqlStore` on every configured backend."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import pytest
from sqlalchemy import event

from chat_server.errors import NotAMember, RoomExists, RoomNotFound, StoreUnavailable
from chat_server.models import NewMessage, Room, RoomId, RoomKind, UserId
from chat_server.store.base import MessageStore
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, open_store
from chat_server.store.urls import sqlite_path

#: The `open_another` fixture: opens one more store on the test's database.
StoreOpener = Callable[..., Awaitable[SqlStore]]

ALICE, BOB, CAROL, DAVE = UserId("alice"), UserId("bob"), UserId("carol"), UserId("dave")


def text(room: Room, sender: UserId, content: str, client_id: str | None = None) -> NewMessage:
    return NewMessage(
        room_id=room.id, sender_id=sender, content=content, client_message_id=client_id
    )


async def fill(store: SqlStore, room: Room, count: int) -> None:
    for number in range(1, count + 1):
        await store.append_message(text(room, ALICE, f"message {number}"))


def test_sql_store_satisfies_the_protocol(store: SqlStore) -> None:
    typed: MessageStore = store  # mypy checks the structural match
    assert typed is store


# --- rooms -----------------------------------------------------------------------------------


async def test_direct_room_has_both_users_as_members(store: SqlStore) -> None:
    room = await store.create_direct_room(ALICE, BOB)
    assert room.kind is RoomKind.DIRECT
    assert room.name is None
    assert room.created_by == ALICE
    assert room.member_ids == (ALICE, BOB)
    assert room.created_at_ms == room.last_activity_ms
    assert await store.get_room(room.id) == room


@pytest.mark.parametrize(("first", "second"), [(ALICE, BOB), (BOB, ALICE)])
async def test_second_direct_room_for_a_pair_raises_room_exists_with_its_id(
    store: SqlStore, first: UserId, second: UserId
) -> None:
    room = await store.create_direct_room(ALICE, BOB)
    with pytest.raises(RoomExists) as refused:
        await store.create_direct_room(first, second)
    assert refused.value.room_id == room.id
    assert refused.value.details == {"roomId": room.id}
    assert [r.id for r in await store.rooms_of(ALICE)] == [room.id]


async def test_direct_room_with_oneself_is_refused(store: SqlStore) -> None:
    with pytest.raises(ValueError):
        await store.create_direct_room(ALICE, ALICE)
    assert await store.rooms_of(ALICE) == []


async def test_direct_rooms_of_different_pairs_coexist(store: SqlStore) -> None:
    one = await store.create_direct_room(ALICE, BOB)
    two = await store.create_direct_room(ALICE, CAROL)
    assert one.id != two.id


async def test_group_room_includes_creator_and_deduplicates_members(store: SqlStore) -> None:
    room = await store.create_group_room(ALICE, "team", [CAROL, BOB, ALICE, CAROL])
    assert room.kind is RoomKind.GROUP
    assert room.name == "team"
    assert room.member_ids == (ALICE, BOB, CAROL)
    assert await store.get_room(room.id) == room


async def test_group_rooms_may_share_members_and_names(store: SqlStore) -> None:
    one = await store.create_group_room(ALICE, "team", [BOB])
    two = await store.create_group_room(ALICE, "team", [BOB])
    assert one.id != two.id


async def test_unknown_room_is_none(store: SqlStore) -> None:
    assert await store.get_room(RoomId(999)) is None


async def test_rooms_of_lists_most_recent_activity_first(store: SqlStore) -> None:
    first = await store.create_group_room(ALICE, "first", [BOB])
    second = await store.create_direct_room(ALICE, BOB)
    third = await store.create_group_room(ALICE, "third", [])
    # Rooms created within one millisecond tie on activity: the newer room comes first.
    assert [r.id for r in await store.rooms_of(ALICE)] == [third.id, second.id, first.id]

    await asyncio.sleep(0.005)
    await store.append_message(text(first, ALICE, "wake up"))
    listed = await store.rooms_of(ALICE)
    assert [r.id for r in listed] == [first.id, third.id, second.id]
    assert listed[0].last_activity_ms > first.last_activity_ms
    assert [r.id for r in await store.rooms_of(BOB)] == [first.id, second.id]


async def test_rooms_of_carries_every_member_of_each_room(store: SqlStore) -> None:
    group = await store.create_group_room(ALICE, "team", [BOB, CAROL])
    direct = await store.create_direct_room(BOB, DAVE)
    members = {r.id: r.member_ids for r in await store.rooms_of(BOB)}
    assert members == {group.id: (ALICE, BOB, CAROL), direct.id: (BOB, DAVE)}


async def test_rooms_of_a_user_without_rooms_is_empty(store: SqlStore, room: Room) -> None:
    assert await store.rooms_of(DAVE) == []


# --- membership ------------------------------------------------------------------------------


async def test_is_member(store: SqlStore, room: Room) -> None:
    assert await store.is_member(room.id, BOB)
    assert not await store.is_member(room.id, DAVE)
    assert not await store.is_member(RoomId(999), BOB)


async def test_add_member_is_idempotent_and_returns_the_room(store: SqlStore, room: Room) -> None:
    added = await store.add_member(room.id, DAVE)
    assert added.member_ids == (ALICE, BOB, CAROL, DAVE)
    again = await store.add_member(room.id, DAVE)
    assert again == added
    assert await store.is_member(room.id, DAVE)


async def test_add_member_to_unknown_room_raises_room_not_found(store: SqlStore) -> None:
    with pytest.raises(RoomNotFound):
        await store.add_member(RoomId(999), DAVE)


async def test_remove_member_reports_whether_the_user_was_one(store: SqlStore, room: Room) -> None:
    assert await store.remove_member(room.id, CAROL) is True
    assert await store.remove_member(room.id, CAROL) is False
    assert await store.remove_member(RoomId(999), CAROL) is False
    assert not await store.is_member(room.id, CAROL)
    assert [r.id for r in await store.rooms_of(CAROL)] == []
    updated = await store.get_room(room.id)
    assert updated is not None
    assert updated.member_ids == (ALICE, BOB)


# --- messages --------------------------------------------------------------------------------


async def test_seq_numbers_each_room_from_one_without_holes(store: SqlStore, room: Room) -> None:
    other = await store.create_direct_room(ALICE, BOB)
    seqs = [(await store.append_message(text(room, BOB, f"m{n}"))).message.seq for n in range(3)]
    assert seqs == [1, 2, 3]
    assert (await store.append_message(text(other, ALICE, "x"))).message.seq == 1
    assert await store.last_seq(room.id) == 3
    assert await store.last_seq(other.id) == 1
    assert await store.last_seq(RoomId(999)) == 0


async def test_stored_message_round_trips_every_field(store: SqlStore, room: Room) -> None:
    headers = (("x-trace", "abc"), ("x-émoji", "🦜 ok"), ("x-trace", "second"))
    new = NewMessage(room.id, BOB, "hello", client_message_id="c-1", headers=headers)
    result = await store.append_message(new)
    assert result.created
    stored = result.message
    assert (stored.room_id, stored.sender_id, stored.content) == (room.id, BOB, "hello")
    assert stored.client_message_id == "c-1"
    assert stored.headers == headers
    assert await store.messages(room.id) == [stored]


async def test_created_at_comes_from_the_database_clock(store: SqlStore, room: Room) -> None:
    stored = (await store.append_message(text(room, BOB, "now"))).message
    assert abs(stored.created_at_ms - time.time() * 1000) < 5000
    refreshed = await store.get_room(room.id)
    assert refreshed is not None
    assert refreshed.last_activity_ms == stored.created_at_ms


async def test_message_without_headers_or_client_id(store: SqlStore, room: Room) -> None:
    stored = (await store.append_message(text(room, BOB, "plain"))).message
    [read] = await store.messages(room.id)
    assert read == stored
    assert read.headers == ()
    assert read.client_message_id is None


async def test_emoji_and_long_text_are_kept_intact(store: SqlStore, room: Room) -> None:
    # No NUL characters: PostgreSQL text cannot hold them (input validation must refuse them).
    contents = [
        "👩🏽‍💻 héllo wörld 你好 end",
        "🧵" * 4000 + "x" * 60_000,
        "",
        "line\r\nbreak",
    ]
    for content in contents:
        await store.append_message(text(room, BOB, content))
    stored = await store.messages(room.id, after=0)
    assert [m.content for m in stored] == contents


async def test_retry_returns_the_stored_message_and_uses_no_seq(
    store: SqlStore, room: Room
) -> None:
    first = await store.append_message(text(room, BOB, "once", "retry-me"))
    again = await store.append_message(text(room, BOB, "once (resent)", "retry-me"))
    assert first.created
    assert not again.created
    assert again.message == first.message
    assert (await store.append_message(text(room, BOB, "next"))).message.seq == 2
    assert len(await store.messages(room.id)) == 2


async def test_client_message_id_is_scoped_to_the_sender_and_room(
    store: SqlStore, room: Room
) -> None:
    other = await store.create_direct_room(ALICE, BOB)
    results = [
        await store.append_message(text(room, BOB, "a", "same")),
        await store.append_message(text(room, CAROL, "b", "same")),
        await store.append_message(text(other, BOB, "c", "same")),
    ]
    assert all(result.created for result in results)
    assert len({result.message.id for result in results}) == 3


async def test_append_to_unknown_room_is_refused_like_a_stranger_s_room(store: SqlStore) -> None:
    with pytest.raises(NotAMember):
        await store.append_message(NewMessage(RoomId(999), ALICE, "hello?"))


async def test_append_by_non_member_raises_not_a_member_and_stores_nothing(
    store: SqlStore, room: Room
) -> None:
    with pytest.raises(NotAMember):
        await store.append_message(text(room, DAVE, "let me in", "d-1"))
    assert await store.last_seq(room.id) == 0
    assert await store.messages(room.id) == []
    unchanged = await store.get_room(room.id)
    assert unchanged is not None
    assert unchanged.last_activity_ms == room.last_activity_ms


async def test_removed_member_can_no_longer_post(store: SqlStore, room: Room) -> None:
    await store.remove_member(room.id, CAROL)
    with pytest.raises(NotAMember):
        await store.append_message(text(room, CAROL, "bye"))


async def test_messages_are_newest_first_without_after(store: SqlStore, room: Room) -> None:
    await fill(store, room, 5)
    assert [m.seq for m in await store.messages(room.id)] == [5, 4, 3, 2, 1]
    assert [m.seq for m in await store.messages(room.id, limit=2)] == [5, 4]
    assert [m.seq for m in await store.messages(room.id, before=3)] == [2, 1]


async def test_messages_after_are_oldest_first(store: SqlStore, room: Room) -> None:
    await fill(store, room, 5)
    assert [m.seq for m in await store.messages(room.id, after=0)] == [1, 2, 3, 4, 5]
    assert [m.seq for m in await store.messages(room.id, after=3)] == [4, 5]
    assert [m.seq for m in await store.messages(room.id, after=1, limit=2)] == [2, 3]
    assert await store.messages(room.id, after=5) == []


async def test_after_and_before_bound_the_range_oldest_first(store: SqlStore, room: Room) -> None:
    await fill(store, room, 10)
    assert [m.seq for m in await store.messages(room.id, after=2, before=7)] == [3, 4, 5, 6]
    assert [m.seq for m in await store.messages(room.id, after=2, before=7, limit=2)] == [3, 4]
    assert await store.messages(room.id, after=4, before=5) == []


async def test_paging_backwards_visits_every_message_once(store: SqlStore, room: Room) -> None:
    await fill(store, room, 25)
    seen: list[int] = []
    before: int | None = None
    while page := await store.messages(room.id, before=before, limit=7):
        assert len(page) <= 7
        seen.extend(m.seq for m in page)
        before = page[-1].seq
    assert seen == list(range(25, 0, -1))


async def test_paging_forwards_visits_every_message_once(store: SqlStore, room: Room) -> None:
    await fill(store, room, 25)
    seen: list[int] = []
    after = 0
    while page := await store.messages(room.id, after=after, limit=7):
        seen.extend(m.seq for m in page)
        after = page[-1].seq
    assert seen == list(range(1, 26))
    assert [m.content for m in await store.messages(room.id, after=24)] == ["message 25"]


async def test_messages_of_unknown_room_are_empty(store: SqlStore) -> None:
    assert await store.messages(RoomId(999)) == []


async def test_messages_limit_must_be_positive(store: SqlStore, room: Room) -> None:
    with pytest.raises(ValueError):
        await store.messages(room.id, limit=0)


async def test_ping_answers(store: SqlStore) -> None:
    await store.ping()
    # It really reached the database; the failing side is the next test.
    assert await store.last_seq(RoomId(1)) == 0


async def test_ping_raises_store_unavailable_when_the_database_cannot_be_opened(
    tmp_path: pathlib.Path,
) -> None:
    unusable = tmp_path / "a-directory-not-a-file.db"
    unusable.mkdir()
    threads_before = set(threading.enumerate())
    store = await open_store(f"sqlite:///{unusable}")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
        # aiosqlite stops the thread of a connection that failed to open without waiting for it;
        # should this loop close first, that thread's answer fails in it (a flaky error
        # reported on a later test). Wait for those threads to end while the loop still runs.
        for thread in set(threading.enumerate()) - threads_before:
            await asyncio.to_thread(thread.join, 10)


# --- concurrency -----------------------------------------------------------------------------


async def test_concurrent_appends_get_consecutive_seqs(store: SqlStore, room: Room) -> None:
    results = await asyncio.gather(
        *(store.append_message(text(room, BOB, f"c{n}")) for n in range(50))
    )
    assert sorted(r.message.seq for r in results) == list(range(1, 51))
    assert len({r.message.id for r in results}) == 50
    assert [m.seq for m in await store.messages(room.id, after=0, limit=100)] == list(range(1, 51))


async def test_two_stores_on_one_database_share_one_sequence(
    store: SqlStore, room: Room, open_another: StoreOpener
) -> None:
    # Two engines with their own pools stand for two worker processes.
    other = await open_another()
    results = await asyncio.gather(
        *((store if n % 2 else other).append_message(text(room, BOB, f"w{n}")) for n in range(40))
    )
    assert sorted(r.message.seq for r in results) == list(range(1, 41))
    assert await other.last_seq(room.id) == 40


async def test_concurrent_creates_of_one_pair_make_one_room(store: SqlStore) -> None:
    outcomes = await asyncio.gather(
        *(store.create_direct_room(*((ALICE, BOB) if n % 2 else (BOB, ALICE))) for n in range(20)),
        return_exceptions=True,
    )
    rooms = [outcome for outcome in outcomes if isinstance(outcome, Room)]
    refusals = [outcome for outcome in outcomes if isinstance(outcome, RoomExists)]
    assert len(rooms) == 1
    assert len(refusals) == 19
    assert {refusal.room_id for refusal in refusals} == {rooms[0].id}
    assert [r.id for r in await store.rooms_of(BOB)] == [rooms[0].id]


async def test_concurrent_retries_store_one_row(store: SqlStore, room: Room) -> None:
    results = await asyncio.gather(
        *(store.append_message(text(room, BOB, "dup", "same-id")) for _ in range(10))
    )
    assert sum(result.created for result in results) == 1
    assert len({result.message for result in results}) == 1
    assert await store.last_seq(room.id) == 1
    assert len(await store.messages(room.id)) == 1


# --- SQLite specifics ------------------------------------------------------------------------


#: Runs the test on the SQLite backend only (not a skip on the others: CI fails on skips).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _sqlite_file(database_url: str) -> str:
    path = sqlite_path(database_url)
    assert path is not None, "SQLite only"
    return str(path)


@SQLITE_ONLY
async def test_sqlite_connections_are_durable_wal_with_foreign_keys(
    store: SqlStore, database_url: str
) -> None:
    _sqlite_file(database_url)
    async with store.engine.connect() as conn:
        settings = {
            pragma: (await conn.exec_driver_sql(f"PRAGMA {pragma}")).scalar()
            for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
        }
    assert settings == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }


@SQLITE_ONLY
async def test_sqlite_history_page_uses_the_room_seq_index(
    store: SqlStore, room: Room, database_url: str
) -> None:
    path = _sqlite_file(database_url)
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM messages" in statement:
            captured.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await store.messages(room.id, before=10, limit=5)
        await store.messages(room.id, after=3, limit=5)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    assert len(captured) == 2
    with closing(sqlite3.connect(path)) as conn:
        for statement, parameters in captured:
            plan = " ".join(
                row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
            # The unique (room_id, seq) constraint's index; SQLite names it sqlite_autoindex_*.
            assert "USING INDEX" in plan, plan
            assert "(room_id=? AND seq" in plan, plan
            assert "TEMP B-TREE" not in plan, plan


@SQLITE_ONLY
async def test_writer_locked_out_past_busy_timeout_gets_store_unavailable(
    store: SqlStore, room: Room, database_url: str, open_another: StoreOpener
) -> None:
    path = _sqlite_file(database_url)
    impatient = await open_another(busy_timeout_ms=200)
    await impatient.append_message(text(room, BOB, "before the lock"))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as refused:
            await impatient.append_message(text(room, BOB, "blocked", "blocked-1"))
        assert time.monotonic() - started >= 0.15
        assert "locked" in str(refused.value.__cause__)
        # WAL: readers are not blocked by the writer.
        assert [m.seq for m in await impatient.messages(room.id)] == [1]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await store.last_seq(room.id) == 1
    retried = await impatient.append_message(text(room, BOB, "blocked", "blocked-1"))
    assert retried.created
    assert retried.message.seq == 2


@SQLITE_ONLY
async def test_writer_waits_for_a_short_lock_instead_of_failing(
    store: SqlStore, room: Room, database_url: str
) -> None:
    path = _sqlite_file(database_url)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        pending = store.append_message(text(room, BOB, "patient"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        holder.execute("COMMIT")
        assert (await pending).message.seq == 1
    finally:
        holder.close()


async def test_unusable_database_directory_gives_store_unavailable(
    tmp_path: pathlib.Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the database directory should be")
    url = f"sqlite:///{blocker / 'chat.db'}"
    with pytest.raises(StoreUnavailable):
        await open_store(url)
    with pytest.raises(StoreUnavailable):
        await migrate(url)
