"""The RabbitMQ broker (AMQP 0-9-1, aio-pika): one topic exchange, one queue per worker.

Each worker declares an exclusive, auto-delete queue (it goes with the connection) and binds a
routing key per watched topic: `room.12`, `user.alice`. A publish goes to the exchange; RabbitMQ
routes it to the queue of every worker that bound its key, this worker's own included. Nothing is
stored in RabbitMQ (transient messages, a queue that dies with its connection): the database is
the record, and every (re)connection ends with a resync from it.

Publisher confirms are on: a batch counts as sent once RabbitMQ confirmed every message of it,
and since the publisher task sends, a RECEIPT never waits on a confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from chat_server.broker.names import word_of
from chat_server.broker.supervised import SupervisedBroker


class AmqpBroker(SupervisedBroker):
    engine = "rabbitmq"

    def __init__(self, url: str, *, exchange: str = "chat", **options: Any) -> None:
        parts = urlsplit(url)
        default_port = 5671 if parts.scheme == "amqps" else 5672
        super().__init__(where=f"{parts.hostname or 'localhost'}:{parts.port or default_port}",
                         **options)
        self._url = url
        self._exchange_name = exchange
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._consumer: asyncio.Task[None] | None = None
        #: routing key -> topic, for the keys bound on the current connection
        self._bound: dict[str, str] = {}

    async def _connect(self, topics: Sequence[str]) -> None:
        # Plain `connect`, not `connect_robust`: aio-pika's own reconnection would rebind
        # behind our back, and what was published in between would never be re-read.
        connection = await aio_pika.connect(self._url, timeout=self._timeout_s)
        self._connection = connection
        connection.close_callbacks.add(self._on_closed)
        channel = await connection.channel(publisher_confirms=True)
        self._channel = channel
        channel.close_callbacks.add(self._on_closed)
        self._exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        # Server-named, exclusive and auto-delete: one per worker, gone with its connection.
        self._queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        self._bound.clear()
        for topic in topics:
            await self._watch(topic)
        self._consumer = asyncio.ensure_future(self._consume(self._queue))

    async def _consume(self, queue: AbstractQueue) -> None:
        """Deliveries in the order RabbitMQ sends them (the iterator queues them in order)."""
        try:
            async with queue.iterator(no_ack=True) as deliveries:
                async for message in deliveries:
                    topic = self._bound.get(message.routing_key or "")
                    if topic is not None:
                        self._received(topic, message.body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connection_lost(exc)
        else:
            self._connection_lost(None)

    def _on_closed(self, _closed: object, exc: BaseException | None = None) -> None:
        self._connection_lost(exc)

    async def _disconnect(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await consumer
        connection, self._connection = self._connection, None
        self._channel = self._exchange = self._queue = None
        if connection is not None:
            connection.close_callbacks.discard(self._on_closed)
            await connection.close()

    async def _send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        exchange = self._exchange
        if exchange is None:
            raise ConnectionError("not connected to RabbitMQ")
        # Sent in order on one channel; each awaits its own confirm, all in one round trip.
        await asyncio.gather(*(
            exchange.publish(aio_pika.Message(payload), routing_key=word_of(topic),
                             mandatory=False)
            for topic, payload in batch
        ))

    async def _watch(self, topic: str) -> None:
        queue, exchange = self._queue, self._exchange
        if queue is None or exchange is None:
            raise ConnectionError("not connected to RabbitMQ")
        key = word_of(topic)
        self._bound[key] = topic
        await queue.bind(exchange, routing_key=key)

    async def _unwatch(self, topic: str) -> None:
        queue, exchange = self._queue, self._exchange
        key = word_of(topic)
        self._bound.pop(key, None)
        if queue is not None and exchange is not None:
            await queue.unbind(exchange, routing_key=key)
