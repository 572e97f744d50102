"""What every networked engine shares: a supervised connection, a publisher task, a self-probe.

An engine (amqp.py, nats.py, kafka.py, redis_cluster.py) says only how to connect, subscribe,
unsubscribe, send a batch and close; `SupervisedBroker` does the rest the same way for all of
them, so the contract holds by construction rather than by four careful copies:

- `start` returns at once; a supervisor task connects, subscribes every watched topic, reports
  CONNECTED, then calls `on_resync` (whatever was published while we were away is in the
  database), and reconnects with jittered exponential backoff whenever the connection ends.
- `publish` only queues; one publisher task sends everything queued since its last round trip.
  What the broker could not echo back (the send failed, or we were not connected) is handed to
  this worker's own listener directly, so same-worker subscribers never wait for the broker.
- A probe sends a nonce on this worker's own control topic every `probe_interval_s` and waits
  for it to come back through the broker: a silent (stopped, half-open) broker is noticed within
  `probe_interval_s + timeout_s` and handled like a dropped connection.

Client libraries' own reconnection is turned off where they have one: a library that reconnects
and resubscribes behind our back would hide the gap, and the fan-out would never re-read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence

from chat_server.broker.base import BrokerListener, BrokerState

log = logging.getLogger(__name__)

#: A topic of this worker alone: the probe's nonces travel on it.
CONTROL_KIND = "control"


class ConnectionLost(ConnectionError):
    """The engine's connection ended (or went silent): reconnect, resubscribe, resync."""


