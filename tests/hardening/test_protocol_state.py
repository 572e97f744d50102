"""BAD_INPUTS C2 (protocol-state abuse) over a real WebSocket."""

from __future__ import annotations

import json

import pytest

from chat_server.stomp.frames import Command
from tests.hardening.conftest import Server, expect_fatal
from tests.stomp_client import connect_bytes, frame, send_body

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]


@pytest.mark.parametrize(
    "data",
    [frame("ACK", [("id", "1")]), frame("NACK", [("id", "1")]),
     frame("UNSUBSCRIBE", [("id", "1")]), frame("BEGIN", [("transaction", "t")]),
     frame("COMMIT", [("transaction", "t")]), frame("ABORT", [("transaction", "t")])],
)
async def test_p1_frames_before_connect_are_not_connected(server: Server, data: bytes) -> None:
    raw = await server.ws(None)
    await raw.send_raw(data)
    await expect_fatal(raw, "not connected", 1002)


async def test_p1_send_before_connect_stores_nothing(server: Server) -> None:
    room = await server.room("alice", "bob")
    raw = await server.ws(None)
    await raw.send_raw(frame("SEND", SEND_JSON, send_body(room, "early")))
    await expect_fatal(raw, "not connected", 1002)
    assert await server.history("alice", room) == []


@pytest.mark.parametrize(
    ("accept", "version"),
    [(None, "1.0"), ("1.0,1.1", "1.1"), ("1.0", "1.0"), ("1.1,1.2", "1.2")],
)
async def test_p3_older_clients_are_served_their_version(
    server: Server, accept: str | None, version: str
) -> None:
    """Answered differently from the row: STOMP 1.0 and 1.1 are spoken (CONTRACT.md)."""
    raw = await server.ws(None)
    headers = [("host", "h"), ("passcode", server.tokens.mint("alice"))]
    if accept is not None:
        headers.insert(0, ("accept-version", accept))
    await raw.send_raw(frame("CONNECT", headers))
    connected = await raw.receive()
    assert connected.command is Command.CONNECTED
    assert connected.get("version") == version


async def test_p3_no_common_version_is_fatal_and_lists_ours(server: Server) -> None:
    raw = await server.ws(None)
    await raw.send_raw(connect_bytes(server.tokens.mint("alice"), **{"accept-version": "2.0"}))
    error = await expect_fatal(raw, "unsupported version", 1002)
    assert error.get("version") == "1.0,1.1,1.2"


async def test_p5_stomp_frame_is_connect(server: Server) -> None:
    raw = await server.ws(None)
    await raw.send_raw(connect_bytes(server.tokens.mint("alice")).replace(b"CONNECT", b"STOMP", 1))
    assert (await raw.receive()).get("user-name") == "alice"


@pytest.mark.parametrize("value", ["abc", "1", "-1,0", "1,2,3", " 1,1", "1,1 ", "\u0661,1"])
async def test_p6_invalid_heart_beat_is_fatal(server: Server, value: str) -> None:
    raw = await server.ws(None)
    await raw.send_raw(connect_bytes(server.tokens.mint("alice"), **{"heart-beat": value}))
    await expect_fatal(raw, "invalid heart-beat", 1002)


@pytest.mark.parametrize("value", ["1,1", "0,0", "99999999999999999999,99999999999999999999"])
async def test_p7_p8_server_floor_wins_and_huge_values_are_clamped(
    server: Server, value: str
) -> None:
    raw = await server.raw()
    await raw.send_text(connect_bytes(server.tokens.mint("alice"), **{"heart-beat": value}))
    connected = (await raw.receive()).payload
    assert connected.startswith(b"CONNECTED\n") and b"heart-beat:10000,10000\n" in connected
    # A sentinel, not a sleep: had 1 ms beats been agreed, "\n" frames would come first.
    await raw.send_text(frame("SUBSCRIBE", [("id", "1"), ("destination", "/user/queue/errors"),
                                            ("receipt", "r")]))
    assert (await raw.receive()).payload.startswith(b"RECEIPT\n")


@pytest.mark.parametrize(
    ("headers", "message"),
    [([("destination", "/user/queue/errors")], "Missing id"),
     ([("id", "1")], "Missing destination"),
     ([("id", "1"), ("destination", "/user/queue/errors"), ("ack", "sometimes")],
      "unsupported ack mode")],
)
async def test_p11_p16_subscribe_header_errors(
    server: Server, headers: list[tuple[str, str]], message: str
) -> None:
    alice = await server.ws("alice")
    await alice.send_raw(frame("SUBSCRIBE", [*headers, ("receipt", "r")]))
    assert (await expect_fatal(alice, message, 1002)).get("receipt-id") == "r"


