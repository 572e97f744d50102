"""The Redis Cluster broker: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), one connection per shard.

A channel (`chat:room:12`) lives on the shard that owns its hash slot, so rooms spread over the
cluster's primaries. redis-py's cluster client publishes (it routes `SPUBLISH` by slot and
follows MOVED) and gives the slot map; subscribing is ours: one plain connection per shard this
worker needs, each with a reader blocked on its socket, because redis-py's cluster pub/sub polls
its shards in turn and would resubscribe behind our back after a failure, hiding the gap.

Each shard connection also subscribes a probe channel of this worker that hashes to that shard:
the probe publishes a nonce to every shard and waits for all of them to come back, so one silent
node is noticed like a dead one. A reshard (Redis moves a slot and unsubscribes its channels), a
failed node or a silent one ends the whole session: reconnect to the new slot map, resubscribe,
resync from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from chat_server.broker.supervised import ConnectionLost, SupervisedBroker

#: Hash tags tried to place a probe channel on a given shard (16384 slots: a few hundred do).
_PROBE_TAG_TRIES = 100_000


@dataclass(eq=False)
class _Shard:
    """One primary's subscriber connection."""

    name: str
    client: Redis
    pubsub: PubSub
    probe_channel: str
    reader: asyncio.Task[None] | None = None
    confirmations: dict[str, list[asyncio.Future[None]]] = field(default_factory=dict)