class SupervisedBroker(ABC):
    """A `Broker` over one logical connection; subclasses implement the `_`-methods below."""

    #: The engine's name in log lines ("rabbitmq", "nats", ...).
    engine = "broker"

    def __init__(
        self,
        *,
        where: str,
        probe_interval_s: float = 2.0,
        timeout_s: float = 2.0,
        reconnect_max_s: float = 2.0,
        max_queued: int = 100_000,
    ) -> None:
        #: host:port list (never a password), named in every log line about the connection.
        self.where = where
        self._probe_interval_s = probe_interval_s
        self._timeout_s = timeout_s
        self._reconnect_max_s = reconnect_max_s
        self._max_queued = max_queued
        self.control_topic = f"{CONTROL_KIND}:{secrets.token_hex(8)}"
        self._topics: set[str] = set()
        self._listener: BrokerListener | None = None
        self._state = BrokerState.CONNECTING
        self._supervisor: asyncio.Task[None] | None = None
        self._publisher_task: asyncio.Task[None] | None = None
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._outgoing_ready = asyncio.Event()
        self._flushing = False
        self._lost: asyncio.Future[None] | None = None
        self._probes: dict[bytes, asyncio.Future[None]] = {}
        self.publish_failures = 0
        self.connections = 0

    # --- what an engine implements -----------------------------------------------------------

    @abstractmethod
    async def _connect(self, topics: Sequence[str]) -> None:
        """Open the connection and subscribe `topics` (the control topic among them). Incoming
        payloads go to `_received`; a connection that ends calls `_connection_lost`."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Close whatever `_connect` opened; called after every session, even a failed one."""

    @abstractmethod
    async def _send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """Publish `batch` in order; raise when the broker did not take all of it."""

    @abstractmethod
    async def _watch(self, topic: str) -> None:
        """Subscribe one more topic on the open connection; return once the broker confirmed."""

    @abstractmethod
    async def _unwatch(self, topic: str) -> None:
        """Stop receiving `topic` on the open connection."""

    # --- what an engine calls ----------------------------------------------------------------

    def _received(self, topic: str, payload: bytes) -> None:
        """A payload the broker delivered on `topic`."""
        if topic == self.control_topic:
            waiter = self._probes.pop(payload, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if self._listener is not None and topic in self._topics:
            self._listener.on_message(topic, payload)

    def _connection_lost(self, reason: BaseException | None = None) -> None:
        """The engine learnt its connection ended: the supervisor reconnects."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_exception(ConnectionLost(_why(reason)))

    # --- Broker ------------------------------------------------------------------------------

    @property
    def state(self) -> BrokerState:
        return self._state

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    async def start(self, listener: BrokerListener) -> None:
        """Returns at once: a worker that cannot reach the broker serves anyway, and retries."""
        self._listener = listener
        loop = asyncio.get_running_loop()
        self._supervisor = loop.create_task(self._supervise())
        self._publisher_task = loop.create_task(self._publish_forever())

    async def close(self) -> None:
        """Flush what is queued (bounded by the timeout), then disconnect."""
        if self._publisher_task is not None:
            self._flushing = True
            self._outgoing_ready.set()
            try:
                await asyncio.wait_for(self._publisher_task, self._timeout_s + 1)
            except TimeoutError:
                log.warning("%s: closing with %d publishes unsent", self.engine,
                            len(self._outgoing))
        self._state = BrokerState.CLOSED
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._listener = None

    async def publish(self, topic: str, payload: bytes) -> None:
        """Queue for the publisher task and return at once: a RECEIPT never waits on the broker."""
        if len(self._outgoing) >= self._max_queued:
            # The broker has been too slow for a long while: the oldest news goes; the database
            # has every message, and other workers read it back on reconnection.
            self._outgoing.popleft()
            self.publish_failures += 1
        self._outgoing.append((topic, payload))
        self._outgoing_ready.set()

    async def subscribe(self, topic: str) -> None:
        """Returns once the broker confirmed (or at once while disconnected: the subscription
        is made on reconnection, and a resync follows; likewise when it is not confirmed)."""
        self._topics.add(topic)
        if self._state is not BrokerState.CONNECTED:
            return
        try:
            await asyncio.wait_for(self._watch(topic), self._timeout_s)
        except Exception as exc:
            # Unconfirmed, the topic might stay unwatched while the connection otherwise looks
            # fine: start afresh, so it is subscribed on reconnection and a resync follows.
            log.warning("%s: subscribe to %s unconfirmed (%s); reconnecting", self.engine,
                        topic, _why(exc))
            self._connection_lost(exc)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        if self._state is not BrokerState.CONNECTED:
            return
        try:
            await asyncio.wait_for(self._unwatch(topic), self._timeout_s)
        except Exception as exc:
            log.warning("%s: unsubscribe from %s failed: %s", self.engine, topic, _why(exc))

    # --- the supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while self._state is not BrokerState.CLOSED:
            connections_before = self.connections
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any way a connection can end: reconnect
                if self.connections == 0:
                    log.warning("cannot reach %s at %s (%s); serving this worker's sockets "
                                "meanwhile, retrying", self.engine, self.where, _why(exc))
                else:
                    log.warning("%s connection to %s lost (%s); reconnecting", self.engine,
                                self.where, _why(exc))
            failures = 1 if self.connections > connections_before else failures + 1
            # Exponential backoff with jitter, so a fleet does not reconnect in lockstep.
            ceiling = min(self._reconnect_max_s, 0.05 * 2 ** min(failures, 10))
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))

    async def _session(self) -> None:
        self._lost = asyncio.get_running_loop().create_future()
        try:
            watched = {self.control_topic, *self._topics}
            await asyncio.wait_for(self._connect(sorted(watched)), self._timeout_s * 2)
            # One probe before reporting CONNECTED: the path through the broker works.
            await self._probe()
            # Topics first watched while we connected: subscribe them too before reporting
            # CONNECTED (no await between the last check and the state change).
            while missing := self._topics - watched:
                for topic in missing:
                    await asyncio.wait_for(self._watch(topic), self._timeout_s)
                watched |= missing
            self._connected()
            probe = asyncio.ensure_future(self._probe_forever())
            try:
                await asyncio.wait((probe, self._lost), return_when=asyncio.FIRST_COMPLETED)
                if probe.done():
                    probe.result()
                self._lost.result()
            finally:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await probe
        finally:
            lost, self._lost = self._lost, None
            if not lost.done():
                lost.cancel()
            elif not lost.cancelled():
                lost.exception()  # retrieved: no "exception never retrieved" warning
            for waiter in self._probes.values():
                waiter.cancel()
            self._probes.clear()
            if self._state is BrokerState.CONNECTED:
                self._state = BrokerState.CONNECTING
                if self._listener is not None:
                    self._listener.on_state(self._state)
            try:
                await asyncio.wait_for(self._disconnect(), self._timeout_s)
            except Exception as exc:
                log.debug("%s: disconnect: %s", self.engine, _why(exc))

    def _connected(self) -> None:
        self._state = BrokerState.CONNECTED
        self.connections += 1
        log.info("%s connected to %s (connection %d)", self.engine, self.where, self.connections)
        if self._listener is not None:
            self._listener.on_state(self._state)
            # Whatever was published while we were not subscribed is in the database.
            self._listener.on_resync()

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            await self._probe()

    async def _probe(self) -> None:
        """A nonce on our control topic must come back through the broker within the timeout."""
        nonce = secrets.token_bytes(8)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = waiter
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send([(self.control_topic, nonce)])
                await waiter
        except TimeoutError:
            raise ConnectionLost(f"{self.engine} is silent (no probe echo in "
                                 f"{self._timeout_s} s)") from None
        finally:
            self._probes.pop(nonce, None)

    # --- the publisher -----------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        """Publishes, in order, everything queued since the last round trip, as one batch."""
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
        echoed = self._state is BrokerState.CONNECTED
        if echoed:
            try:
                await asyncio.wait_for(self._send(batch), self._timeout_s)
            except Exception as exc:
                self.publish_failures += len(batch)
                log.warning("%s: publish of %d messages failed: %s", self.engine, len(batch),
                            _why(exc))
                echoed = False
            # A connection lost meanwhile may have dropped the echo: deliver it here too (the
            # fan-out drops a duplicate by its seq).
            echoed = echoed and self._state is BrokerState.CONNECTED
        else:
            self.publish_failures += len(batch)
        if not echoed:
            for topic, payload in batch:
                self._received(topic, payload)


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "closed"
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