async def test_p12_duplicate_subscription_id(server: Server) -> None:
    alice = await server.ws("alice")
    await alice.subscribe("/user/queue/errors", "same")
    await alice.subscribe("/user/queue/notifications", "same")
    await expect_fatal(alice, "Duplicated subscription identifier", 1002)


async def test_p13_two_subscriptions_to_one_room_each_get_every_message_once(
    server: Server
) -> None:
    """Policy: allowed; each subscription gets each MESSAGE exactly once."""
    room = await server.room("alice", "bob")
    bob = await server.subscribed("bob", room, "a")
    await bob.subscribe(f"/queue/chat-rooms/{room}", "b", receipt="s2")
    assert (await bob.receive()).command is Command.RECEIPT
    alice = await server.ws("alice")
    await server.say(alice, room, "one")
    await server.say(alice, room, "two")
    got = [await bob.receive_message() for _ in range(4)]
    assert sorted((f.get("subscription"), b["content"]) for f, b in got) == [
        ("a", "one"), ("a", "two"), ("b", "one"), ("b", "two")]
    await server.say(alice, room, "three")  # the sentinel: nothing else was queued before it
    assert (await bob.receive_message())[1]["content"] == "three"


@pytest.mark.parametrize("twice", [False, True])
async def test_p15_unsubscribe_unknown_or_twice(server: Server, twice: bool) -> None:
    alice = await server.ws("alice")
    if twice:
        await alice.subscribe("/user/queue/errors", "1")
        await alice.send_raw(frame("UNSUBSCRIBE", [("id", "1"), ("receipt", "u")]))
        assert (await alice.receive()).get("receipt-id") == "u"
    await alice.send_raw(frame("UNSUBSCRIBE", [("id", "1")]))
    await expect_fatal(alice, "unknown subscription", 1002)
    assert len(server.services.connections.sessions) <= 1  # no corrupt registry left behind


@pytest.mark.parametrize(
    ("data", "message"),
    [(frame("ACK", [("id", "nope")]), "unknown message"),
     (frame("NACK", [("id", "nope")]), "unknown message"),
     (frame("COMMIT", [("transaction", "nope")]), "unknown transaction"),
     (frame("ABORT", [("transaction", "nope")]), "unknown transaction"),
     (frame("SEND", [*SEND_JSON, ("transaction", "nope")], b"{}"), "unknown transaction")],
)
async def test_p17_p18_unknown_acks_and_transactions(
    server: Server, data: bytes, message: str
) -> None:
    """P16/P18 answered differently: client acks and transactions are implemented."""
    alice = await server.ws("alice")
    await alice.send_raw(data)
    await expect_fatal(alice, message, 1002)


async def test_p17_ack_on_an_auto_subscription_is_unknown_message(server: Server) -> None:
    room = await server.room("alice", "bob")
    bob = await server.subscribed("bob", room)
    await server.say(await server.ws("alice"), room, "hi")
    message, _ = await bob.receive_message()
    await bob.send_raw(frame("ACK", [("id", message.get("message-id") or "")]))
    await expect_fatal(bob, "unknown message", 1002)


async def test_p19_frames_after_disconnect_are_ignored(server: Server) -> None:
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    await alice.send_raw(frame("DISCONNECT", [("receipt", "bye")])
                         + frame("SEND", SEND_JSON, send_body(room, "after")))
    assert (await alice.receive()).get("receipt-id") == "bye"
    assert await alice.expect_close() == 1000
    assert await server.history("alice", room) == []


async def test_p24_reserved_headers_from_the_client_are_overwritten_or_dropped(
    server: Server
) -> None:
    room = await server.room("alice", "bob")
    bob = await server.subscribed("bob", room, "real")
    alice = await server.ws("alice")
    forged = [("message-id", "forged"), ("subscription", "forged"), ("sender", "bob"),
              ("seq", "999"), ("ack", "forged"), ("x-ok", "kept")]
    await alice.send_raw(frame("SEND", [*SEND_JSON, *forged, ("receipt", "r")],
                               send_body(room, "hi", senderId="bob", **{"from": "bob"})))
    assert (await alice.receive()).get("receipt-id") == "r"
    message, body = await bob.receive_message()
    names = [name for name, _ in message.headers]
    assert message.get("subscription") == "real"
    assert message.get("message-id") != "forged"
    assert "sender" not in names and "seq" not in names and "ack" not in names
    assert names.count("message-id") == names.count("subscription") == 1
    assert message.get("x-ok") == "kept"
    assert body["senderId"] == "alice" and body["seq"] == 1  # A3: identity from the token
    assert [m["senderId"] for m in await server.history("bob", room)] == ["alice"]
    assert "from" not in json.dumps(body)
