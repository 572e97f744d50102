"""Group commit: SENDs that arrive together are stored in one transaction, and each still
gets exactly its own answer."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest

from chat_server.errors import NotAMember, NotStored, StoreUnavailable
from chat_server.models import (
    ChatMessage,
    MessageId,
    NewMessage,
    PostResult,
    Room,
    RoomId,
    SendChain,
    UserId,
)
from chat_server.store.appends import Append, Outcome
from chat_server.store.group_commit import GroupCommit
from chat_server.store.sql import SqlStore
from chat_server.store.urls import sqlite_path
from tests.store.conftest import StoreOpener

ALICE, BOB, MALLORY = UserId("alice"), UserId("bob"), UserId("mallory")
ROOM = RoomId(1)


class Database:
    """A stand-in for one batch's transaction: records each batch, stores every message except
    those whose content starts with "refused", and can be held open or made to fail once."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.failure: Exception | None = None

    async def commit(self, appends: Sequence[Append]) -> list[Outcome]:
        self.batches.append([message.content for message, _ in appends])
        await self.open.wait()
        failure, self.failure = self.failure, None  # fails one batch only
        if failure is not None:
            raise failure
        return [self._outcome(message) for message, _ in appends]

    def _outcome(self, message: NewMessage) -> Outcome:
        if message.content.startswith("refused"):
            return NotAMember("not a member of this room", {"roomId": message.room_id})
        stored = ChatMessage(
            MessageId(1), message.room_id, 1, message.sender_id, message.content, 0
        )
        return PostResult(stored, created=True)


def send(content: str) -> NewMessage:
    return NewMessage(ROOM, ALICE, content)


async def holding_a_batch(committer: GroupCommit, database: Database, content: str) -> Any:
    """Start a commit of one append and keep it open: what is appended next queues behind it."""
    database.open.clear()
    first = committer.append(send(content))
    await asyncio.sleep(0)
    assert database.batches[-1] == [content]
    return first


async def test_appends_queued_during_a_commit_share_the_next_one() -> None:
    database = Database()
    committer = GroupCommit(database.commit, max_batch=3)
    sizes: list[int] = []
    committer.observe_batch = sizes.append
    first = await holding_a_batch(committer, database, "alone")
    queued = [committer.append(send(f"m{n}")) for n in range(5)]
    database.open.set()
    results = await asyncio.gather(first, *queued)
    assert [r.message.content for r in results] == ["alone", "m0", "m1", "m2", "m3", "m4"]
    assert database.batches == [["alone"], ["m0", "m1", "m2"], ["m3", "m4"]]
    assert sizes == [1, 3, 2]


async def test_a_refusal_breaks_its_chain_for_what_is_queued_behind_it() -> None:
    database = Database()
    committer = GroupCommit(database.commit)
    chain, tolerant, other = SendChain(1), SendChain(2, stop_on_refusal=False), SendChain(3)
    database.open.clear()
    refused = committer.append(send("refused"), chain)
    refused_too = committer.append(send("refused too"), tolerant)
    elsewhere = committer.append(send("another chain"), other)
    await asyncio.sleep(0)  # committing: what follows is taken once the refusals are known
    behind = committer.append(send("behind it"), chain)
    tolerated = committer.append(send("after a tolerated refusal"), tolerant)
    database.open.set()
    with pytest.raises(NotAMember):
        await refused
    with pytest.raises(NotAMember):
        await refused_too
    assert (await elsewhere).created
    with pytest.raises(NotStored):
        await behind
    assert (await tolerated).created
    # The dropped append never reached the database.
    assert ["after a tolerated refusal"] in database.batches
    assert not any("behind it" in batch for batch in database.batches)


