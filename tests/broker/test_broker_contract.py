"""The Broker contract, one suite run against every engine: in-process, Redis on fakeredis, and
each networked engine on a private real server started by the tests (Redis, a three-node Redis
Cluster, RabbitMQ, NATS, Tansu for Kafka); a missing server binary is a skip naming its package.

Two brokers on one server stand for two workers.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable

import pytest
from fakeredis import FakeAsyncRedis, FakeServer

from chat_server.broker.base import Broker, BrokerState
from chat_server.broker.choice import build_broker
from chat_server.broker.memory import MemoryBroker
from chat_server.broker.redis import RedisBroker
from chat_server.config import Settings
from tests.services import BrokerPool, BrokerServer, free_port

WAIT_S = 5.0

#: Every engine on a real server; "fakeredis" is Redis's engine on an in-process fake.
SERVED = ["redis", "redis-cluster", "rabbitmq", "nats", "kafka"]
NETWORKED = ["fakeredis", *SERVED]
#: An engine's URL scheme, for a URL where nothing listens.
SCHEMES = {"redis": "redis", "redis-cluster": "redis+cluster", "rabbitmq": "amqp",
           "nats": "nats", "kafka": "kafka"}


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

    async def next_resync(self, timeout: float = WAIT_S) -> None:
        self.resynced.clear()
        await asyncio.wait_for(self.resynced.wait(), timeout)


Worker = tuple[Broker, Recorder]
#: Makes one more broker on the fabric under test; each call stands for another worker.
BrokerFactory = Callable[[], Broker]


def engine_settings(url: str, namespace: str) -> Settings:
    """Short probe and timeouts; a namespace (exchange, subject prefix, topic) per test."""
    return Settings(broker_url=url, broker_namespace=namespace, redis_prefix=f"{namespace}:",
                    broker_ping_interval_s=0.3, broker_timeout_s=2.0,
                    redis_ping_interval_s=0.2, kafka_partitions=4)


def factory_for(fabric: str, request: pytest.FixtureRequest) -> BrokerFactory:
    """Brokers sharing one server: an in-process fake Redis, or the session's real server."""
    if fabric == "fakeredis":
        server = FakeServer()

        def on_fake() -> Broker:
            return RedisBroker(FakeAsyncRedis(server=server), FakeAsyncRedis(server=server),
                               ping_interval_s=0.2)

        return on_fake
    pool: BrokerPool = request.getfixturevalue("broker_pool")
    real = pool.get(fabric)
    namespace = f"t{secrets.token_hex(4)}"
    return lambda: build_broker(engine_settings(real.url, namespace))


async def start_all(brokers: list[Broker]) -> list[Worker]:
    """Starts each broker; a networked one is ready once its first resync (connected) came."""
    started: list[Worker] = []
    try:
        for broker in brokers:
            recorder = Recorder()
            await broker.start(recorder)
            started.append((broker, recorder))
            if not isinstance(broker, MemoryBroker):
                await asyncio.wait_for(recorder.resynced.wait(), WAIT_S * 2)
    except BaseException:
        for broker, _ in started:
            await broker.close()
        raise
    return started


@pytest.fixture(params=NETWORKED)
def brokers(request: pytest.FixtureRequest) -> BrokerFactory:
    return factory_for(request.param, request)


@pytest.fixture(params=["memory", *NETWORKED])
async def workers(request: pytest.FixtureRequest) -> AsyncIterator[list[Worker]]:
    """Two workers sharing one broker fabric (the memory broker is one process: one worker)."""
    if request.param == "memory":
        made: list[Broker] = [MemoryBroker()]
    else:
        factory = factory_for(request.param, request)
        made = [factory(), factory()]
    started = await start_all(made)
    yield started
    for broker, _ in started:
        await broker.close()


async def test_broker_is_connected_once_started(workers: list[Worker]) -> None:
    for broker, recorder in workers:
        assert broker.state is BrokerState.CONNECTED
        assert recorder.states[-1:] == [BrokerState.CONNECTED]


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
    await asyncio.sleep(0.2)
    assert recorder.messages.empty()


