"""Read markers and unread counts in the store, on every backend: forward only, moved by the
sender's own messages in the same transaction, counted for a room list in one statement."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from typing import Any

import pytest
from sqlalchemy import event

from chat_server.errors import InvalidSeq, NotAMember
from chat_server.models import NewMessage, ReadMarker, Room, RoomId, UserId
from chat_server.store.sql import SqlStore
from chat_server.store.urls import sqlite_path
from tests.store.conftest import StoreOpener

ALICE, BOB, CAROL, DAVE = UserId("alice"), UserId("bob"), UserId("carol"), UserId("dave")


async def say(store: SqlStore, room: Room, sender: UserId, count: int = 1) -> int:
    """`count` messages from `sender`, one at a time; the last one's seq."""
    seq = 0
    for n in range(count):
        seq = (await store.append_message(NewMessage(room.id, sender, f"{sender} {n}"))).message.seq
    return seq


async def test_a_new_member_has_read_nothing(store: SqlStore, room: Room) -> None:
    assert await store.reads(room.id) == {ALICE: 0, BOB: 0, CAROL: 0}
    listed = await store.rooms_of(BOB)
    assert [(r.last_seq, r.last_read_seq, r.unread_count) for r in listed] == [(0, 0, 0)]


async def test_marker_moves_forward_only(store: SqlStore, room: Room) -> None:
    await say(store, room, ALICE, 5)
    assert await store.mark_read(room.id, BOB, 3) == ReadMarker(room.id, BOB, 3, moved=True)
    assert await store.mark_read(room.id, BOB, 2) == ReadMarker(room.id, BOB, 3, moved=False)
    assert await store.mark_read(room.id, BOB, 3) == ReadMarker(room.id, BOB, 3, moved=False)
    assert await store.mark_read(room.id, BOB, 0) == ReadMarker(room.id, BOB, 3, moved=False)
    assert await store.mark_read(room.id, BOB, 5) == ReadMarker(room.id, BOB, 5, moved=True)
    assert (await store.reads(room.id))[BOB] == 5


async def test_seq_past_the_rooms_last_message_is_refused(store: SqlStore, room: Room) -> None:
    await say(store, room, ALICE, 2)
    with pytest.raises(InvalidSeq) as refused:
        await store.mark_read(room.id, BOB, 3)
    assert refused.value.code == "invalid_seq"
    assert refused.value.status == 422
    assert refused.value.details == {"seq": 3, "lastSeq": 2}
    assert (await store.reads(room.id))[BOB] == 0


async def test_marking_someone_elses_room_or_no_room_is_not_a_member(
    store: SqlStore, room: Room
) -> None:
    with pytest.raises(NotAMember):
        await store.mark_read(room.id, DAVE, 0)
    with pytest.raises(NotAMember):
        await store.mark_read(RoomId(room.id + 1000), BOB, 0)


async def test_storing_a_message_moves_its_senders_marker_and_nobody_elses(
    store: SqlStore, room: Room
) -> None:
    await say(store, room, ALICE, 2)
    await store.mark_read(room.id, CAROL, 2)
    # Three from Bob in one group commit: his marker goes to the last of them.
    batch = [store.append_message(NewMessage(room.id, BOB, f"b{n}")) for n in range(3)]
    seqs = [(await answer).message.seq for answer in batch]
    assert seqs == [3, 4, 5]
    assert await store.reads(room.id) == {ALICE: 2, BOB: 5, CAROL: 2}


async def test_a_retried_client_message_id_does_not_move_the_marker_back(
    store: SqlStore, room: Room
) -> None:
    await store.append_message(NewMessage(room.id, BOB, "first", "cm-1"))
    await say(store, room, BOB, 2)
    again = await store.append_message(NewMessage(room.id, BOB, "first", "cm-1"))
    assert not again.created
    assert (await store.reads(room.id))[BOB] == 3


