"""The NATS broker (core subjects, nats-py): a subject per room and per user.

`chat.room.12`, `chat.user.alice`: a worker subscribes the subject of each topic it watches and
NATS hands every publish to every subscriber, the publishing connection included (echo is on).
Core NATS is at-most-once, like Redis pub/sub: what a worker misses while disconnected, or drops
as a slow consumer, it reads back from the database after the resync that follows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from chat_server.broker.names import word_of
from chat_server.broker.supervised import SupervisedBroker


class NatsBroker(SupervisedBroker):
    engine = "nats"

    def __init__(self, url: str, *, namespace: str = "chat", **options: Any) -> None:
        self._servers = [server.strip() for server in url.split(",") if server.strip()]
        super().__init__(where=",".join(_where(server) for server in self._servers), **options)
        self._namespace = namespace
        self._client: Client | None = None
        self._subscriptions: dict[str, Subscription] = {}

    @property
    def _flush_timeout_s(self) -> int:
        return max(1, math.ceil(self._timeout_s))  # nats-py takes whole seconds

    def _subject(self, topic: str) -> str:
        return f"{self._namespace}.{word_of(topic)}"

    async def _connect(self, topics: Sequence[str]) -> None:
        # No reconnection inside nats-py: it would resubscribe behind our back, and what was
        # published in between would never be re-read from the database.
        self._client = await nats.connect(
            self._servers,
            allow_reconnect=False,
            connect_timeout=max(1, round(self._timeout_s)),
            ping_interval=max(1, round(self._probe_interval_s)),
            max_outstanding_pings=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            closed_cb=self._on_disconnected,
        )
        self._subscriptions.clear()
        for topic in topics:
            await self._subscribe(topic)
        await self._client.flush(self._flush_timeout_s)

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SlowConsumerError):
            # NATS dropped messages for us: a gap the resync after reconnecting fills.
            self._connection_lost(exc)

    async def _on_disconnected(self) -> None:
        self._connection_lost(ConnectionError("nats connection closed"))

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._subscriptions.clear()
        if client is not None and not client.is_closed:
            await client.close()

    async def _send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        client = self._client
        if client is None or not client.is_connected:
            raise ConnectionError("not connected to NATS")
        for topic, payload in batch:
            await client.publish(self._subject(topic), payload)
        # One PING/PONG for the batch: it is out of our buffers and NATS took it.
        await client.flush(self._flush_timeout_s)

    async def _subscribe(self, topic: str) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected to NATS")

        async def deliver(message: Msg) -> None:
            self._received(topic, message.data)

        # nats-py awaits one subscription's callbacks one after another: order is kept.
        self._subscriptions[topic] = await client.subscribe(self._subject(topic), cb=deliver)

    async def _watch(self, topic: str) -> None:
        if topic in self._subscriptions:
            return
        await self._subscribe(topic)
        assert self._client is not None
        await self._client.flush(self._flush_timeout_s)  # NATS has the SUB once its PONG is back

    async def _unwatch(self, topic: str) -> None:
        subscription = self._subscriptions.pop(topic, None)
        if subscription is not None:
            await subscription.unsubscribe()


def _where(server: str) -> str:
    parts = urlsplit(server if "://" in server else f"nats://{server}")
    return f"{parts.hostname or 'localhost'}:{parts.port or 4222}"

