"""The Broker contract, run once per implementation: in-process, Redis on fakeredis, and Redis on
a private real ``redis-server`` (skipped, naming the Debian package, where it is not installed).

Two RedisBrokers on one server stand for two workers.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from fakeredis import FakeAsyncRedis, FakeServer

from chat_server.broker.base import Broker, BrokerState
from chat_server.broker.memory import MemoryBroker
from chat_server.broker.redis import RedisBroker
from tests.services import RedisServer

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
#: Makes one more RedisBroker on the fabric under test; each call stands for another worker.
RedisBrokerFactory = Callable[[], RedisBroker]

REDIS_FABRICS = ["fakeredis", "redis-server"]


@pytest.fixture(scope="module")
def real_redis() -> Iterator[RedisServer]:
    """A private redis-server on a free port, its files in a temp dir, for this module.

    Not under pytest's numbered temp dirs: another pytest session may prune those meanwhile.
    ``RedisServer`` skips (naming the Debian package redis-server) when the binary is missing.
    """
    root = tempfile.mkdtemp(prefix="chat-test-broker-redis-")
    try:
        server = RedisServer(root)
        try:
            server.start()
            yield server
        finally:
            server.stop()  # SIGTERM, then SIGKILL to its process group; always reaped
    finally:
        shutil.rmtree(root, ignore_errors=True)


def redis_factory(fabric: str, request: pytest.FixtureRequest) -> RedisBrokerFactory:
    """RedisBrokers sharing one Redis: an in-process fake, or the real server of this module."""
    if fabric == "fakeredis":
        server = FakeServer()

        def on_fake() -> RedisBroker:
            return RedisBroker(FakeAsyncRedis(server=server), FakeAsyncRedis(server=server),
                               ping_interval_s=0.2)

        return on_fake
    assert fabric == "redis-server", fabric
    real: RedisServer = request.getfixturevalue("real_redis")

    def on_real() -> RedisBroker:
        return RedisBroker.from_url(real.url, ping_interval_s=0.2)

    return on_real


@pytest.fixture(params=REDIS_FABRICS)
def redis_brokers(request: pytest.FixtureRequest) -> RedisBrokerFactory:
    return redis_factory(request.param, request)


async def start_all(brokers: list[Broker]) -> list[Worker]:
    """Starts each broker; a RedisBroker is ready once its first resync (subscribed) came."""
    started: list[Worker] = []
    try:
        for broker in brokers:
            recorder = Recorder()
            await broker.start(recorder)
            started.append((broker, recorder))
            if isinstance(broker, RedisBroker):
                await asyncio.wait_for(recorder.resynced.wait(), WAIT_S)
    except BaseException:
        for broker, _ in started:
            await broker.close()
        raise
    return started


@pytest.fixture(params=["memory", *REDIS_FABRICS])
async def workers(request: pytest.FixtureRequest) -> AsyncIterator[list[Worker]]:
    """Two workers sharing one broker fabric (the memory broker is one process: one worker)."""
    if request.param == "memory":
        brokers: list[Broker] = [MemoryBroker()]
    else:
        factory = redis_factory(request.param, request)
        brokers = [factory(), factory()]
    started = await start_all(brokers)
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


async def test_a_message_reaches_every_worker_watching_the_topic(
    redis_brokers: RedisBrokerFactory,
) -> None:
    (a, a_seen), (b, b_seen) = await start_all([redis_brokers(), redis_brokers()])
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
