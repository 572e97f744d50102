"""Room news goes to the broker only where another worker can hear it: one worker alone delivers
each message at its commit, and publishing it too would only return as an echo to drop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chat_server.broker.base import reaches_other_workers
from chat_server.broker.memory import MemoryBroker
from chat_server.chat import ChatService
from chat_server.fanout import Delivery, Fanout, Tap
from chat_server.metrics import Metrics
from chat_server.models import GroupRoomRequest, MessageDraft, RoomId, UserId
from chat_server.room_state import RoomState
from chat_server.store.sql import SqlStore

ALICE, BOB = UserId("alice"), UserId("bob")


class RecordingBroker(MemoryBroker):
    """The in-process broker, keeping the topic of every publish."""

    def __init__(self) -> None:
        super().__init__()
        self.topics_published: list[str] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.topics_published.append(topic)
        await super().publish(topic, payload)


class SharedBroker(RecordingBroker):
    """The same, posing as a broker that other workers hear (Redis, say)."""

    process_local = False


@pytest.fixture
async def room_state(store: SqlStore, metrics: Metrics) -> AsyncIterator[RoomState]:
    state = RoomState(MemoryBroker(), store, metrics)
    yield state
    await state.close()


async def post_one(broker: RecordingBroker, fanout: Fanout, store: SqlStore, metrics: Metrics,
                   room_state: RoomState) -> tuple[list[int], RoomId]:
    """Alice posts once to a room whose tap this worker holds: the seqs the tap got."""
    await broker.start(fanout)
    chat = ChatService(store, broker, metrics, fanout.deliver, room_state)
    room = (await chat.create_group_room(ALICE, GroupRoomRequest("r", (BOB,)))).id
    got: list[int] = []

    def sink(delivery: Delivery) -> None:
        got.append(delivery.message.seq)

    await fanout.attach(Tap(room, sink))
    await broker.subscribe(f"room:{room}")  # the fan-out's own subscription went to its broker
    assert (await chat.post(ALICE, MessageDraft(room, "hi"))).created
    return got, room


def test_only_the_in_process_broker_is_process_local() -> None:
    assert not reaches_other_workers(MemoryBroker())
    assert reaches_other_workers(SharedBroker())


async def test_one_worker_delivers_without_publishing_the_room_message(
    fanout: Fanout, store: SqlStore, metrics: Metrics, room_state: RoomState
) -> None:
    broker = RecordingBroker()
    got, room = await post_one(broker, fanout, store, metrics, room_state)
    assert got == [1]
    assert f"room:{room}" not in broker.topics_published
    # User events still travel through it: the room's creation notified Bob.
    assert "user:bob" in broker.topics_published


async def test_a_shared_broker_still_carries_the_room_message(
    fanout: Fanout, store: SqlStore, metrics: Metrics, room_state: RoomState
) -> None:
    broker = SharedBroker()
    got, room = await post_one(broker, fanout, store, metrics, room_state)
    assert got == [1]  # its echo came back at once, and was dropped by its seq
    assert broker.topics_published.count(f"room:{room}") == 1