async def test_unread_counts_messages_from_others_above_the_marker(
    store: SqlStore, room: Room
) -> None:
    await say(store, room, ALICE, 3)  # 1-3
    await store.mark_read(room.id, BOB, 2)
    await say(store, room, CAROL, 2)  # 4-5
    await say(store, room, ALICE, 1)  # 6
    by_user = {user: (await store.rooms_of(user))[0] for user in (ALICE, BOB, CAROL)}
    # Bob read 2: 3 (alice), 4-5 (carol), 6 (alice) are new to him.
    assert (by_user[BOB].last_seq, by_user[BOB].last_read_seq, by_user[BOB].unread_count) == (
        6, 2, 4)
    # Alice's own 6 moved her marker: nothing is unread.
    assert (by_user[ALICE].last_read_seq, by_user[ALICE].unread_count) == (6, 0)
    # Carol's marker is at her own 5; alice's 6 is unread.
    assert (by_user[CAROL].last_read_seq, by_user[CAROL].unread_count) == (5, 1)
    # Bob writes: he has read everything up to his message, whoever wrote before it.
    await say(store, room, BOB, 1)
    bob = (await store.rooms_of(BOB))[0]
    assert (bob.last_seq, bob.last_read_seq, bob.unread_count) == (7, 7, 0)
    read_for_carol = await store.get_room(room.id, reader=CAROL)
    assert read_for_carol is not None
    assert (read_for_carol.last_read_seq, read_for_carol.unread_count) == (5, 2)
    assert await store.get_room(room.id, reader=DAVE) is None


async def test_a_member_added_back_has_read_what_they_wrote(store: SqlStore, room: Room) -> None:
    await say(store, room, BOB, 2)
    await store.remove_member(room.id, BOB)
    await say(store, room, ALICE, 2)
    await store.add_member(room.id, BOB)
    bob = (await store.rooms_of(BOB))[0]
    assert (bob.last_seq, bob.last_read_seq, bob.unread_count) == (4, 2, 2)
    await store.add_member(room.id, DAVE)  # never wrote here: has read nothing
    assert (await store.reads(room.id))[DAVE] == 0


async def test_unread_counts_agree_with_counting_the_messages(store: SqlStore, room: Room) -> None:
    """The count is a subtraction (schema.py): check it against counting, after a mix."""
    script = [ALICE, BOB, BOB, CAROL, ALICE, CAROL, CAROL, BOB, ALICE, ALICE, CAROL]
    for step, sender in enumerate(script, start=1):
        await say(store, room, sender)
        if step % 4 == 0:
            await store.mark_read(room.id, CAROL, step - 1)
        if step == 6:
            await store.mark_read(room.id, ALICE, 3)
    stored = await store.messages(room.id, after=0, limit=100)
    for user in (ALICE, BOB, CAROL):
        mine = (await store.rooms_of(user))[0]
        counted = sum(1 for m in stored if m.seq > mine.last_read_seq and m.sender_id != user)
        assert mine.unread_count == counted, user


async def test_room_list_is_one_statement_for_any_number_of_rooms(store: SqlStore) -> None:
    rooms = [await store.create_group_room(ALICE, f"r{n}", [BOB]) for n in range(30)]
    for room in rooms[::3]:
        await say(store, room, BOB, 2)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", count)
    try:
        listed = await store.rooms_of(ALICE)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", count)
    # The rooms with their markers and counts, and their members: two, whatever the number.
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 2
    assert len(listed) == 30
    assert sum(room.unread_count for room in listed) == 20


async def test_two_devices_reading_at_once_leave_the_highest_marker(
    store: SqlStore, room: Room, open_another: StoreOpener
) -> None:
    await say(store, room, ALICE, 40)
    phone = await open_another()
    marks = list(range(1, 41))
    results = await asyncio.gather(
        *(store.mark_read(room.id, BOB, seq) for seq in marks[0::2]),
        *(phone.mark_read(room.id, BOB, seq) for seq in reversed(marks[1::2])),
    )
    assert (await store.reads(room.id))[BOB] == 40
    # Each answer is the marker as stored then: never below what that call asked for.
    assert all(result.seq >= asked for result, asked in
               zip(results, marks[0::2] + list(reversed(marks[1::2])), strict=True))
    assert sum(result.moved for result in results) >= 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_room_list_reads_members_by_user_and_no_message(
    store: SqlStore, room: Room, database_url: str
) -> None:
    path = sqlite_path(database_url)
    assert path is not None
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "unread_count" in statement:
            captured.append((statement, parameters))

    event.listen(store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await store.rooms_of(BOB)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", capture)
    [(statement, parameters)] = captured
    with closing(sqlite3.connect(path)) as conn:
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}",
                                                       parameters))
    assert "USING INDEX ix_room_members_user_id" in plan, plan
    assert "messages" not in plan, plan  # counting unread messages reads none of them
