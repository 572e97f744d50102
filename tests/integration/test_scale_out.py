"""Scale-out: a message sent through any worker reaches every subscriber on every worker, once,
in `seq` order, with nginx round-robin in front (issue 4, "Tests that must exist"); on every
broker engine, each a server of the session shared by these tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from functools import partial

import aiohttp
import pytest

from tests.integration.conftest import (
    ENGINES,
    FAST_RECOVERY,
    ClientFactory,
    Cluster,
    ClusterFactory,
    Tally,
    create_group_room,
    has,
)
from tests.stomp_client import ChatClient

TIMEOUT_S = 20.0


@pytest.fixture(params=ENGINES)
def cluster(request: pytest.FixtureRequest, make_cluster: ClusterFactory) -> Cluster:
    """Two workers and nginx on the engine of the parameter (the session's server for it)."""
    return make_cluster(engine=request.param, shared=True, **FAST_RECOVERY)


def check_bodies(client: ChatClient, room: int, rows: dict[int, tuple[int, str, str | None]],
                 ) -> list[str]:
    """Each received body is the stored message of its seq: same id, sender, clientMessageId."""
    problems = []
    for body in client.messages.get(room, []):
        stored = rows.get(body["seq"])
        if stored != (body["id"], body["senderId"], body.get("clientMessageId")):
            problems.append(f"{client.user} got {body}, stored {stored}")
    return problems


async def test_through_nginx_to_a_and_direct_to_b_both_directions(
    cluster: Cluster, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    per_direction = 20
    nginx_a = cluster.nginx_in_front_of(cluster.a)  # deterministic: this nginx only knows A
    room = await create_group_room(http, nginx_a.url, "xavier", ["yolanda"])
    xavier = clients("xavier", nginx_a.ws_url)
    yolanda = clients("yolanda", cluster.b.ws_url)
    await asyncio.gather(xavier.connect(), yolanda.connect())
    await asyncio.gather(xavier.subscribe(room), yolanda.subscribe(room))

    for i in range(per_direction):
        await xavier.send(room, f"from A #{i}", f"x-{i}")
    await yolanda.wait_until(lambda: len(yolanda.seqs(room)) >= per_direction, TIMEOUT_S)
    for i in range(per_direction):
        await yolanda.send(room, f"from B #{i}", f"y-{i}")
    total = 2 * per_direction
    for client in (xavier, yolanda):
        await client.wait_until(partial(has, client, room, total), TIMEOUT_S)

    stored = cluster.rows()
    assert len(stored) == total
    rows = {seq: (msg_id, sender, cmid) for _room, seq, msg_id, sender, cmid in stored}
    tally = Tally()
    for client in (xavier, yolanda):
        tally.add(client.user, client.seqs(room), list(range(1, total + 1)))
        assert check_bodies(client, room, rows) == []
    # B's client got A's messages first, then its own; and A's client B's after its own.
    assert [b["senderId"] for b in yolanda.messages[room]] == (
        ["xavier"] * per_direction + ["yolanda"] * per_direction
    )
    print(f"\n{tally.summary(f'{cluster.engine}: nginx->A / direct->B, both directions')}")
    tally.assert_clean(cluster.logs())


async def test_many_clients_across_two_workers_and_nginx_exactly_once_in_order(
    cluster: Cluster, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    n_clients, n_rooms, per_client = 60, 5, 10
    users = [f"user{i:02d}" for i in range(n_clients)]
    members: dict[int, list[str]] = {r: users[r::n_rooms] for r in range(n_rooms)}
    room_ids = {
        r: await create_group_room(http, cluster.nginx.url, group[0], group[1:], f"room {r}")
        for r, group in members.items()
    }
    # A third through nginx (round robin over both workers), a third direct to each worker.
    urls = [cluster.nginx.ws_url, cluster.a.ws_url, cluster.b.ws_url]
    chat = [clients(user, urls[i % 3]) for i, user in enumerate(users)]
    room_of = {client.user: room_ids[i % n_rooms] for i, client in enumerate(chat)}
    await asyncio.gather(*(client.connect() for client in chat))
    await asyncio.gather(*(client.subscribe(room_of[client.user]) for client in chat))

    async def post(client: ChatClient) -> None:
        for k in range(per_client):
            await client.send(room_of[client.user], f"{client.user} says {k}",
                              f"{client.user}-{k}", timeout=TIMEOUT_S)

    started = time.monotonic()
    await asyncio.gather(*(post(client) for client in chat))
    sent_s = time.monotonic() - started
    per_room = Counter(room_of.values())
    expected = {room: count * per_client for room, count in per_room.items()}

    async def complete(client: ChatClient) -> None:
        room = room_of[client.user]
        with contextlib.suppress(TimeoutError):  # counted as lost below
            await client.wait_until(lambda: len(client.seqs(room)) >= expected[room], TIMEOUT_S)

    await asyncio.gather(*(complete(client) for client in chat))
    delivered_s = time.monotonic() - started

    stored = cluster.rows()
    cmids = Counter(cmid for *_, cmid in stored)
    assert len(stored) == n_clients * per_client
    assert all(count == 1 for count in cmids.values()) and len(cmids) == len(stored)
    rows = {
        room: {seq: (msg_id, sender, cmid) for r, seq, msg_id, sender, cmid in stored if r == room}
        for room in room_ids.values()
    }
    tally = Tally()
    for client in chat:
        room = room_of[client.user]
        tally.add(client.user, client.seqs(room), list(range(1, expected[room] + 1)))
        assert check_bodies(client, room, rows[room]) == []
    # Every client saw its own messages come back, like everyone else's.
    for client in chat:
        own = [b["clientMessageId"] for b in client.messages[room_of[client.user]]
               if b["senderId"] == client.user]
        assert own == [f"{client.user}-{k}" for k in range(per_client)]
    print(
        f"\n[scale-out, {cluster.engine}] clients {n_clients} (20 via nginx, 20 on A, 20 on B), "
        f"rooms {n_rooms}, "
        f"messages sent {len(stored)} (all receipted in {sent_s:.2f} s), delivered "
        f"{tally.delivered} of {tally.expected} expected (all in {delivered_s:.2f} s), "
        f"lost {tally.lost}, duplicated {tally.duplicated}, out of order {tally.out_of_order}"
    )
    tally.assert_clean(cluster.logs())
