"""Room state end to end over real WebSockets, one server on the in-process broker: the events
destination, SEND /app/typing and /app/read, as a client sees them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.stomp.frames import Command, Frame
from tests.conftest import SECRET, StompFactory, create_direct_room
from tests.stomp_client import StompClient

Client = TestClient[Any, Any]
TYPING_TTL_S = 0.8


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, jwt_secret=SECRET, frames_per_s=0,
                    typing_ttl_s=TYPING_TTL_S)


def events_of(room: int) -> str:
    return f"/queue/chat-rooms/{room}/events"


async def watch(client: StompClient, room: int, sub_id: str = "ev") -> dict[str, Any]:
    """SUBSCRIBE to the room's events: the snapshot, then the RECEIPT."""
    await client.subscribe(events_of(room), sub_id, receipt=f"sub-{sub_id}")
    frame, snapshot = await client.receive_message()
    assert frame.get("destination") == events_of(room)
    assert frame.get("subscription") == sub_id
    assert frame.get("content-type") == "application/json"
    assert (await client.receive()).get("receipt-id") == f"sub-{sub_id}"
    return snapshot


async def event(client: StompClient, timeout: float = 3.0) -> dict[str, Any]:
    frame, body = await client.receive_message(timeout)
    assert (frame.get("destination") or "").endswith("/events"), frame
    return body


async def typing(client: StompClient, room: int, value: Any, **headers: str) -> None:
    await client.send(Command.SEND, {"destination": "/app/typing",
                                     "content-type": "application/json", **headers},
                      json.dumps({"chatRoomId": room, "typing": value}).encode())


async def read(client: StompClient, room: int, seq: Any, **headers: str) -> None:
    await client.send(Command.SEND, {"destination": "/app/read",
                                     "content-type": "application/json", **headers},
                      json.dumps({"chatRoomId": room, "seq": seq}).encode())


async def say(client: StompClient, room: int, content: str) -> Frame:
    """SEND a message and await its RECEIPT (the sender's own copy of it may come first)."""
    await client.send_message(room, content, receipt=f"say-{content}")
    while (frame := await client.receive()).command is Command.MESSAGE:
        assert frame.get("destination") == f"/queue/chat-rooms/{room}", frame
    assert frame.get("receipt-id") == f"say-{content}", frame
    return frame


async def group(client: Client, tokens: TokenAuthority, creator: str, *members: str) -> int:
    response = await client.post(
        "/api/chat-rooms", json={"name": "team", "memberIds": list(members)},
        headers={"Authorization": f"Bearer {tokens.mint(creator)}"},
    )
    assert response.status == 201
    room_id: int = (await response.json())["id"]
    return room_id


async def rest(client: Client, tokens: TokenAuthority, user: str, method: str, path: str,
               body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    response = await client.request(method, path, json=body,
                                    headers={"Authorization": f"Bearer {tokens.mint(user)}"})
    return response.status, (await response.json() if response.status != 204 else {})


# --- the snapshot and presence --------------------------------------------------------------


async def test_events_begin_with_a_snapshot_of_the_room(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await group(client, tokens, "alice", "bob", "carol")
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}",
                                            "id": "room"})
    await say(bob, room, "hello")
    alice = await stomp("alice")
    assert await watch(alice, room) == {
        "type": "state", "roomId": room, "online": ["alice", "bob"], "typing": [],
        "reads": {"alice": 0, "bob": 1, "carol": 0},
    }


async def test_join_and_leave_follow_a_members_connections(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await watch(alice, room)
    phone = await stomp("bob")
    await phone.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}",
                                              "id": "1"})
    assert await event(alice) == {"type": "join", "roomId": room, "userId": "bob"}
    laptop = await stomp("bob")
    assert (await watch(laptop, room))["online"] == ["alice", "bob"]
    await phone.ws.close()  # no DISCONNECT: the socket just goes
    await laptop.receipted(Command.UNSUBSCRIBE, {"id": "ev"})
    assert await event(alice) == {"type": "leave", "roomId": room, "userId": "bob"}
    status, body = await rest(client, tokens, "alice", "GET",
                              f"/api/chat-rooms/{room}/presence")
    assert (status, body) == (200, {"online": ["alice"]})


