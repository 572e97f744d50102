"""Broker faults under load, on every engine (FAULTS.md, the rows that name the broker): a
`kill -9` and restart (for Redis Cluster, of the node that owns the busy room's channel), and a
silent broker (SIGSTOP, then SIGCONT). SENDs are receipted throughout; every stored message
reaches every subscriber on both workers, once, in `seq` order, within the recovery targets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.integration.conftest import (
    ENGINES,
    FAST_RECOVERY,
    ClientFactory,
    Cluster,
    ClusterFactory,
    wait_broker,
)
from tests.integration.traffic import Load, after
from tests.services import RedisClusterServer
from tests.waiting import eventually

pytestmark = pytest.mark.slow


def fault_target(cluster: Cluster, load: Load) -> tuple[str, Callable[[], None],
                                                       Callable[[], None], Callable[[], None],
                                                       Callable[[], None]]:
    """What to break: (name, kill, start, pause, resume). The whole broker, but for a Redis
    Cluster the node that owns the first room's channel (a cluster's failure is one node)."""
    broker = cluster.broker
    if isinstance(broker, RedisClusterServer):
        room = min(load.room_of.values())
        index = broker.node_of(f"chat:room:{room}")
        node = broker.nodes[index]
        return (f"node {index} of 3", lambda: broker.kill_node(index),
                lambda: broker.start_node(index), node.pause, node.resume)
    return (cluster.engine, broker.kill, broker.start, broker.pause, broker.resume)


@pytest.mark.parametrize("engine", ENGINES)
async def test_broker_killed_and_restarted_mid_stream(
    engine: str, make_cluster: ClusterFactory, http: aiohttp.ClientSession,
    clients: ClientFactory,
) -> None:
    cluster = make_cluster(engine=engine, **FAST_RECOVERY)
    load = await Load.start(cluster, http, clients)
    await load.more_receipts(20, "receipts before the fault")
    what, kill, start, _, _ = fault_target(cluster, load)
    figures: list[str] = []
    recoveries: list[float] = []
    # A long outage (the workers' backoff grows to its cap) and a short one; RabbitMQ's own
    # restart takes 5-10 s, so one outage there is a long one anyway.
    outages = (2.5,) if engine == "rabbitmq" else (2.5, 0.5)
    for down_s in outages:
        kill()
        killed = time.monotonic()
        receipted_at_kill = load.receipted()
        # Storage does not depend on the broker: SENDs keep being receipted while it is down,
        # and both workers notice (their /readyz says so).
        await load.more_receipts(20, "receipts while the broker is down")
        for worker in cluster.workers:
            await wait_broker(http, worker, ok=False, timeout=10.0)
        await eventually(after(killed + down_s), 10.0, "outage")
        await asyncio.to_thread(start)
        back = time.monotonic()
        receipted_down = load.receipted() - receipted_at_kill
        slowest_receipt = load.max_latency(killed, back)

        recovery_s = await load.catch_up("subscribers caught up after the broker came back")
        for worker in cluster.workers:
            await wait_broker(http, worker, ok=True, timeout=15.0)
        reconnected_s = time.monotonic() - back
        recoveries.append(recovery_s)
        figures.append(
            f"{what} down {back - killed:.2f} s: {receipted_down} receipted while down "
            f"(slowest {slowest_receipt * 1000:.0f} ms), all gaps filled {recovery_s:.2f} s "
            f"after it was back (target 5 s), both workers reconnected within "
            f"{reconnected_s:.2f} s"
        )
        await load.more_receipts(20, "receipts after the broker is back")
    await load.stop_and_check(f"{engine}: kill -9 + restart x{len(outages)}", figures)
    assert max(recoveries) <= 5.0


@pytest.mark.parametrize("engine", ENGINES)
async def test_silent_broker_sigstop_then_sigcont(
    engine: str, make_cluster: ClusterFactory, http: aiohttp.ClientSession,
    clients: ClientFactory,
) -> None:
    cluster = make_cluster(engine=engine, **FAST_RECOVERY)
    load = await Load.start(cluster, http, clients)
    await load.more_receipts(20, "receipts before the fault")
    what, _, _, pause, resume = fault_target(cluster, load)

    pause()  # every socket stays open; nothing answers
    paused = time.monotonic()
    try:
        detected: dict[str, float] = {}
        for worker in cluster.workers:
            await wait_broker(http, worker, ok=False, timeout=10.0)
            detected[worker.name] = time.monotonic() - paused
        await load.more_receipts(5, "receipts while the broker is silent")
        # Cross-worker delivery carries on from the database meanwhile (reconciliation).
        during_s = await load.catch_up("subscribers caught up while the broker is silent")
    finally:
        resume()
    resumed = time.monotonic()
    slowest_receipt = load.max_latency(paused, resumed)

    recovery_s = await load.catch_up("subscribers caught up after the broker answered again")
    for worker in cluster.workers:
        await wait_broker(http, worker, ok=True, timeout=15.0)
    reconnected_s = time.monotonic() - resumed
    await load.more_receipts(20, "receipts after the broker answers again")
    await load.stop_and_check(f"{engine}: {what} silent (SIGSTOP/SIGCONT)", [
        "detected after " + ", ".join(f"{name} {s:.2f} s" for name, s in detected.items())
        + " (target 10 s)",
        f"caught up from the database {during_s:.2f} s into the silence",
        f"slowest receipt while silent {slowest_receipt * 1000:.0f} ms",
        f"all gaps filled {recovery_s:.2f} s after SIGCONT, workers reconnected within "
        f"{reconnected_s:.2f} s",
    ])
    assert max(detected.values()) <= 10.0
    assert recovery_s <= 5.0
