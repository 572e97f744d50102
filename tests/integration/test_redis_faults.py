"""Redis's own faults under load (FAULTS.md): made silent (a half-open peer behind a pausing
proxy), and cutting the subscriber for its output buffer. Every stored message still reaches
every subscriber on both workers, once, in `seq` order, within the recovery targets. (A kill -9
and restart, and a SIGSTOPped broker, are in test_broker_faults.py, for every engine.)"""

from __future__ import annotations

import time

import aiohttp

from tests.integration.conftest import (
    ClientFactory,
    Cluster,
    ClusterFactory,
    wait_broker,
)
from tests.integration.traffic import TIMEOUT_S, Load
from tests.waiting import eventually


async def test_redis_silent_behind_a_paused_proxy(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    cluster = make_cluster(via_proxy=True, redis_ping_interval_s=0.5, reconcile_interval_s=1.0)
    assert cluster.proxy is not None
    load = await Load.start(cluster, http, clients)
    await load.more_receipts(20, "receipts before the fault")

    cluster.proxy.pause()  # every socket stays open; nothing is forwarded: a half-open Redis
    paused = time.monotonic()
    detected: dict[str, float] = {}
    for worker in cluster.workers:
        await wait_broker(http, worker, ok=False, timeout=10.0)
        detected[worker.name] = time.monotonic() - paused
    await load.more_receipts(5, "receipts while Redis is silent")
    # Cross-worker delivery carries on from the database meanwhile (reconciliation).
    during_s = await load.catch_up("subscribers caught up while Redis is silent")
    cluster.proxy.resume()
    resumed = time.monotonic()
    slowest_receipt = load.max_latency(paused, resumed)

    recovery_s = await load.catch_up("subscribers caught up after Redis answered again")
    for worker in cluster.workers:
        await wait_broker(http, worker, ok=True, timeout=15.0)
    reconnected_s = time.monotonic() - resumed
    await load.more_receipts(20, "receipts after Redis answers again")
    await load.stop_and_check("redis silent (paused proxy)", [
        "detected after " + ", ".join(f"{name} {s:.2f} s" for name, s in detected.items())
        + " (target 10 s)",
        f"caught up from the database {during_s:.2f} s into the silence",
        f"slowest receipt while silent {slowest_receipt * 1000:.0f} ms",
        f"all gaps filled {recovery_s:.2f} s after resume, brokers reconnected within "
        f"{reconnected_s:.2f} s",
    ])
    assert max(detected.values()) <= 10.0
    assert recovery_s <= 5.0


async def test_redis_cuts_the_subscriber_over_its_output_buffer(
    cluster: Cluster, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    load = await Load.start(cluster, http, clients)
    await load.more_receipts(10, "receipts before the fault")
    log_before = cluster.redis.log_path.read_text(errors="replace").count("output buffer limits")

    cluster.redis.config_set("client-output-buffer-limit", "pubsub 1 1 0")
    for sender in load.senders:
        sender.padding = 12000  # a few of these overflow Redis's 16 KiB reply buffer
    cut_s = await eventually(
        lambda: cluster.redis.log_path.read_text(errors="replace").count("output buffer limits")
        > log_before, TIMEOUT_S, "Redis cuts a subscriber for its output buffer", load.context,
    )
    for sender in load.senders:
        sender.padding = 0
    cluster.redis.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
    restored = time.monotonic()
    recovery_s = await load.catch_up("subscribers caught up after the cut")
    await load.more_receipts(20, "receipts after the cut")
    await load.stop_and_check("redis output-buffer disconnect", [
        f"subscriber cut {cut_s:.2f} s after the limit was lowered",
        f"all gaps filled {recovery_s:.2f} s after the limit was restored "
        f"({time.monotonic() - restored:.2f} s until 20 more receipts)",
    ])
