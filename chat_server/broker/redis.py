"""The Redis broker: a channel per room and per user, one PubSub connection and reader per worker.

Redis pub/sub is at-most-once: a message published while a worker's subscriber connection is
down (or silently dead) is never seen by that worker. So every (re)connection ends with
`on_resync`, and the fan-out reads what it missed from the database, which is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chat_server.broker.base import BrokerListener, BrokerState

log = logging.getLogger(__name__)


class RedisBroker:
    """Reference counting is the caller's; this class keeps the set of topics it must watch."""

    def __init__(
        self,
        publisher: Redis,
        subscriber: Redis,
        *,
        prefix: str = "chat:",
        ping_interval_s: float = 2.0,
        command_timeout_s: float = 2.0,
        reconnect_max_s: float = 2.0,
        max_queued: int = 100_000,
        where: str = "redis",
    ) -> None:
        #: host:port (never a password), named in every log line about the connection.
        self.where = where
        self._publisher = publisher
        self._subscriber = subscriber
        self._prefix = prefix
        self._ping_interval_s = ping_interval_s
        self._timeout_s = command_timeout_s
        self._reconnect_max_s = reconnect_max_s
        self._control = f"{prefix}worker:{secrets.token_hex(8)}"
        self._topics: set[str] = set()
        self._listener: BrokerListener | None = None
        self._pubsub: PubSub | None = None
        self._state = BrokerState.CONNECTING
        self._supervisor: asyncio.Task[None] | None = None
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._last_heard = 0.0
        #: (topic, payload) waiting for the publisher task.
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._outgoing_ready = asyncio.Event()
        self._max_queued = max_queued
        self._publisher_task: asyncio.Task[None] | None = None
        self._flushing = False
        self.publish_failures = 0
        self.connections = 0

    @classmethod
    def from_url(cls, url: str, *, command_timeout_s: float = 2.0, **options: Any) -> RedisBroker:
        common: dict[str, Any] = {
            "socket_connect_timeout": command_timeout_s,
            "socket_keepalive": True,
        }
        # No retries on the publisher either: a failed batch is logged and left to the
        # database, and the next batch must not queue behind a retry loop.
        publisher = Redis.from_url(
            url, socket_timeout=command_timeout_s, retry=Retry(NoBackoff(), 0), **common
        )
        # No silent retries on the subscriber: redis-py would reconnect and resubscribe behind
        # our back, and the messages lost in between would never be re-read from the database.
        subscriber = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)
        parts = urlsplit(url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        return cls(publisher, subscriber, command_timeout_s=command_timeout_s, where=where,
                   **options)

    @property
    def state(self) -> BrokerState:
        return self._state

    def _channel(self, topic: str) -> str:
        return self._prefix + topic

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        """Returns at once: a worker that cannot reach Redis serves anyway and keeps trying."""
        self._listener = listener
        loop = asyncio.get_running_loop()
        self._supervisor = loop.create_task(self._supervise())
        self._publisher_task = loop.create_task(self._publish_forever())

    async def close(self) -> None:
        """Flush what is queued for Redis (bounded by the command timeout), then disconnect."""
        if self._publisher_task is not None:
            self._flushing = True
            self._outgoing_ready.set()
            try:
                await asyncio.wait_for(self._publisher_task, self._timeout_s + 1)
            except TimeoutError:
                log.warning("closing with %d publishes unsent", len(self._outgoing))
        self._state = BrokerState.CLOSED
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._publisher.aclose()
        await self._subscriber.aclose()
        self._listener = None

    async def _supervise(self) -> None:
        failures = 0
        # Checked as well as cancelled: redis-py can swallow a cancellation while connecting.
        while self._state is not BrokerState.CLOSED:
            connections_before = self.connections
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any way the connection can end: reconnect
                if self.connections == 0:
                    log.warning("cannot reach Redis at %s (%s); serving this worker's sockets "
                                "meanwhile, retrying", self.where, exc.__class__.__name__)
                else:
                    log.warning("redis subscriber connection to %s lost: %s; reconnecting",
                                self.where, exc.__class__.__name__)
            failures = 1 if self.connections > connections_before else failures + 1
            # Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
            ceiling = min(self._reconnect_max_s, 0.05 * 2 ** min(failures, 10))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _session(self) -> None:
        pubsub = self._subscriber.pubsub()
        self._pubsub = pubsub
        self._last_heard = 0.0
        try:
            channels = [self._control, *(self._channel(t) for t in self._topics)]
            await asyncio.wait_for(pubsub.subscribe(*channels), self._timeout_s)
            reader = asyncio.ensure_future(self._read(pubsub))
            watchdog = asyncio.ensure_future(self._watch(pubsub))
            try:
                done, _ = await asyncio.wait(
                    (reader, watchdog), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # re-raise why the session ended
            finally:
                for task in (reader, watchdog):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            self._pubsub = None
            if self._state is BrokerState.CONNECTED:
                self._state = BrokerState.CONNECTING
                if self._listener is not None:
                    self._listener.on_state(self._state)
            for waiters in self._confirmations.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(ConnectionError("redis connection lost"))
            self._confirmations.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    pubsub.aclose(),  # type: ignore[no-untyped-call,unused-ignore]
                    self._timeout_s,
                )

    async def _read(self, pubsub: PubSub) -> None:
        """Block on the socket (never poll) and hand every message to the listener."""
        async for message in pubsub.listen():
            self._last_heard = asyncio.get_running_loop().time()
            kind = message["type"]
            if kind == "message":
                self._on_message(message["channel"], message["data"])
            elif kind == "subscribe":
                self._on_subscribed(_text(message["channel"]))
        raise ConnectionError("redis subscriber has no channels left")

    async def _watch(self, pubsub: PubSub) -> None:
        """Self-ping through the subscriber connection: a dead one can otherwise stay silent."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.wait_for(pubsub.ping(), self._timeout_s)
            await asyncio.sleep(self._ping_interval_s)
            if loop.time() - self._last_heard > self._ping_interval_s + self._timeout_s:
                raise ConnectionError("redis subscriber connection is silent")

    def _on_subscribed(self, channel: str) -> None:
        if channel == self._control and self._state is BrokerState.CONNECTING:
            self._connected()
        for waiter in self._confirmations.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _connected(self) -> None:
        self._state = BrokerState.CONNECTED
        self.connections += 1
        if self._listener is not None:
            self._listener.on_state(self._state)
        log.info("redis subscriber connected to %s (connection %d)", self.where, self.connections)
        if self._listener is not None:
            # Whatever was published while we were not subscribed is in the database.
            self._listener.on_resync()

    def _on_message(self, channel: bytes | str, data: bytes | str) -> None:
        topic = _text(channel).removeprefix(self._prefix)
        payload = data if isinstance(data, bytes) else data.encode()
        if self._listener is not None and topic in self._topics:
            self._listener.on_message(topic, payload)

    # --- Broker -------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes) -> None:
        """Queue for the publisher task and return at once: a RECEIPT never waits on Redis.

        What Redis could not echo (it failed, or our subscriber was down) comes back to this
        worker's own listener directly; other workers read room messages back from the database.
        """
        if len(self._outgoing) >= self._max_queued:
            # Redis has been too slow for a long while: the oldest news goes; the database
            # still has every message, and other workers read it back on reconnection.
            self._outgoing.popleft()
            self.publish_failures += 1
        self._outgoing.append((topic, payload))
        self._outgoing_ready.set()

    def _loop_back(self, topic: str, payload: bytes) -> None:
        if self._listener is not None and topic in self._topics:
            self._listener.on_message(topic, payload)

    async def _publish_forever(self) -> None:
        """One task publishes, in order, everything queued since its last round trip in one
        pipeline: under load many messages share one round trip to Redis."""
        while True:
            await self._outgoing_ready.wait()
            await self._publish_queued()
            if self._flushing and not self._outgoing:
                return

    async def _publish_queued(self) -> None:
        batch = list(self._outgoing)
        self._outgoing.clear()
        self._outgoing_ready.clear()
        if not batch:
            return
        try:
            pipeline = self._publisher.pipeline(transaction=False)
            for topic, payload in batch:
                pipeline.publish(self._channel(topic), payload)
            await asyncio.wait_for(pipeline.execute(), self._timeout_s)
            echoed = self._state is BrokerState.CONNECTED
        except (RedisError, OSError, TimeoutError) as exc:
            self.publish_failures += len(batch)
            log.warning("redis publish of %d messages failed: %s", len(batch),
                        exc.__class__.__name__)
            echoed = False
        if not echoed:
            for topic, payload in batch:
                self._loop_back(topic, payload)

    async def subscribe(self, topic: str) -> None:
        """Returns once Redis confirmed the subscription (or the connection is down)."""
        self._topics.add(topic)
        pubsub = self._pubsub
        if pubsub is None or self._state is not BrokerState.CONNECTED:
            return  # subscribed on (re)connection, followed by a resync
        channel = self._channel(topic)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, []).append(waiter)
        try:
            await asyncio.wait_for(pubsub.subscribe(channel), self._timeout_s)
            await asyncio.wait_for(waiter, self._timeout_s)
        except (RedisError, OSError, TimeoutError, ConnectionError) as exc:
            # The watchdog will notice a dead connection; the resync that follows covers this.
            log.warning("redis subscribe to %s unconfirmed: %s", topic, exc.__class__.__name__)
        finally:
            waiters = self._confirmations.get(channel)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._confirmations[channel]

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        pubsub = self._pubsub
        if pubsub is None or self._state is not BrokerState.CONNECTED:
            return
        try:
            await asyncio.wait_for(pubsub.unsubscribe(self._channel(topic)), self._timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unsubscribe from %s failed: %s", topic, exc.__class__.__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
