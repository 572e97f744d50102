"""Group commit: SENDs that arrive together are stored in one transaction, and each still
gets exactly its own answer."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from chat_server.errors import NotAMember, NotStored, RoomNotFound, StoreUnavailable
from chat_server.models import NewMessage, PostResult, Room, RoomId, SendChain, UserId
from chat_server.store.sql import SqlStore
from chat_server.store.urls import sqlite_path
from tests.store.conftest import StoreOpener

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


async def test_a_chain_stops_at_its_first_refusal_in_this_batch_and_later_ones(
    store: SqlStore, room: Room
) -> None:
    chain = SendChain()
    tolerant = SendChain(stop_on_refusal=False)
    first_batch = [
        store.append_message(NewMessage(room.id, ALICE, "kept", chain=chain)),
        store.append_message(NewMessage(RoomId(999_999), ALICE, "refused", chain=chain)),
        store.append_message(NewMessage(room.id, ALICE, "behind it", chain=chain)),
        store.append_message(NewMessage(room.id, BOB, "another connection")),
        store.append_message(NewMessage(RoomId(999_999), BOB, "refused too", chain=tolerant)),
        store.append_message(NewMessage(room.id, BOB, "after a tolerated refusal",
                                        chain=tolerant)),
    ]
    outcomes = await asyncio.gather(*first_batch, return_exceptions=True)
    assert isinstance(outcomes[1], RoomNotFound) and isinstance(outcomes[4], RoomNotFound)
    assert isinstance(outcomes[2], NotStored)
    assert chain.broken and not tolerant.broken
    later = store.append_message(NewMessage(room.id, ALICE, "a later batch", chain=chain))
    with pytest.raises(NotStored):
        await later
    stored = [m.content for m in await store.messages(room.id, after=0)]
    assert stored == ["kept", "another connection", "after a tolerated refusal"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_failed_batch_breaks_its_chains(
    room: Room, database_url: str, open_another: StoreOpener
) -> None:
    impatient = await open_another(busy_timeout_ms=100)
    path = sqlite_path(database_url)
    assert path is not None
    chain = SendChain()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await impatient.append_message(NewMessage(room.id, ALICE, "locked out", chain=chain))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert chain.broken  # its outcome is unknown to the sender: nothing after it is stored
    with pytest.raises(NotStored):
        await impatient.append_message(NewMessage(room.id, ALICE, "behind it", chain=chain))
    fresh = await impatient.append_message(NewMessage(room.id, ALICE, "a new chain",
                                                      chain=SendChain()))
    assert fresh.message.seq == 1
