"""The Kafka broker (aiokafka): one topic keyed by room, read whole by every worker.

Every publish goes to one Kafka topic (`chat` by default, `CHAT_KAFKA_PARTITIONS` partitions,
created on first connection when it does not exist) with the chat topic (`room:12`) as its key,
so one room's messages share a partition and keep their order. Each worker reads every partition
from its tail, with no consumer group (nothing to rebalance, no offsets to commit: the database is
the record), and keeps only what its own sockets watch; subscribing is local bookkeeping.

The price: every worker reads all of the deployment's traffic. That is fine for a few workers;
with many workers and busy rooms, an engine that routes per room (RabbitMQ, NATS, Redis) sends
each worker only what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from chat_server.broker.supervised import SupervisedBroker


class KafkaBroker(SupervisedBroker):
    engine = "kafka"

    def __init__(self, url: str, *, topic: str = "chat", partitions: int = 8,
                 **options: Any) -> None:
        self._bootstrap = bootstrap_servers(url)
        super().__init__(where=self._bootstrap, **options)
        self._topic = topic
        self._partitions = partitions
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None

    def _timeout_ms(self) -> int:
        return max(100, int(self._timeout_s * 1000))

    async def _connect(self, topics: Sequence[str]) -> None:
        await self._ensure_topic()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks=1, linger_ms=0,
            request_timeout_ms=self._timeout_ms(), enable_idempotence=False,
        )
        self._producer = producer
        await producer.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", fetch_max_wait_ms=100,
            request_timeout_ms=max(self._timeout_ms(), 1000),
        )
        self._consumer = consumer
        await consumer.start()
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            raise ConnectionError(f"kafka topic {self._topic!r} has no partitions")
        assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)  # from the tail: the past is in the database
        self._reader = asyncio.ensure_future(self._read(consumer))

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap,
                                    request_timeout_ms=self._timeout_ms())
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(self._topic, num_partitions=self._partitions, replication_factor=1)]
            )
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:  # one partition's records, in order
                        if record.key is not None and record.value is not None:
                            self._received(record.key.decode(errors="replace"), record.value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connection_lost(exc)

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        clients = [c for c in (self._consumer, self._producer) if c is not None]
        self._consumer = self._producer = None
        await asyncio.gather(*(client.stop() for client in clients), return_exceptions=True)

    async def _send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        producer = self._producer
        if producer is None:
            raise ConnectionError("not connected to Kafka")
        delivered = [
            await producer.send(self._topic, payload, key=topic.encode())
            for topic, payload in batch
        ]
        await asyncio.gather(*delivered)

    async def _watch(self, topic: str) -> None:
        """Every worker reads every partition: watching is the base class's topic set."""

    async def _unwatch(self, topic: str) -> None:
        """As `_watch`: records of unwatched topics are dropped as they are read."""


def bootstrap_servers(url: str) -> str:
    """`kafka://a:9092,b:9092` -> `a:9092,b:9092` (a host alone gets port 9092)."""
    rest = url.split("://", 1)[1] if "://" in url else url
    hosts = []
    for part in rest.split(","):
        parts = urlsplit("//" + part.strip().split("/", 1)[0])
        if parts.hostname:
            hosts.append(f"{parts.hostname}:{parts.port or 9092}")
    if not hosts:
        raise ValueError("kafka://host:port[,host:port...] names no host")
    return ",".join(hosts)
