"""The Broker contract, run once per implementation: in-process, and Redis on fakeredis.

Two RedisBrokers on one fake server stand for two workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fakeredis import FakeAsyncRedis, FakeServer

from chat_server.broker.base import Broker, BrokerState
from chat_server.broker.memory import MemoryBroker
from chat_server.broker.redis import RedisBroker

WAIT_S = 3.0


class Recorder:
    """A BrokerListener that lets a test await what arrives."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.resyncs = 0
        self.states: list[BrokerState] = []
        self.resynced = asyncio.Event()

    def on_message(self, topic: str, payload: bytes) -> None:
        self.messages.put_nowait((topic, payload))

    def on_state(self, state: BrokerState) -> None:
        self.states.append(state)

    def on_resync(self) -> None:
        self.resyncs += 1
        self.resynced.set()

    async def next(self) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.messages.get(), WAIT_S)


Worker = tuple[Broker, Recorder]
WorkerFactory = Callable[[], Any]


def redis_broker(server: FakeServer) -> RedisBroker:
    return RedisBroker(
        FakeAsyncRedis(server=server), FakeAsyncRedis(server=server), ping_interval_s=0.2
    )


@pytest.fixture(params=["memory", "redis"])
async def workers(request: pytest.FixtureRequest) -> AsyncIterator[list[Worker]]:
    """Two workers sharing one broker fabric (the memory broker is one process: one worker)."""
    started: list[Worker] = []
    if request.param == "memory":
        brokers: list[Broker] = [MemoryBroker()]
    else:
        server = FakeServer()
        brokers = [redis_broker(server), redis_broker(server)]
    for broker in brokers:
        recorder = Recorder()
        await broker.start(recorder)
        if isinstance(broker, RedisBroker):
            await asyncio.wait_for(recorder.resynced.wait(), WAIT_S)
        started.append((broker, recorder))
    yield started
    for broker, _ in started:
        await broker.close()


async def test_broker_is_connected_once_started(workers: list[Worker]) -> None:
    for broker, _ in workers:
        assert broker.state is BrokerState.CONNECTED


async def test_own_publish_comes_back_through_the_broker(workers: list[Worker]) -> None:
    broker, recorder = workers[0]
    await broker.subscribe("room:1")
    await broker.publish("room:1", b"hello")
    assert await recorder.next() == ("room:1", b"hello")


async def test_only_watched_topics_are_delivered(workers: list[Worker]) -> None:
    broker, recorder = workers[0]
    await broker.subscribe("room:1")
    await broker.publish("room:2", b"not for us")
    await broker.publish("room:1", b"sentinel")
    assert await recorder.next() == ("room:1", b"sentinel")


async def test_unsubscribed_topic_stops_delivering(workers: list[Worker]) -> None:
    broker, recorder = workers[0]
    await broker.subscribe("room:1")
    await broker.subscribe("room:2")
    await broker.unsubscribe("room:1")
    await broker.publish("room:1", b"gone")
    await broker.publish("room:2", b"sentinel")
    assert await recorder.next() == ("room:2", b"sentinel")


async def test_each_message_arrives_once_and_in_publish_order(workers: list[Worker]) -> None:
    broker, recorder = workers[0]
    await broker.subscribe("room:1")
    for n in range(50):
        await broker.publish("room:1", b"%d" % n)
    received = [await recorder.next() for _ in range(50)]
    assert [payload for _, payload in received] == [b"%d" % n for n in range(50)]
    assert recorder.messages.empty()


async def test_user_and_room_topics_are_distinct(workers: list[Worker]) -> None:
    broker, recorder = workers[0]
    await broker.subscribe("user:1")
    await broker.publish("room:1", b"room")
    await broker.publish("user:1", b"user")
    assert await recorder.next() == ("user:1", b"user")


async def test_a_message_reaches_every_worker_watching_the_topic() -> None:
    server = FakeServer()
    (a, a_seen), (b, b_seen) = [(redis_broker(server), Recorder()) for _ in range(2)]
    for broker, recorder in ((a, a_seen), (b, b_seen)):
        await broker.start(recorder)
        await asyncio.wait_for(recorder.resynced.wait(), WAIT_S)
    try:
        await a.subscribe("room:7")
        await b.subscribe("room:7")
        await b.publish("room:7", b"from b")
        assert await a_seen.next() == ("room:7", b"from b")
        assert await b_seen.next() == ("room:7", b"from b")
    finally:
        await a.close()
        await b.close()


async def test_redis_broker_starts_without_redis_and_delivers_locally() -> None:
    """FAULTS: Redis down at start: the worker starts, keeps trying, and same-worker
    subscribers still get their messages."""
    broker = RedisBroker.from_url("redis://127.0.0.1:1/0", command_timeout_s=0.2,
                                  reconnect_max_s=0.2)
    recorder = Recorder()
    await broker.start(recorder)
    try:
        assert broker.state is BrokerState.CONNECTING
        await broker.subscribe("room:1")
        await broker.publish("room:1", b"still delivered")
        assert await recorder.next() == ("room:1", b"still delivered")
        assert broker.state is BrokerState.CONNECTING
    finally:
        await broker.close()  # flushes the queue: the publish fails, and is not re-delivered
    assert broker.publish_failures == 1
    assert recorder.messages.empty()
