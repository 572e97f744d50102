"""Redis Cluster specifics on a private three-node cluster: a reshard that moves a watched
room's slot is handled like a dropped connection (resubscribe on the new owner, resync)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_server.broker.base import BrokerState
from chat_server.broker.redis_cluster import RedisClusterBroker
from tests.broker.test_broker_contract import start_all
from tests.services import RedisClusterServer, start_broker


@pytest.fixture
def private_cluster() -> Iterator[RedisClusterServer]:
    with tempfile.TemporaryDirectory(prefix="chat-test-cluster-") as root, \
            contextlib.ExitStack() as teardown:
        server = start_broker("redis-cluster", Path(root), teardown)
        assert isinstance(server, RedisClusterServer)
        yield server


async def test_a_resharded_room_is_resubscribed_on_its_new_shard_and_resynced(
    private_cluster: RedisClusterServer,
) -> None:
    broker = RedisClusterBroker(private_cluster.url, probe_interval_s=0.3, timeout_s=1.0)
    ((_, seen),) = await start_all([broker])
    try:
        await broker.subscribe("room:1")
        slot = private_cluster.slot_of("chat:room:1")
        owner = private_cluster.node_of_slot(slot)
        await asyncio.to_thread(private_cluster.move_slot, slot, (owner + 1) % 3)
        await seen.next_resync(timeout=10.0)  # Redis unsubscribed us: reconnected, resynced
        assert broker.state is BrokerState.CONNECTED
        assert private_cluster.node_of("chat:room:1") == (owner + 1) % 3
        await broker.publish("room:1", b"after the reshard")
        assert await seen.next() == ("room:1", b"after the reshard")
    finally:
        await broker.close()