async def test_user_and_room_topics_are_distinct(workers: list[Worker]) -> None:
    broker, recorder = workers[0]
    await broker.subscribe("user:1")
    await broker.publish("room:1", b"room")
    await broker.publish("user:1", b"user")
    assert await recorder.next() == ("user:1", b"user")


async def test_user_ids_with_wildcards_and_dots_are_exact_names(workers: list[Worker]) -> None:
    """AMQP and NATS read `.`, `*`, `#`, `>` in names: a user id must never become a pattern."""
    broker, recorder = workers[0]
    await broker.subscribe("user:a.*")
    await broker.subscribe("user:é#>")
    await broker.publish("user:a.b", b"not ours")
    await broker.publish("user:a.*", b"dots")
    await broker.publish("user:é#>", b"wild")
    # Two topics: no order between them (a partition or a shard each, maybe).
    got = {await recorder.next(), await recorder.next()}
    assert got == {("user:a.*", b"dots"), ("user:é#>", b"wild")}
    await asyncio.sleep(0.2)
    assert recorder.messages.empty()


async def test_a_message_reaches_every_worker_watching_the_topic(brokers: BrokerFactory) -> None:
    (a, a_seen), (b, b_seen) = await start_all([brokers(), brokers()])
    try:
        await a.subscribe("room:7")
        await b.subscribe("room:7")
        await b.publish("room:7", b"from b")
        assert await a_seen.next() == ("room:7", b"from b")
        assert await b_seen.next() == ("room:7", b"from b")
        # Many rooms: with Redis Cluster they spread over the shards.
        rooms = [f"room:{n}" for n in range(100, 130)]
        for room in rooms:
            await a.subscribe(room)
        for room in rooms:
            await b.publish(room, room.encode())
        got = sorted([await a_seen.next() for _ in rooms])
        assert got == sorted((room, room.encode()) for room in rooms)
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("engine", ["redis", *SERVED[1:]])
async def test_broker_starts_without_its_server_and_delivers_locally(engine: str) -> None:
    """FAULTS: the broker down at start: the worker starts, keeps trying, and same-worker
    subscribers still get their messages."""
    port = free_port()  # nothing listens there
    broker = build_broker(Settings(
        broker_url=f"{SCHEMES[engine]}://127.0.0.1:{port}", broker_timeout_s=0.3,
        redis_timeout_s=0.3, broker_ping_interval_s=0.3,
    ))
    recorder = Recorder()
    await broker.start(recorder)
    try:
        await asyncio.sleep(0.5)
        assert broker.state is BrokerState.CONNECTING
        await broker.subscribe("room:1")
        await broker.publish("room:1", b"still delivered")
        assert await recorder.next() == ("room:1", b"still delivered")
        assert broker.state is BrokerState.CONNECTING
    finally:
        await broker.close()
    assert recorder.resyncs == 0
    assert recorder.messages.empty()


@pytest.fixture(params=SERVED)
def served(request: pytest.FixtureRequest) -> tuple[BrokerServer, BrokerFactory]:
    pool: BrokerPool = request.getfixturevalue("broker_pool")
    return pool.get(request.param), factory_for(request.param, request)


async def test_a_silent_broker_is_noticed_and_resynced_when_it_answers(
    served: tuple[BrokerServer, BrokerFactory],
) -> None:
    """SIGSTOP (sockets stay open, nothing answers): the probe notices within its interval plus
    timeout; after SIGCONT the worker reconnects, resubscribes and resyncs, and traffic flows."""
    server, factory = served
    ((broker, recorder),) = await start_all([factory()])
    try:
        await broker.subscribe("room:1")
        server.pause()
        try:
            async with asyncio.timeout(WAIT_S):
                while broker.state is BrokerState.CONNECTED:
                    await asyncio.sleep(0.05)
            await broker.publish("room:1", b"while silent")  # delivered locally
            assert await recorder.next() == ("room:1", b"while silent")
        finally:
            server.resume()
        await recorder.next_resync(timeout=20.0)
        assert recorder.states[-1] is BrokerState.CONNECTED
        await broker.publish("room:1", b"after")
        assert await recorder.next() == ("room:1", b"after")
    finally:
        await broker.close()
