"""Redis faults under load (FAULTS.md): killed and restarted, made silent (a half-open peer behind
a pausing proxy), and cutting the subscriber for its output buffer. Every stored message still
reaches every subscriber on both workers, once, in `seq` order, within the recovery targets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

import aiohttp

from tests.integration.conftest import (
    ClientFactory,
    Cluster,
    ClusterFactory,
    Sender,
    Tally,
    create_group_room,
    wait_broker,
)
from tests.stomp_client import ChatClient
from tests.waiting import eventually

TIMEOUT_S = 20.0


def _after(moment: float) -> Callable[[], bool]:
    return lambda: time.monotonic() >= moment


class Load:
    """Two rooms; in each, two subscribers on A, two on B and two through nginx, and a sender on
    each worker (senders subscribe too). Senders run until `stop_and_check`."""

    def __init__(self, cluster: Cluster, subscribers: list[ChatClient], senders: list[Sender],
                 room_of: dict[str, int]) -> None:
        self.cluster = cluster
        self.subscribers = subscribers
        self.senders = senders
        self.room_of = room_of

    @classmethod
    async def start(cls, cluster: Cluster, http: aiohttp.ClientSession,
                    clients: ClientFactory) -> Load:
        places = {"a": cluster.a.ws_url, "b": cluster.b.ws_url, "n": cluster.nginx.ws_url}
        subscribers: list[ChatClient] = []
        room_of: dict[str, int] = {}
        for r in range(2):
            names = [f"r{r}-{place}-sub{i}" for place in places for i in range(2)]
            names += [f"r{r}-a-sender", f"r{r}-b-sender"]
            room = await create_group_room(http, cluster.a.url, names[0], names[1:], f"room {r}")
            for name in names:
                subscribers.append(clients(name, places[name.split("-")[1]]))
                room_of[name] = room
        await asyncio.gather(*(client.connect() for client in subscribers))
        await asyncio.gather(*(client.subscribe(room_of[client.user]) for client in subscribers))
        senders = [Sender(client, room_of[client.user]) for client in subscribers
                   if client.user.endswith("sender")]
        for sender in senders:
            sender.start()
        return cls(cluster, subscribers, senders, room_of)

    def receipted(self) -> int:
        return sum(len(sender.receipted) for sender in self.senders)

    async def more_receipts(self, count: int, what: str, timeout: float = TIMEOUT_S) -> float:
        target = self.receipted() + count
        return await eventually(lambda: self.receipted() >= target, timeout, what, self.context)

    def context(self) -> str:
        stuck = [f"{s.client.user}: unreceipted {s.unreceipted}, errors {s.client.errors}"
                 for s in self.senders if s.unreceipted is not None]
        behind = [f"{c.user}: last seq {c.last_seq(self.room_of[c.user])}"
                  for c in self.subscribers]
        return "\n".join([*stuck, *behind, f"stored: {self.stored_last_seqs()}",
                          self.cluster.logs()])

    def stored_last_seqs(self) -> dict[int, int]:
        return {room: max(seqs) for room, seqs in self.cluster.seqs_by_room().items()}

    def caught_up(self, target: dict[int, int]) -> bool:
        return all(client.last_seq(self.room_of[client.user]) >= target.get(
            self.room_of[client.user], 0) for client in self.subscribers)

    async def catch_up(self, what: str) -> float:
        """Seconds until every subscriber has every message stored by now."""
        target = self.stored_last_seqs()
        return await eventually(lambda: self.caught_up(target), TIMEOUT_S, what, self.context)

    def max_latency(self, since: float, until: float) -> float:
        return max((latency for sender in self.senders for sent, latency in sender.latencies
                    if since <= sent <= until), default=0.0)

    async def stop_and_check(self, label: str, extra: Sequence[str]) -> None:
        """Stop sending; every subscriber must end with exactly the stored 1..N of its room."""
        await asyncio.gather(*(sender.finish(TIMEOUT_S) for sender in self.senders))
        stuck = [s.client.user for s in self.senders if s.unreceipted is not None]
        assert not stuck, f"SENDs went unreceipted: {stuck}\n{self.context()}"
        stored = self.cluster.rows()
        receipted = [cmid for sender in self.senders for cmid in sender.receipted]
        cmids = Counter(cmid for *_, cmid in stored)
        assert set(receipted) <= set(cmids), "a receipted message is not in the database"
        assert max(cmids.values()) == 1, "a clientMessageId was stored twice"
        await self.catch_up("every subscriber has every stored message")
        by_room = self.cluster.seqs_by_room()
        tally = Tally()
        for client in self.subscribers:
            room = self.room_of[client.user]
            assert by_room[room] == list(range(1, len(by_room[room]) + 1))
            tally.add(client.user, client.seqs(room), by_room[room])
        print(f"\n{tally.summary(label)}, messages stored {len(stored)}, receipted "
              f"{len(receipted)}; " + "; ".join(extra))
        tally.assert_clean(self.context())


async def test_redis_killed_and_restarted_mid_stream(
    cluster: Cluster, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    load = await Load.start(cluster, http, clients)
    await load.more_receipts(20, "receipts before the fault")
    figures: list[str] = []
    recoveries: list[float] = []
    # Twice: a long outage (the workers' reconnect backoff grows to its cap) and a short one.
    for down_s in (2.5, 0.5):
        cluster.redis.kill()
        killed = time.monotonic()
        receipted_at_kill = load.receipted()
        # Storage does not depend on Redis: SENDs keep being receipted while it is down, and
        # both workers notice (their /readyz says so).
        await load.more_receipts(20, "receipts while Redis is down")
        for worker in cluster.workers:
            await wait_broker(http, worker, ok=False, timeout=10.0)
        # The outage lasts down_s while the load goes on (a duration, not a wait for an event).
        await eventually(_after(killed + down_s), 10.0, "outage")
        await asyncio.to_thread(cluster.redis.start)
        back = time.monotonic()
        receipted_down = load.receipted() - receipted_at_kill
        slowest_receipt = load.max_latency(killed, back)

        recovery_s = await load.catch_up("subscribers caught up after Redis came back")
        for worker in cluster.workers:
            await wait_broker(http, worker, ok=True, timeout=10.0)
        reconnected_s = time.monotonic() - back
        recoveries.append(recovery_s)
        figures.append(
            f"outage {back - killed:.2f} s: {receipted_down} receipted "
            f"while down (slowest {slowest_receipt * 1000:.0f} ms), all gaps filled "
            f"{recovery_s:.2f} s after Redis was back (target 5 s), both brokers reconnected "
            f"within {reconnected_s:.2f} s"
        )
        await load.more_receipts(20, "receipts after Redis is back")
    await load.stop_and_check("redis SIGKILL + restart x2", figures)
    assert max(recoveries) <= 5.0


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