async def test_events_of_someone_elses_room_are_refused(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    mallory = await stomp("mallory")
    await mallory.subscribe(events_of(room), "x", receipt="r")
    error = await mallory.expect_error()
    assert error.get("message") == "forbidden"
    for destination in (f"/queue/chat-rooms/{room}/events/", f"/queue/chat-rooms/0{room}/events",
                        f"/queue/chat-rooms/{room}/event"):
        alice = await stomp("alice")
        await alice.subscribe(destination, "x")
        assert (await alice.expect_error()).get("message") == "Unknown destination"


async def test_a_removed_member_leaves_presence_and_hears_no_more_events(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await group(client, tokens, "alice", "bob", "carol")
    carol = await stomp("carol")
    await watch(carol, room)
    alice = await stomp("alice")
    assert (await watch(alice, room))["online"] == ["alice", "carol"]
    assert await event(carol) == {"type": "join", "roomId": room, "userId": "alice"}
    status, _ = await rest(client, tokens, "alice", "DELETE",
                           f"/api/chat-rooms/{room}/members/carol")
    assert status == 204
    assert await event(alice) == {"type": "leave", "roomId": room, "userId": "carol"}
    bob = await stomp("bob")
    await watch(bob, room)
    assert await event(alice) == {"type": "join", "roomId": room, "userId": "bob"}
    await carol.expect_silence(0.3)  # her subscription ended with her membership
    await carol.subscribe(events_of(room), "again")
    assert (await carol.expect_error()).get("message") == "forbidden"
    status, _ = await rest(client, tokens, "carol", "GET", f"/api/chat-rooms/{room}/presence")
    assert status == 404


# --- typing ----------------------------------------------------------------------------------


async def test_typing_starts_stops_and_times_out(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await watch(alice, room)
    bob = await stomp("bob")
    await typing(bob, room, True, receipt="t1")
    assert (await bob.receive()).get("receipt-id") == "t1"
    typing_event = {"type": "typing", "roomId": room, "userId": "bob", "typing": True}
    assert await event(alice) == typing_event
    # `false` inside the second after the `true`: it goes when the second ends.
    await typing(bob, room, False)
    assert await event(alice) == {**typing_event, "typing": False}
    await asyncio.sleep(1.0)
    await typing(bob, room, True)
    assert await event(alice) == typing_event
    started = asyncio.get_running_loop().time()
    assert await event(alice, timeout=TYPING_TTL_S * 3) == {**typing_event, "typing": False}
    assert asyncio.get_running_loop().time() - started >= TYPING_TTL_S * 0.8


async def test_a_typing_flood_is_absorbed_without_error_or_extra_relays(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await watch(alice, room)
    bob = await stomp("bob")
    await bob.subscribe("/user/queue/errors", "errors")
    for _ in range(200):
        await typing(bob, room, True)
    await typing(bob, room, True, receipt="last")
    assert (await bob.receive()).get("receipt-id") == "last"  # no ERROR, no refusal before it
    assert (await event(alice))["typing"] is True
    await alice.expect_silence(0.5)
    metrics = await (await client.get("/metrics")).text()
    assert 'chat_typing_events_total{outcome="absorbed"} 200.0' in metrics
    assert 'chat_typing_events_total{outcome="relayed"} 1.0' in metrics


async def test_a_stored_message_ends_its_senders_typing(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await watch(alice, room)
    bob = await stomp("bob")
    await typing(bob, room, True)
    assert (await event(alice))["typing"] is True
    await say(bob, room, "done typing")
    assert await event(alice) == {"type": "typing", "roomId": room, "userId": "bob",
                                  "typing": False}


async def test_leaving_ends_typing_before_the_leave(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await watch(alice, room)
    bob = await stomp("bob")
    await watch(bob, room)
    assert (await event(alice))["type"] == "join"
    await typing(bob, room, True)
    assert (await event(alice))["typing"] is True
    await bob.ws.close()
    assert [await event(alice), await event(alice)] == [
        {"type": "typing", "roomId": room, "userId": "bob", "typing": False},
        {"type": "leave", "roomId": room, "userId": "bob"},
    ]


async def test_typing_is_for_members_and_its_body_is_checked(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    mallory = await stomp("mallory")
    await mallory.subscribe("/user/queue/errors", "errors")
    await typing(mallory, room, True, receipt="m")
    _, refusal = await mallory.receive_message()
    assert (refusal["error"]["code"], refusal["receiptId"]) == ("not_a_member", "m")
    alice = await stomp("alice")
    await alice.subscribe("/user/queue/errors", "errors")
    for value in ("yes", 1, None):
        await typing(alice, room, value)
        _, refusal = await alice.receive_message()
        assert refusal["error"]["code"] == "validation_failed"
    # Without /user/queue/errors, as for /app/message: ERROR, then the close.
    stranger = await stomp("mallory")
    await typing(stranger, room, True)
    assert (await stranger.expect_error()).get("message") == "not a member of this room"


async def test_typing_held_by_a_transaction_is_relayed_at_commit(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await watch(alice, room)
    bob = await stomp("bob")
    await bob.receipted(Command.BEGIN, {"transaction": "t"})
    await typing(bob, room, True, transaction="t", receipt="held")
    assert (await bob.receive()).get("receipt-id") == "held"
    await alice.expect_silence(0.2)
    await bob.receipted(Command.COMMIT, {"transaction": "t"})
    assert (await event(alice))["typing"] is True


# --- read markers ----------------------------------------------------------------------------


async def test_a_read_is_receipted_after_its_commit_and_reaches_events_and_other_devices(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    for n in range(3):
        await say(alice, room, f"m{n}")
    await watch(alice, room)
    laptop = await stomp("bob")
    await laptop.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                               "id": "n"})
    phone = await stomp("bob")
    await read(phone, room, 2, receipt="r")
    assert (await phone.receive()).get("receipt-id") == "r"
    # Committed before the RECEIPT: any other reader sees it now.
    status, body = await rest(client, tokens, "bob", "GET", f"/api/chat-rooms/{room}/reads")
    assert (status, body) == (200, {"reads": {"alice": 3, "bob": 2}})
    _, notice = await laptop.receive_message()
    assert notice == {"type": "read", "roomId": room, "seq": 2}
    assert await event(alice) == {"type": "read", "roomId": room, "userId": "bob", "seq": 2}
    # A lower or equal seq is accepted and changes nothing: no event, no notification.
    await read(phone, room, 1, receipt="low")
    assert (await phone.receive()).get("receipt-id") == "low"
    await alice.expect_silence(0.2)
    await laptop.expect_silence(0.1)


async def test_a_read_past_the_last_message_is_refused(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    bob = await stomp("bob")
    await say(bob, room, "one")
    await bob.subscribe("/user/queue/errors", "errors")
    await read(bob, room, 2, receipt="r")
    _, refusal = await bob.receive_message()
    assert (refusal["error"]["code"], refusal["receiptId"]) == ("invalid_seq", "r")
    for bad in (-1, "1", 1.0):
        await read(bob, room, bad)
        _, refusal = await bob.receive_message()
        assert refusal["error"]["code"] == "validation_failed"
    other = await stomp("bob")
    await read(other, room, 5)
    error = await other.expect_error()
    assert (error.get("message"), error.body) == ("seq is past the room's last message",
                                                  b"invalid_seq")


async def test_read_markers_are_monotonic_under_concurrent_sends_from_two_devices(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    total = 40
    for n in range(total):
        await alice.send_message(room, f"m{n}")
    await say(alice, room, "last")
    total += 1
    await watch(alice, room)
    phone, laptop = await stomp("bob"), await stomp("bob")
    seqs = list(range(1, total + 1))
    ups, downs = seqs[0::2], list(reversed(seqs[1::2]))

    async def device(client: StompClient, marks: list[int], name: str) -> None:
        for seq in marks:
            await read(client, room, seq)
        await read(client, room, 0, receipt=name)
        assert (await client.receive(timeout=10)).get("receipt-id") == name

    await asyncio.gather(device(phone, ups, "phone"), device(laptop, downs, "laptop"))
    status, body = await rest(client, tokens, "bob", "GET", f"/api/chat-rooms/{room}/reads")
    assert (status, body["reads"]["bob"]) == (200, total)
    moved: list[int] = []
    while not moved or moved[-1] != total:
        moved.append((await event(alice))["seq"])
    assert moved == sorted(set(moved)), moved  # forward only, never twice


def rooms_by_id(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {room["id"]: room for room in body["rooms"]}


async def test_unread_counts_follow_own_and_others_messages_and_reads(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await group(client, tokens, "alice", "bob", "carol")
    alice, bob, carol = await stomp("alice"), await stomp("bob"), await stomp("carol")
    for who, client_ in (("alice", alice), ("carol", carol), ("alice", alice), ("bob", bob),
                         ("carol", carol)):
        await say(client_, room, f"{who} {id(client_)}")
    def counts(room: dict[str, Any]) -> tuple[int, int, int]:
        return room["lastSeq"], room["lastReadSeq"], room["unreadCount"]

    listed = {}
    for user in ("alice", "bob", "carol"):
        _, body = await rest(client, tokens, user, "GET", "/api/chat-rooms")
        listed[user] = counts(rooms_by_id(body)[room])
    # alice sent 1 and 3 (marker 3): 4 (bob) and 5 (carol) are new; bob sent 4: 5 is new;
    # carol sent 5 last: nothing.
    assert listed == {"alice": (5, 3, 2), "bob": (5, 4, 1), "carol": (5, 5, 0)}
    await read(alice, room, 5, receipt="r")
    await alice.receive()
    _, body = await rest(client, tokens, "alice", "GET", f"/api/chat-rooms/{room}")
    assert counts(body) == (5, 5, 0)


async def test_metrics_count_online_users_typing_and_read_marker_writes(
    client: Client, tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await say(alice, room, "one")
    await watch(alice, room)
    bob = await stomp("bob")
    await watch(bob, room, "bob-events")
    assert (await event(alice))["type"] == "join"
    await typing(bob, room, True)
    await typing(bob, room, True)
    await read(bob, room, 1, receipt="r1")
    await read(bob, room, 1, receipt="r2")
    receipts: list[str | None] = []
    while len(receipts) < 2:  # his own typing and read events come too
        if (frame := await bob.receive()).command is Command.RECEIPT:
            receipts.append(frame.get("receipt-id"))
    assert receipts == ["r1", "r2"]
    text = await (await client.get("/metrics")).text()
    for sample in ('chat_online_users 2.0',
                   'chat_typing_events_total{outcome="relayed"} 1.0',
                   'chat_typing_events_total{outcome="absorbed"} 1.0',
                   'chat_read_marker_writes_total{outcome="moved"} 1.0',
                   'chat_read_marker_writes_total{outcome="unchanged"} 1.0'):
        assert sample in text, sample
    await bob.ws.close()
    while (await event(alice))["type"] != "leave":
        pass  # his typing, his read, the server's typing: false
    assert "chat_online_users 1.0" in await (await client.get("/metrics")).text()
