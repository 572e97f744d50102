"""Room state on real Redis with two worker processes (and nginx): presence, typing and read
markers as members see them whichever worker their connections land on, and a worker killed
with SIGKILL whose users leave within CHAT_PRESENCE_TTL_S (small here)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.integration.conftest import (
    ClientFactory,
    Cluster,
    ClusterFactory,
    bearer,
    create_group_room,
)
from tests.stomp_client import ChatClient
from tests.waiting import eventually

TIMEOUT_S = 15.0
PRESENCE_TTL_S = 2.0
TYPING_TTL_S = 1.0


def room_state_cluster(make_cluster: ClusterFactory) -> Cluster:
    return make_cluster(redis_ping_interval_s=0.5, reconcile_interval_s=1.0,
                        presence_ttl_s=PRESENCE_TTL_S, typing_ttl_s=TYPING_TTL_S)


async def connected(clients: ClientFactory, user: str, url: str) -> ChatClient:
    client = clients(user, url)
    await client.connect()
    return client


def joined(room: int, user: str) -> dict[str, Any]:
    return {"type": "join", "roomId": room, "userId": user}


def left(room: int, user: str) -> dict[str, Any]:
    return {"type": "leave", "roomId": room, "userId": user}


async def get_json(http: aiohttp.ClientSession, url: str, user: str) -> Any:
    async with http.get(url, headers=bearer(user)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_presence_across_workers_snapshot_join_leave_and_a_sigkill(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    cluster = room_state_cluster(make_cluster)
    room = await create_group_room(http, cluster.a.url, "alice", ["bob", "carol", "dave"])
    # Alice's connection is on A, subscribed to the room's messages only.
    alice = await connected(clients, "alice", cluster.a.ws_url)
    await alice.subscribe(room)
    # Bob watches the events from B: his snapshot names alice, whose connection is on A.
    bob = await connected(clients, "bob", cluster.b.ws_url)
    await bob.watch(room)
    snapshot = bob.events[room][0]
    assert snapshot == {"type": "state", "roomId": room, "online": ["alice", "bob"],
                        "typing": [], "reads": {"alice": 0, "bob": 0, "carol": 0, "dave": 0}}

    def context() -> str:
        return f"bob's events: {bob.events.get(room)}\n{cluster.logs()}"

    # Carol comes and goes on A; Bob on B hears both.
    carol = await connected(clients, "carol", cluster.a.ws_url)
    await carol.watch(room)
    await eventually(lambda: joined(room, "carol") in bob.events[room], TIMEOUT_S,
                     "bob hears carol join", context)
    assert carol.events[room][0]["online"] == ["alice", "bob", "carol"]
    await carol.close()
    await eventually(lambda: left(room, "carol") in bob.events[room], TIMEOUT_S,
                     "bob hears carol leave", context)
    # Presence over REST from either worker, whichever watches the room.
    for worker in cluster.workers:
        body = await get_json(http, f"{worker.url}/api/chat-rooms/{room}/presence", "dave")
        assert body == {"online": ["alice", "bob"]}

    # Worker A dies: alice leaves for bob within the TTL, with no word from A.
    cluster.a.sigkill()
    killed = time.monotonic()
    took = await eventually(lambda: left(room, "alice") in bob.events[room], TIMEOUT_S,
                            "alice leaves after A's death", context, interval=0.02)
    assert took <= PRESENCE_TTL_S, f"alice left {took:.2f} s after the kill"
    assert time.monotonic() - killed <= PRESENCE_TTL_S + 0.1
    assert bob.of(room, "leave") == [left(room, "carol"), left(room, "alice")]
    body = await get_json(http, f"{cluster.b.url}/api/chat-rooms/{room}/presence", "dave")
    assert body == {"online": ["bob"]}


async def test_typing_across_workers_start_stop_timeout_and_a_flood(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    cluster = room_state_cluster(make_cluster)
    room = await create_group_room(http, cluster.a.url, "alice", ["bob", "carol"])
    bob = await connected(clients, "bob", cluster.b.ws_url)
    await bob.watch(room)
    carol = await connected(clients, "carol", cluster.a.ws_url)
    await carol.watch(room)
    alice = await connected(clients, "alice", cluster.a.ws_url)

    def typing_seen(client: ChatClient) -> list[bool]:
        return [event["typing"] for event in client.of(room, "typing")]

    def context() -> str:
        return f"bob: {bob.events.get(room)}\ncarol: {carol.events.get(room)}\n{cluster.logs()}"

    # A flood from alice on A: one `true` on both workers, no ERROR, a RECEIPT at the end.
    for _ in range(100):
        await alice.signal("/app/typing", {"chatRoomId": room, "typing": True})
    await alice.signal("/app/typing", {"chatRoomId": room, "typing": True}, receipted=True)
    assert alice.errors == []
    for watcher in (bob, carol):
        await eventually(lambda w=watcher: typing_seen(w) == [True], TIMEOUT_S,  # type: ignore[misc]
                         f"{watcher.user} sees alice typing", context)
    # No refresh: `false` after the typing TTL, on both workers.
    for watcher in (bob, carol):
        await eventually(lambda w=watcher: typing_seen(w) == [True, False],  # type: ignore[misc]
                         TYPING_TTL_S + TIMEOUT_S, f"{watcher.user} sees it time out", context)
    # Typing again, then her message is stored: `false` without waiting for the TTL.
    await alice.signal("/app/typing", {"chatRoomId": room, "typing": True}, receipted=True)
    await eventually(lambda: typing_seen(bob) == [True, False, True], TIMEOUT_S,
                     "bob sees alice typing again", context)
    stored_at = time.monotonic()
    await alice.send(room, "there", "alice-1")
    await eventually(lambda: typing_seen(bob) == [True, False, True, False], TIMEOUT_S,
                     "bob sees her stop when her message is stored", context)
    assert time.monotonic() - stored_at < TYPING_TTL_S
    assert bob.errors == [] and carol.errors == []


async def test_read_markers_across_workers_monotonic_from_two_devices_and_unread_counts(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    cluster = room_state_cluster(make_cluster)
    room = await create_group_room(http, cluster.a.url, "alice", ["bob", "carol"])
    alice = await connected(clients, "alice", cluster.a.ws_url)
    carol = await connected(clients, "carol", cluster.b.ws_url)
    total = 0
    for sender, client in ((alice, "a"), (carol, "c")) * 10:
        total += 1
        await sender.send(room, f"{client}{total}", f"{client}-{total}")
    await alice.watch(room)
    phone = await connected(clients, "bob", cluster.a.ws_url)
    laptop = await connected(clients, "bob", cluster.b.ws_url)
    await laptop.stomp.subscribe("/user/queue/notifications", "n")  # type: ignore[union-attr]

    def context() -> str:
        return f"alice: {alice.events.get(room)}\nlaptop: {laptop.notices}\n{cluster.logs()}"

    async def device(client: ChatClient, marks: list[int]) -> None:
        for seq in marks:
            await client.signal("/app/read", {"chatRoomId": room, "seq": seq})
        await client.signal("/app/read", {"chatRoomId": room, "seq": 0}, receipted=True)

    seqs = list(range(1, total + 1))
    await asyncio.gather(device(phone, seqs[0::2]), device(laptop, list(reversed(seqs[1::2]))))
    reads = await get_json(http, f"{cluster.b.url}/api/chat-rooms/{room}/reads", "carol")
    assert reads == {"reads": {"alice": total - 1, "bob": total, "carol": total}}
    await eventually(lambda: any(e["seq"] == total for e in alice.of(room, "read")), TIMEOUT_S,
                     "alice sees bob's marker reach the end", context)
    marks = [event["seq"] for event in alice.of(room, "read") if event["userId"] == "bob"]
    assert marks == sorted(set(marks)), marks  # forward only, each once
    await eventually(lambda: {"type": "read", "roomId": room, "seq": total} in laptop.notices,
                     TIMEOUT_S, "bob's laptop hears of the read", context)

    # Unread counts, from either worker: own messages never count, others' above the marker do.
    await alice.send(room, "one more", "a-last")
    await carol.send(room, "and mine", "c-last")
    for worker in cluster.workers:
        listed = await get_json(http, f"{worker.url}/api/chat-rooms", "bob")
        assert [(r["lastSeq"], r["lastReadSeq"], r["unreadCount"]) for r in listed["rooms"]] == [
            (total + 2, total, 2)]
        mine = await get_json(http, f"{worker.url}/api/chat-rooms", "carol")
        assert [(r["lastReadSeq"], r["unreadCount"]) for r in mine["rooms"]] == [(total + 2, 0)]


async def test_a_removed_member_disappears_from_presence_on_every_worker(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    cluster = room_state_cluster(make_cluster)
    room = await create_group_room(http, cluster.a.url, "alice", ["bob", "carol"])
    carol = await connected(clients, "carol", cluster.b.ws_url)
    await carol.watch(room)
    await carol.subscribe(room)
    alice = await connected(clients, "alice", cluster.a.ws_url)
    await alice.watch(room)
    assert alice.events[room][0]["online"] == ["alice", "carol"]

    def context() -> str:
        return f"alice: {alice.events.get(room)}\ncarol: {carol.events.get(room)}\n" + (
            cluster.logs())

    async with http.delete(f"{cluster.a.url}/api/chat-rooms/{room}/members/carol",
                           headers=bearer("alice")) as response:
        assert response.status == 204
    await eventually(lambda: left(room, "carol") in alice.events[room], TIMEOUT_S,
                     "alice sees carol leave", context)
    seen = len(carol.events[room])
    bob = await connected(clients, "bob", cluster.b.ws_url)
    await bob.watch(room)
    await eventually(lambda: joined(room, "bob") in alice.events[room], TIMEOUT_S,
                     "alice sees bob join", context)
    assert len(carol.events[room]) == seen  # carol's subscription ended with her membership
    assert bob.events[room][0]["online"] == ["alice", "bob"]
    for worker in cluster.workers:
        body = await get_json(http, f"{worker.url}/api/chat-rooms/{room}/presence", "bob")
        assert body == {"online": ["alice", "bob"]}
