"""Load for the fault tests: senders and subscribers on both workers and through nginx, and the
check that every subscriber ends with exactly what the database stored."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

import aiohttp

from tests.integration.conftest import (
    ClientFactory,
    Cluster,
    Sender,
    Tally,
    create_group_room,
)
from tests.stomp_client import ChatClient
from tests.waiting import eventually

TIMEOUT_S = 20.0


def after(moment: float) -> Callable[[], bool]:
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

    def sent(self) -> int:
        """SENDs written: each receipted one, plus every retry of one that was not (yet)."""
        return self.receipted() + sum(sender.retries for sender in self.senders)

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
        print(f"\n{tally.summary(label)}, sent {self.sent()}, stored {len(stored)}, receipted "
              f"{len(receipted)}; " + "; ".join(extra))
        tally.assert_clean(self.context())
