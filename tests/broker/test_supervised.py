"""SupervisedBroker, the part every networked engine shares, on an engine made of memory: the
order of connect, probe, CONNECTED and resync; topics watched meanwhile; reconnection after a
lost connection or a silent probe; local loop-back while disconnected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from chat_server.broker.base import BrokerState
from chat_server.broker.supervised import ConnectionLost, SupervisedBroker
from tests.broker.test_broker_contract import Recorder

WAIT_S = 3.0


class MemoryEngine(SupervisedBroker):
    """Echoes what it is sent on watched topics; `up`, `silent` and `connect_gate` are the
    test's levers."""

    engine = "memory-engine"

    def __init__(self) -> None:
        super().__init__(where="memory", probe_interval_s=0.05, timeout_s=0.2,
                         reconnect_max_s=0.1)
        self.up = True
        self.silent = False
        self.watched: set[str] = set()
        self.connect_gate: asyncio.Event | None = None
        self.connects = 0
        self.sent: list[tuple[str, bytes]] = []
        self.refuse_watch = False

    async def _connect(self, topics: Sequence[str]) -> None:
        self.connects += 1
        if not self.up:
            raise ConnectionRefusedError("down")
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        self.watched = set(topics)

    async def _disconnect(self) -> None:
        self.watched = set()

    async def _send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        if not self.up:
            raise ConnectionError("down")
        for topic, payload in batch:
            if topic != self.control_topic:
                self.sent.append((topic, payload))
            if not self.silent and topic in self.watched:
                asyncio.get_running_loop().call_soon(self._received, topic, payload)

    async def _watch(self, topic: str) -> None:
        if self.refuse_watch:
            raise ConnectionError("not confirmed")
        self.watched.add(topic)

    async def _unwatch(self, topic: str) -> None:
        self.watched.discard(topic)

    def drop(self) -> None:
        self._connection_lost(ConnectionLost("dropped by the test"))


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {WAIT_S} s: {what}") from None


async def test_connected_only_after_the_first_probe_then_resync() -> None:
    engine, seen = MemoryEngine(), Recorder()
    await engine.start(seen)
    try:
        await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
        assert seen.states == [BrokerState.CONNECTED]
        assert engine.control_topic in engine.watched
    finally:
        await engine.close()
    assert engine.state is BrokerState.CLOSED


async def test_a_topic_watched_while_connecting_is_subscribed_before_connected() -> None:
    engine, seen = MemoryEngine(), Recorder()
    engine.connect_gate = asyncio.Event()
    await engine.start(seen)
    try:
        await until(lambda: engine.connects == 1, "connecting")
        await engine.subscribe("room:1")  # CONNECTING: only remembered
        engine.connect_gate.set()
        await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
        assert "room:1" in engine.watched
        await engine.publish("room:1", b"x")
        assert await seen.next() == ("room:1", b"x")
    finally:
        await engine.close()


async def test_a_lost_connection_reconnects_resubscribes_and_resyncs() -> None:
    engine, seen = MemoryEngine(), Recorder()
    await engine.start(seen)
    try:
        await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
        await engine.subscribe("room:1")
        engine.drop()
        await seen.next_resync()
        assert seen.resyncs == 2 and engine.connections == 2
        assert seen.states == [BrokerState.CONNECTED, BrokerState.CONNECTING,
                               BrokerState.CONNECTED]
        assert "room:1" in engine.watched
    finally:
        await engine.close()


async def test_a_silent_broker_fails_the_probe_and_is_reconnected() -> None:
    engine, seen = MemoryEngine(), Recorder()
    await engine.start(seen)
    try:
        await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
        engine.silent = True
        await until(lambda: engine.state is BrokerState.CONNECTING, "silence noticed")
        engine.silent = False
        await seen.next_resync()
        assert engine.state is BrokerState.CONNECTED
    finally:
        await engine.close()


async def test_while_down_publishes_come_back_locally_once_and_reconnection_is_retried() -> None:
    engine, seen = MemoryEngine(), Recorder()
    engine.up = False
    await engine.start(seen)
    try:
        await engine.subscribe("room:1")
        await engine.publish("room:1", b"local")
        assert await seen.next() == ("room:1", b"local")
        await until(lambda: engine.connects >= 3, "retries with backoff")
        assert engine.state is BrokerState.CONNECTING and engine.publish_failures == 1
        engine.up = True
        await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
        await engine.publish("room:1", b"through the broker")
        assert await seen.next() == ("room:1", b"through the broker")
        assert seen.messages.empty()
    finally:
        await engine.close()


async def test_close_flushes_what_is_queued() -> None:
    engine, seen = MemoryEngine(), Recorder()
    await engine.start(seen)
    await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
    for n in range(5):
        await engine.publish("room:2", b"%d" % n)
    await engine.close()
    assert engine.sent == [("room:2", b"%d" % n) for n in range(5)]


async def test_an_unconfirmed_subscribe_reconnects_so_the_topic_is_watched_after_all() -> None:
    engine, seen = MemoryEngine(), Recorder()
    await engine.start(seen)
    try:
        await asyncio.wait_for(seen.resynced.wait(), WAIT_S)
        engine.refuse_watch = True
        await engine.subscribe("room:3")  # returns; the session is started afresh
        engine.refuse_watch = False
        await seen.next_resync()
        assert "room:3" in engine.watched
    finally:
        await engine.close()