class RedisClusterBroker(SupervisedBroker):
    engine = "redis-cluster"

    def __init__(self, url: str, *, prefix: str = "chat:", **options: Any) -> None:
        self._seeds = cluster_nodes(url)
        super().__init__(where=",".join(f"{h}:{p}" for h, p in self._seeds), **options)
        self._prefix = prefix
        parts = urlsplit(url.split(",", 1)[0])
        self._username = parts.username
        self._password = parts.password
        self._cluster: RedisCluster | None = None
        self._shards: dict[str, _Shard] = {}
        #: channel -> the shard it was subscribed on
        self._channel_shard: dict[str, _Shard] = {}
        #: channels we asked to leave: their SUNSUBSCRIBE reply is no reshard
        self._leaving: set[str] = set()
        self._opening = asyncio.Lock()
        #: every shard opened (or being opened) on the current connection
        self._opened: list[_Shard] = []

    def _channel(self, topic: str) -> str:
        return self._prefix + topic

    def _options(self) -> dict[str, Any]:
        return {
            "username": self._username,
            "password": self._password,
            "socket_connect_timeout": self._timeout_s,
            "socket_keepalive": True,
            # No retries: a failure ends the session and the resync covers what it missed.
            "retry": Retry(NoBackoff(), 0),
        }

    async def _connect(self, topics: Sequence[str]) -> None:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self._seeds],
            require_full_coverage=False,
            socket_timeout=self._timeout_s,
            **self._options(),
        )
        self._cluster = cluster
        await cluster.initialize()
        self._shards.clear()
        self._channel_shard.clear()
        self._leaving.clear()
        # Connections only to the shards this worker's topics live on.
        waits = [await self._ssubscribe(topic) for topic in topics if topic != self.control_topic]
        if not self._shards:  # nothing watched yet: one shard, so the probe has a path
            await self._shard_for(cluster.get_node_from_key(self._channel(self.control_topic)))
        await asyncio.gather(*waits)

    async def _shard_for(self, node: ClusterNode | None) -> _Shard:
        if node is None:
            raise ConnectionLost("redis cluster: a slot has no primary")
        shard = self._shards.get(node.name)
        if shard is not None:
            return shard
        # One opening at a time: two subscribes racing to a new shard would each open a
        # connection for one PubSub, and one of them would never hear its confirmation.
        async with self._opening:
            shard = self._shards.get(node.name)
            if shard is None:
                shard = await self._open_shard(node)
                self._shards[node.name] = shard
        return shard

    async def _open_shard(self, node: ClusterNode) -> _Shard:
        client = Redis(host=node.host, port=int(node.port), **self._options())
        pubsub = client.pubsub()
        shard = _Shard(node.name, client, pubsub, self._probe_channel_on(node))
        self._opened.append(shard)  # closed by _disconnect even if opening fails
        waiter = self._expect(shard, shard.probe_channel)
        await pubsub.ssubscribe(shard.probe_channel)
        shard.reader = asyncio.ensure_future(self._read(shard))
        await waiter
        return shard

    def _probe_channel_on(self, node: ClusterNode) -> str:
        """A channel of this worker whose hash slot `node` owns (a hash tag picks the slot)."""
        assert self._cluster is not None
        base = f"{self._prefix}{self.control_topic}"
        for tag in range(_PROBE_TAG_TRIES):
            channel = f"{base}:{{{tag}}}"
            if self._cluster.get_node_from_key(channel) is node:
                return channel
        raise ConnectionLost(f"redis cluster: no probe channel found for {node.name}")

    def _expect(self, shard: _Shard, channel: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.confirmations.setdefault(channel, []).append(waiter)
        return waiter

    async def _ssubscribe(self, topic: str) -> asyncio.Future[None]:
        """Sends SSUBSCRIBE on the channel's shard; the future is its confirmation."""
        assert self._cluster is not None
        channel = self._channel(topic)
        shard = await self._shard_for(self._cluster.get_node_from_key(channel))
        self._leaving.discard(channel)
        self._channel_shard[channel] = shard
        waiter = self._expect(shard, channel)
        await shard.pubsub.ssubscribe(channel)
        return waiter

    async def _read(self, shard: _Shard) -> None:
        """Block on the shard's socket (never poll) and hand every message on."""
        try:
            async for message in shard.pubsub.listen():
                kind = message["type"]
                channel = _text(message["channel"])
                if kind == "smessage":
                    data = message["data"]
                    payload = data if isinstance(data, bytes) else str(data).encode()
                    if channel == shard.probe_channel:
                        self._received(self.control_topic, payload)
                    else:
                        self._received(channel.removeprefix(self._prefix), payload)
                elif kind == "ssubscribe":
                    for waiter in shard.confirmations.pop(channel, ()):
                        if not waiter.done():
                            waiter.set_result(None)
                elif kind == "sunsubscribe":
                    if channel in self._leaving:
                        self._leaving.discard(channel)
                    else:  # Redis moved the slot elsewhere (a reshard or a failover)
                        raise ConnectionLost(f"redis cluster moved {channel} off {shard.name}")
            raise ConnectionLost(f"redis cluster shard {shard.name} has no channels left")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._connection_lost(exc)

    async def _probe(self) -> None:
        """Every shard in use must echo a nonce on its probe channel within the timeout."""
        cluster = self._cluster
        if cluster is None:
            raise ConnectionLost("not connected to the redis cluster")
        loop = asyncio.get_running_loop()
        waiters = []
        try:
            async with asyncio.timeout(self._timeout_s):
                pipeline = cluster.pipeline(transaction=False)
                for shard in self._shards.values():
                    nonce = secrets.token_bytes(8)
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._probes[nonce] = waiter
                    waiters.append((nonce, waiter))
                    pipeline.spublish(shard.probe_channel, nonce)
                await pipeline.execute()
                await asyncio.gather(*(waiter for _, waiter in waiters))
        except TimeoutError:
            raise ConnectionLost(f"a redis cluster shard is silent (no probe echo in "
                                 f"{self._timeout_s} s)") from None
        finally:
            for nonce, _ in waiters:
                self._probes.pop(nonce, None)

    async def _disconnect(self) -> None:
        shards = self._opened
        self._opened = []
        self._shards.clear()
        self._channel_shard.clear()
        for shard in shards:
            if shard.reader is not None:
                shard.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await shard.reader
            for waiters in shard.confirmations.values():
                for waiter in waiters:
                    waiter.cancel()
        for shard in shards:
            with contextlib.suppress(Exception):
                await shard.pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            with contextlib.suppress(Exception):
                await shard.client.aclose()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.aclose()

    async def _send(self, batch: Sequence[tuple[str, bytes]]) -> None:
        cluster = self._cluster
        if cluster is None:
            raise ConnectionError("not connected to the redis cluster")
        # One pipeline: redis-py sends each shard its commands, in order, in one round trip.
        pipeline = cluster.pipeline(transaction=False)
        for topic, payload in batch:
            pipeline.spublish(self._channel(topic), payload)
        await pipeline.execute()

    async def _watch(self, topic: str) -> None:
        await (await self._ssubscribe(topic))

    async def _unwatch(self, topic: str) -> None:
        channel = self._channel(topic)
        shard = self._channel_shard.pop(channel, None)
        if shard is not None:
            self._leaving.add(channel)
            await shard.pubsub.sunsubscribe(channel)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """`redis+cluster://h1:7000,h2:7001` -> [("h1", 7000), ("h2", 7001)] (port 6379 by default)."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.rsplit("@", 1)[-1]  # credentials, if any, belong to the first part
    nodes = []
    for part in rest.split(","):
        parts = urlsplit("//" + part.strip().split("/", 1)[0])
        if parts.hostname:
            nodes.append((parts.hostname, parts.port or 6379))
    if not nodes:
        raise ValueError("redis+cluster://host:port[,host:port...] names no node")
    return nodes


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
