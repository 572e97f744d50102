"""Group commit: SENDs that arrive together are stored in one transaction, and each still
gets exactly its own answer."""

from __future__ import annotations

import asyncio

import pytest

from chat_server.errors import NotAMember, RoomNotFound
from chat_server.models import NewMessage, PostResult, Room, RoomId, UserId
from chat_server.store.sql import SqlStore

ALICE, BOB, MALLORY = UserId("alice"), UserId("bob"), UserId("mallory")


async def test_a_burst_is_numbered_in_arrival_order_per_room(
    store: SqlStore, room: Room
) -> None:
    other = await store.create_group_room(BOB, "other", [ALICE])
    sends = [NewMessage(room.id if n % 3 else other.id, ALICE, f"m{n}") for n in range(60)]
    results = await asyncio.gather(*(store.append_message(m) for m in sends))
    for target in (room.id, other.id):
        contents = [r.message.content for r in results if r.message.room_id == target]
        seqs = [r.message.seq for r in results if r.message.room_id == target]
        assert seqs == list(range(1, len(seqs) + 1))
        assert contents == [m.content for m in sends if m.room_id == target]
    assert all(r.created for r in results)


async def test_refusals_in_a_batch_spare_the_others(store: SqlStore, room: Room) -> None:
    sends = [
        store.append_message(NewMessage(room.id, ALICE, "ok 1")),
        store.append_message(NewMessage(room.id, MALLORY, "not a member")),
        store.append_message(NewMessage(RoomId(999_999), ALICE, "no such room")),
        store.append_message(NewMessage(room.id, BOB, "ok 2")),
    ]
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(outcomes[1], NotAMember)
    assert isinstance(outcomes[2], RoomNotFound)
    stored = [o for o in outcomes if isinstance(o, PostResult)]
    assert [(r.message.content, r.message.seq) for r in stored] == [("ok 1", 1), ("ok 2", 2)]
    assert await store.last_seq(room.id) == 2


@pytest.mark.parametrize("already_stored", [False, True])
async def test_retries_in_one_batch_get_the_original_row(
    store: SqlStore, room: Room, already_stored: bool
) -> None:
    original = NewMessage(room.id, ALICE, "once", client_message_id="c-1")
    if already_stored:
        await store.append_message(original)
    results = await asyncio.gather(*(store.append_message(original) for _ in range(5)))
    ids = {r.message.id for r in results}
    assert len(ids) == 1
    assert [r.created for r in results].count(True) == (0 if already_stored else 1)
    assert await store.last_seq(room.id) == 1
    # The same id from another sender is another message.
    other = await store.append_message(NewMessage(room.id, BOB, "twice", client_message_id="c-1"))
    assert other.created and other.message.seq == 2
