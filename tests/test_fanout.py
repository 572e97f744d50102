"""Fan-out ordering: whatever order, duplication or loss the broker shows, subscribers see
each room's messages once, in `seq` order, with nothing missing."""

from __future__ import annotations

import asyncio

import pytest

from chat_server.broker.base import room_topic
from chat_server.broker.memory import MemoryBroker
from chat_server.fanout import Delivery, Fanout, Tap
from chat_server.metrics import Metrics
from chat_server.models import ChatMessage, NewMessage, RoomId, UserId, encode_envelope
from chat_server.store.sql import SqlStore

WAIT_S = 3.0
ALICE = UserId("alice")


class Seen:
    """A tap's sink that a test can await."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChatMessage] = asyncio.Queue()

    def __call__(self, delivery: Delivery) -> None:
        self.queue.put_nowait(delivery.message)

    async def seqs(self, count: int) -> list[int]:
        return [
            (await asyncio.wait_for(self.queue.get(), WAIT_S)).seq for _ in range(count)
        ]


@pytest.fixture
async def room(store: SqlStore) -> RoomId:
    return (await store.create_group_room(ALICE, "r", [UserId("bob")])).id


async def stored(store: SqlStore, room: RoomId, count: int) -> list[ChatMessage]:
    """Messages committed but not published: the test publishes them as it likes."""
    return [
        (await store.append_message(NewMessage(room, ALICE, f"m{n}"))).message
        for n in range(count)
    ]


def publish(fan: Fanout, *messages: ChatMessage) -> None:
    for message in messages:
        fan.on_message(room_topic(message.room_id), encode_envelope(message))


async def attach(fan: Fanout, room: RoomId, resume_after: int | None = None) -> Seen:
    seen = Seen()
    await fan.attach(Tap(room, seen), resume_after)
    return seen


async def test_early_arrival_waits_for_the_one_before_it(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    seen = await attach(fanout, room)
    one, two = await stored(store, room, 2)
    publish(fanout, two)
    publish(fanout, one)
    assert await seen.seqs(2) == [1, 2]


async def test_lost_message_is_read_from_the_store(
    fanout: Fanout, store: SqlStore, room: RoomId, metrics: Metrics
) -> None:
    seen = await attach(fanout, room)
    one, _lost, three = await stored(store, room, 3)
    publish(fanout, one, three)
    assert await seen.seqs(3) == [1, 2, 3]
    assert metrics.value("chat_gap_fills_total") == 1
    assert metrics.value("chat_messages_delivered_total") == 3


async def test_duplicates_are_delivered_once(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    seen = await attach(fanout, room)
    one, two = await stored(store, room, 2)
    publish(fanout, one, one, two, one, two)
    (sentinel,) = await stored(store, room, 1)
    publish(fanout, sentinel)
    assert await seen.seqs(3) == [1, 2, 3]


async def test_every_tap_of_a_room_gets_one_shared_delivery(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    deliveries: list[Delivery] = []
    for _ in range(3):
        await fanout.attach(Tap(room, deliveries.append))
    publish(fanout, *await stored(store, room, 1))
    assert len(deliveries) == 3
    assert deliveries[0] is deliveries[1] is deliveries[2]  # encoded once, written thrice


async def test_resync_reads_what_the_broker_missed(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    seen = await attach(fanout, room)
    await stored(store, room, 4)  # published while the broker was down: nobody heard
    fanout.on_resync()
    assert await seen.seqs(4) == [1, 2, 3, 4]


async def test_reconcile_finds_a_commit_that_was_never_published(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    seen = await attach(fanout, room)
    await stored(store, room, 1)  # its worker died before publishing, and nothing follows
    await fanout.reconcile()
    assert await seen.seqs(1) == [1]


async def test_new_subscriber_starts_after_what_is_stored(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    old = await stored(store, room, 2)
    seen = await attach(fanout, room)
    publish(fanout, *old)  # late echoes of old messages
    publish(fanout, *await stored(store, room, 1))
    assert await seen.seqs(1) == [3]


async def test_resume_after_replays_then_continues_without_gap_or_repeat(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    live = await attach(fanout, room)
    history = await stored(store, room, 250)  # more than one replay page
    publish(fanout, *history)
    assert await live.seqs(250) == list(range(1, 251))

    seen = Seen()
    tap = Tap(room, seen)
    attaching = asyncio.ensure_future(fanout.attach(tap, resume_after=10))
    more = await stored(store, room, 5)  # committed and published while the replay runs
    publish(fanout, *more)
    await attaching
    assert await seen.seqs(245) == list(range(11, 256))
    assert seen.queue.empty()


async def test_detached_tap_receives_nothing_more(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    gone, stays = Seen(), Seen()
    gone_tap = Tap(room, gone)
    await fanout.attach(gone_tap)
    await fanout.attach(Tap(room, stays))
    fanout.detach(gone_tap)
    publish(fanout, *await stored(store, room, 1))
    assert await stays.seqs(1) == [1]
    assert gone.queue.empty()


async def test_last_tap_leaving_unsubscribes_the_room(
    store: SqlStore, room: RoomId, metrics: Metrics
) -> None:
    broker = MemoryBroker()
    fan = Fanout(broker, store, reconcile_interval_s=0, metrics=metrics)
    await broker.start(fan)
    tap = Tap(room, Seen())
    await fan.attach(tap)
    assert room_topic(room) in broker.topics
    fan.detach(tap)
    await fan.close()  # waits for the unsubscribe it started
    assert room_topic(room) not in broker.topics
    await broker.close()


async def test_failing_subscriber_does_not_stop_the_others(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    def broken(_delivery: Delivery) -> None:
        raise RuntimeError("a bug in one session")

    await fanout.attach(Tap(room, broken))
    seen = await attach(fanout, room)
    publish(fanout, *await stored(store, room, 2))
    assert await seen.seqs(2) == [1, 2]


async def test_garbage_on_the_broker_is_dropped(
    fanout: Fanout, store: SqlStore, room: RoomId
) -> None:
    seen = await attach(fanout, room)
    fanout.on_message(room_topic(room), b"not an envelope")
    publish(fanout, *await stored(store, room, 1))
    assert await seen.seqs(1) == [1]


class CountingStore:
    """The real store, counting how many history reads run at once (what a resync costs the
    database pool)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.running = 0
        self.most = 0

    async def messages(self, room_id: RoomId, after: int, limit: int) -> list[ChatMessage]:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0)  # let every other fill that may start, start
            return await self._store.messages(room_id, after=after, limit=limit)
        finally:
            self.running -= 1

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