async def test_a_failed_commit_breaks_every_chain_in_it() -> None:
    database = Database()
    committer = GroupCommit(database.commit)
    first, second, bystander = SendChain(1), SendChain(2), SendChain(3)
    database.open.clear()
    failing = [committer.append(send("a"), first), committer.append(send("b"), second)]
    await asyncio.sleep(0)
    behind = [committer.append(send("a2"), first), committer.append(send("b2"), second)]
    unaffected = committer.append(send("c"), bystander)
    database.failure = StoreUnavailable("database unavailable (OperationalError)")
    database.open.set()
    for answer in failing:
        with pytest.raises(StoreUnavailable):
            await answer
    for answer in behind:
        with pytest.raises(NotStored):
            await answer
    assert (await unaffected).created
    assert database.batches == [["a", "b"], ["c"]]


async def test_a_broken_chain_is_forgotten_once_nothing_of_it_is_queued() -> None:
    database = Database()
    committer = GroupCommit(database.commit)
    chain = SendChain(7)
    with pytest.raises(NotAMember):
        await committer.append(send("refused"), chain)
    # Its connection has closed; the id no longer drops anything (nor takes memory).
    assert (await committer.append(send("fresh"), SendChain(7))).created


async def test_a_sender_that_went_away_spares_the_others() -> None:
    database = Database()
    committer = GroupCommit(database.commit)
    first = await holding_a_batch(committer, database, "holding")
    gone = committer.append(send("gone"))
    kept = committer.append(send("kept"))
    gone.cancel()
    database.open.set()
    await first
    assert (await kept).created
    assert database.batches == [["holding"], ["gone", "kept"]]  # stored all the same


async def test_close_answers_everything_queued() -> None:
    database = Database()
    committer = GroupCommit(database.commit)
    first = await holding_a_batch(committer, database, "holding")
    queued = committer.append(send("queued"))
    database.open.set()
    await committer.close()
    assert first.done() and queued.done()


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
    assert isinstance(outcomes[2], NotAMember)  # a missing room looks like someone else's
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
    chain = SendChain(1)
    tolerant = SendChain(2, stop_on_refusal=False)
    first_batch = [
        store.append_message(NewMessage(room.id, ALICE, "kept"), chain),
        store.append_message(NewMessage(RoomId(999_999), ALICE, "refused"), chain),
        store.append_message(NewMessage(room.id, ALICE, "behind it"), chain),
        store.append_message(NewMessage(room.id, BOB, "another connection")),
        store.append_message(NewMessage(RoomId(999_999), BOB, "refused too"), tolerant),
        store.append_message(NewMessage(room.id, BOB, "after a tolerated refusal"), tolerant),
    ]
    await asyncio.sleep(0)  # the first batch is committing: these queue for the next one
    later = store.append_message(NewMessage(room.id, ALICE, "a later batch"), chain)
    tolerated = store.append_message(NewMessage(room.id, BOB, "tolerant, later"), tolerant)
    outcomes = await asyncio.gather(*first_batch, return_exceptions=True)
    assert isinstance(outcomes[1], NotAMember) and isinstance(outcomes[4], NotAMember)
    assert isinstance(outcomes[2], NotStored)
    with pytest.raises(NotStored):
        await later  # the chain is broken
    assert (await tolerated).created  # the tolerant one is not
    stored = [m.content for m in await store.messages(room.id, after=0)]
    assert stored == ["kept", "another connection", "after a tolerated refusal", "tolerant, later"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_failed_batch_breaks_its_chains(
    room: Room, database_url: str, open_another: StoreOpener
) -> None:
    impatient = await open_another(busy_timeout_ms=100)
    path = sqlite_path(database_url)
    assert path is not None
    chain = SendChain(1)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        locked_out = impatient.append_message(NewMessage(room.id, ALICE, "locked out"), chain)
        await asyncio.sleep(0)  # committing (and failing): the next one queues behind it
        behind = impatient.append_message(NewMessage(room.id, ALICE, "behind it"), chain)
        with pytest.raises(StoreUnavailable):
            await locked_out
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # Its outcome is unknown to the sender: nothing after it is stored.
    with pytest.raises(NotStored):
        await behind
    fresh = await impatient.append_message(NewMessage(room.id, ALICE, "a new chain"), SendChain(2))
    assert fresh.message.seq == 1
