"""End to end over a real WebSocket: the chat story of the contract."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.stomp.frames import Command
from chat_server.store.engine import build_engine
from chat_server.store.schema import messages
from tests.conftest import StompFactory, create_direct_room

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def stored_rows(settings: Settings) -> list[tuple[Any, ...]]:
    """The stored messages, read with SQL over a connection of its own (not the app's), on
    either database: what a RECEIPT promised must be visible to any other reader."""
    engine = build_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(
                    messages.c.room_id,
                    messages.c.seq,
                    messages.c.sender_id,
                    messages.c.content,
                    messages.c.client_message_id,
                ).order_by(messages.c.id)
            )
            return [tuple(row) for row in rows]
    finally:
        await engine.dispose()


async def test_member_receives_what_another_member_sends(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    bob = await stomp("bob")
    await bob.subscribe(f"/queue/chat-rooms/{room}", receipt="sub")
    assert (await bob.receive()).command is Command.RECEIPT
    alice = await stomp("alice")

    await alice.send_message(room, "hi bob", client_message_id="c-1", receipt="s1")
    receipt = await alice.receive()

    frame, body = await bob.receive_message()
    assert receipt.get("receipt-id") == "s1"
    assert frame.get("destination") == f"/queue/chat-rooms/{room}"
    assert frame.get("subscription") == "0"
    assert frame.get("message-id")
    assert frame.get("content-type") == "application/json"
    assert frame.get("content-length") == str(len(frame.body))
    assert body["chatRoomId"] == room
    assert body["seq"] == 1
    assert body["senderId"] == "alice"
    assert body["content"] == "hi bob"
    assert body["clientMessageId"] == "c-1"
    assert isinstance(body["id"], int)
    assert TIMESTAMP.fullmatch(body["createdAt"])


async def test_connected_frame_names_version_session_server_and_user(
    stomp: StompFactory,
) -> None:
    alice = await stomp(None)
    frame = await alice.connect(
        TokenAuthority("test-secret-that-is-long-enough-for-hs256").mint("alice"),
        **{"accept-version": "1.0,1.1,1.2", "heart-beat": "0,0"},
    )
    assert frame.get("version") == "1.2"
    assert frame.get("session")
    assert (frame.get("server") or "").startswith("chat_server")
    assert frame.get("heart-beat") == "10000,10000"
    assert frame.get("user-name") == "alice"


async def test_sender_identity_comes_from_the_token_not_the_body(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await alice.receipted(
        Command.SEND,
        {"destination": "/app/message", "content-type": "application/json"},
        b'{"chatRoomId": %d, "content": "x", "senderId": "bob"}' % room,
    )
    assert [row[2] for row in await stored_rows(settings)] == ["alice"]


async def test_receipt_arrives_only_once_the_row_is_stored(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    for n in range(5):
        await alice.send_message(room, f"m{n}", receipt=f"r{n}")
        receipt = await alice.receive()
        assert receipt.get("receipt-id") == f"r{n}"
        # The RECEIPT promised durability: the row must be readable by another connection now.
        assert len(await stored_rows(settings)) == n + 1


async def test_non_member_is_refused_on_subscribe(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    mallory = await stomp("mallory")
    await mallory.subscribe(f"/queue/chat-rooms/{room}", receipt="x")
    error = await mallory.receive()
    assert error.command is Command.ERROR
    assert error.get("message") == "forbidden"
    assert error.get("receipt-id") == "x"
    assert await mallory.expect_close() == 1008


async def test_non_member_is_refused_on_send_and_nothing_is_stored(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    mallory = await stomp("mallory")
    await mallory.send_message(room, "let me in", receipt="x")
    error = await mallory.expect_error()
    assert error.get("receipt-id") == "x"
    assert await stored_rows(settings) == []


async def test_refusal_goes_to_user_errors_queue_when_subscribed(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    mallory = await stomp("mallory")
    await mallory.subscribe("/user/queue/errors", "errs")
    await mallory.send_message(room, "nope", receipt="x", client_message_id="m-1")
    frame, body = await mallory.receive_message()
    assert frame.get("destination") == "/user/queue/errors"
    assert body["error"]["code"] == "not_a_member"
    assert body["receiptId"] == "x"
    assert body["clientMessageId"] == "m-1"
    # The connection stays open and usable.
    await mallory.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                                 "id": "n"})
    assert await stored_rows(settings) == []


async def test_invalid_body_is_refused_without_storing(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await alice.subscribe("/user/queue/errors", "errs")
    for body in (b"not json", b"[1]", b'{"chatRoomId": "%d", "content": "x"}' % room,
                 b'{"chatRoomId": %d, "content": ""}' % room):
        await alice.send(Command.SEND, {"destination": "/app/message"}, body)
        _, answer = await alice.receive_message()
        assert answer["error"]["code"] in {"malformed_request", "validation_failed"}
    assert await stored_rows(settings) == []


async def test_retried_client_message_id_is_stored_once_and_receipted_again(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "1"})
    alice = await stomp("alice")
    for attempt in ("a", "b"):
        await alice.send_message(room, "once", client_message_id="same", receipt=attempt)
        assert (await alice.receive()).get("receipt-id") == attempt
    await alice.send_message(room, "sentinel", receipt="s")
    await alice.receive()

    _, first = await bob.receive_message()
    _, second = await bob.receive_message()
    assert (first["content"], first["seq"]) == ("once", 1)
    assert (second["content"], second["seq"]) == ("sentinel", 2)
    assert len(await stored_rows(settings)) == 2


async def test_aborted_transaction_stores_nothing_and_committed_one_stores_all(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await alice.receipted(Command.BEGIN, {"transaction": "t1"})
    await alice.send_message(room, "dropped", transaction="t1")
    await alice.receipted(Command.ABORT, {"transaction": "t1"})
    assert await stored_rows(settings) == []

    await alice.receipted(Command.BEGIN, {"transaction": "t2"})
    await alice.send_message(room, "one", transaction="t2")
    await alice.send_message(room, "two", transaction="t2")
    assert await stored_rows(settings) == []
    await alice.receipted(Command.COMMIT, {"transaction": "t2"})
    assert [row[3] for row in await stored_rows(settings)] == ["one", "two"]


async def test_transaction_left_open_at_disconnect_is_discarded(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await alice.send(Command.BEGIN, {"transaction": "t"})
    await alice.send_message(room, "never", transaction="t")
    await alice.receipted(Command.DISCONNECT, {})
    await alice.expect_close()
    assert await stored_rows(settings) == []


async def test_resume_after_replays_exactly_the_missed_messages_then_live_ones(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    for n in range(1, 8):
        await alice.send_message(room, f"m{n}", receipt=str(n))
        await alice.receive()
    bob = await stomp("bob")
    await bob.subscribe(f"/queue/chat-rooms/{room}", "r", **{"x-resume-after": "3",
                                                             "receipt": "sub"})
    replayed = [(await bob.receive_message())[1]["seq"] for _ in range(4)]
    assert (await bob.receive()).get("receipt-id") == "sub"  # the replay precedes the RECEIPT
    await alice.send_message(room, "m8", receipt="8")
    _, live = await bob.receive_message()
    assert replayed == [4, 5, 6, 7]
    assert live["seq"] == 8


async def test_subscribe_without_resume_gets_only_new_messages(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await alice.send_message(room, "old", receipt="1")
    await alice.receive()
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "r"})
    await alice.send_message(room, "new", receipt="2")
    _, body = await bob.receive_message()
    assert (body["content"], body["seq"]) == ("new", 2)


async def test_user_headers_travel_with_the_message_and_others_are_dropped(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "1"})
    alice = await stomp("alice")
    await alice.send_message(
        room, "hdrs",
        **{"x-trace": "a:b\nMESSAGE", "message-id": "forged", "subscription": "evil",
           "seq": "99", "receipt": "r"},
    )
    assert (await alice.receive()).command is Command.RECEIPT
    frame, body = await bob.receive_message()
    assert frame.get("x-trace") == "a:b\nMESSAGE"  # decoded: it was re-escaped on the way out
    assert frame.get("subscription") == "1"
    assert frame.get("message-id") != "forged"
    assert frame.get("seq") is None
    assert body["seq"] == 1


async def test_disconnect_receipt_comes_after_earlier_sends_are_stored(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
    settings: Settings,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    for n in range(3):
        await alice.send_message(room, f"m{n}")
    await alice.receipted(Command.DISCONNECT, {}, receipt="bye")
    assert len(await stored_rows(settings)) == 3
    assert await alice.expect_close() == 1000


async def test_new_room_is_announced_on_notifications(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                             "id": "n"})
    room = await create_direct_room(client, tokens, "alice", "bob")
    frame, body = await bob.receive_message()
    assert frame.get("destination") == "/user/queue/notifications"
    assert body["type"] == "room_added"
    assert body["room"]["id"] == room
    assert body["room"]["memberIds"] == ["alice", "bob"]


async def test_removed_member_stops_receiving_the_room(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    alice_auth = {"Authorization": f"Bearer {tokens.mint('alice')}"}
    response = await client.post(
        "/api/chat-rooms", json={"name": "team", "memberIds": ["bob", "carol"]},
        headers=alice_auth,
    )
    room = (await response.json())["id"]
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                             "id": "n"})
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "r"})
    removed = await client.delete(f"/api/chat-rooms/{room}/members/bob", headers=alice_auth)
    assert removed.status == 204
    _, body = await bob.receive_message()
    assert body == {"type": "room_removed", "roomId": room}

    carol = await stomp("carol")
    await carol.send_message(room, "bob is gone", receipt="c")
    assert (await carol.receive()).command is Command.RECEIPT
    # Bob's room subscription ended: the next thing he sees is his own RECEIPT, not the room.
    await bob.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/errors", "id": "e"})