async def test_a_resync_fills_every_room_but_only_a_few_at_a_time(
    store: SqlStore, metrics: Metrics
) -> None:
    counting = CountingStore(store)
    broker = MemoryBroker()
    fan = Fanout(broker, counting, reconcile_interval_s=0, metrics=metrics,  # type: ignore[arg-type]
                 max_concurrent_fills=3)
    await broker.start(fan)
    try:
        rooms = [(await store.create_group_room(ALICE, f"r{n}", [])).id for n in range(12)]
        seen = [await attach(fan, room) for room in rooms]
        for room in rooms:
            await stored(store, room, 2)  # committed while the broker was down
        fan.on_resync()
        for watcher in seen:
            assert await watcher.seqs(2) == [1, 2]
        assert counting.most == 3
    finally:
        await fan.close()
        await broker.close()


async def test_a_bug_in_handling_one_broker_message_does_not_reach_the_broker(
    fanout: Fanout, store: SqlStore, room: RoomId, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's reader calls `on_message`; an exception there ended the reader (and with it
    every room's delivery on the worker) until it reconnected."""
    seen = await attach(fanout, room)
    first, second = await stored(store, room, 2)

    def broken(_message: ChatMessage) -> None:
        raise RuntimeError("a bug in delivery")

    with monkeypatch.context() as patch:
        patch.setattr(fanout, "deliver", broken)
        publish(fanout, first)  # raised into the broker before; logged now
    publish(fanout, second)
    assert await seen.seqs(2) == [1, 2]  # the first comes back through the gap fill
