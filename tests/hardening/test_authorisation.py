"""BAD_INPUTS C3: destination variants, forged senders, the subscribe/check race.

A canary (bob, subscribed to the room under attack) must receive nothing: after the attacks a
sentinel is sent, and it must be the FIRST message the canary gets.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from aiohttp import web

from chat_server.chat import ChatService
from chat_server.models import RoomId, UserId
from chat_server.stomp.frames import Command
from chat_server.web.services import Services
from tests.hardening.conftest import Server, ServerFactory, expect_fatal
from tests.stomp_client import frame, send_body

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]


def room_variants(room: int) -> list[str]:
    r = str(room)
    digits = {"0": "\u0660", "1": "\u0661", "2": "\u0662", "3": "\u0663", "4": "\u0664",
              "5": "\u0665", "6": "\u0666", "7": "\u0667", "8": "\u0668", "9": "\u0669"}
    arabic = "".join(digits[c] for c in r)
    fullwidth = "".join(chr(0xFF10 + int(c)) for c in r)
    return [
        # A4: traversal, slashes, zeros, signs, encodings, case, look-alike digits, spaces.
        f"/queue/chat-rooms/../chat-rooms/{r}", f"/queue/chat-rooms/{r}/",
        f"//queue/chat-rooms/{r}", f"/queue/chat-rooms/0{r}", f"/queue/chat-rooms/+{r}",
        f"/queue/chat-rooms/{r}%2F..", f"/queue/chat-rooms/{r}?x", f"/queue/chat-rooms/{r}\\c",
        f"/QUEUE/chat-rooms/{r}", f"/queue/chat-rooms/{arabic}", f"/queue/chat-rooms/{fullwidth}",
        f"/queue/chat-rooms/{r} ", f" /queue/chat-rooms/{r}", f"/queue/chat-rooms/{r}\u200b",
        f"/queue/chat-rooms/%3{r}", f"/queue/chat-rooms/{r}.0", f"/queue/chat-rooms/{r}e0",
        f"/queue/chat-rooms/{r}#", f"/queue/chat-rooms/{r};", f"/queue/chat-rooms/{r},{r}",
        f"/queue/./chat-rooms/{r}", f"/queue/chat-rooms//{r}", f"/queue/Chat-Rooms/{r}",
        f"/queue/chat-rooms/\t{r}", f"/queue/chat-rooms/0x{room:x}", f"/queue/chat-rooms/{r}_",
        f"/topic/chat-rooms/{r}", f"/queue/chat-room/{r}", f"/queue/chat-rooms/{r}/messages",
        f"queue/chat-rooms/{r}", f"/user/queue/chat-rooms/{r}", f"/queue/chat-rooms/{r}\u0301",
        # A5: wildcards and patterns.
        "/queue/chat-rooms/*", "/queue/chat-rooms/**", "/queue/chat-rooms/#",
        "/queue/chat-rooms/>", "/queue/chat-rooms/[1-9]", "/queue/#", "/queue/>", "/**",
        "/queue/chat-rooms/?", f"/queue/chat-rooms/{r}*", "/queue/chat-rooms/",
        # A7: integer edge cases.
        "/queue/chat-rooms/0", "/queue/chat-rooms/-1", "/queue/chat-rooms/9223372036854775808",
        "/queue/chat-rooms/" + "9" * 1000, "/queue/chat-rooms/1" + "0" * 18,
        # A10: private prefixes that name another user.
        "/user/bob/queue/errors", "/user/bob/queue/notifications", "/user/queue/errors/bob",
        "/user/queue/notifications/../../bob",
    ]


async def canary(server: Server) -> tuple[int, object]:
    room = await server.room("alice", "bob")
    return room, await server.subscribed("bob", room)


async def assert_canary_saw_nothing(server: Server, room: int, bob: object) -> None:
    alice = await server.ws("alice")
    await server.say(alice, room, "sentinel")
    _, body = await bob.receive_message()  # type: ignore[attr-defined]
    assert body["content"] == "sentinel"
    assert [m["content"] for m in await server.history("alice", room)] == ["sentinel"]


async def test_destination_variants_are_all_refused(server: Server) -> None:
    room, bob = await canary(server)
    variants = room_variants(room)
    assert len(variants) >= 40
    unexpected = []
    for destination in variants:
        for command in ("SUBSCRIBE", "SEND"):
            mallory = await server.ws("mallory")
            headers = [("id", "1"), ("destination", destination), ("receipt", "r")]
            if command == "SEND":
                headers.append(("content-type", "application/json"))
            # Header text goes out escaped, so each variant arrives as itself.
            wire_headers = [(k, v.replace("\\", "\\\\")) for k, v in headers]
            await mallory.send_raw(frame(command, wire_headers,
                                         send_body(room, "x") if command == "SEND" else b""))
            error = await mallory.receive()
            if (error.command, error.get("message")) != (Command.ERROR, "Unknown destination"):
                unexpected.append((command, destination, error))
            await mallory.expect_close()
    assert unexpected == []
    await assert_canary_saw_nothing(server, room, bob)


async def test_sends_into_a_foreign_room_and_forged_senders_are_refused(server: Server) -> None:
    """A2, A3, P24: the room comes from the body, the sender only from the token."""
    room, bob = await canary(server)
    r = room
    bodies = [
        send_body(r, "x"), send_body(r, "x", senderId="alice"),
        send_body(r, "x", **{"from": "alice"}),
        json.dumps({"chatRoomId": str(r), "content": "x"}).encode(),
        json.dumps({"chatRoomId": r + 0.0, "content": "x"}).encode(),
        json.dumps({"chatRoomId": True, "content": "x"}).encode(),
        json.dumps({"chatRoomId": [r], "content": "x"}).encode(),
        json.dumps({"chatRoomId": {"id": r}, "content": "x"}).encode(),
        json.dumps({"chatRoomId": None, "content": "x"}).encode(),
        b'{"chatRoomId": 1e400, "content": "x"}', b'{"chatRoomId": %d, "chatRoomId": 999, '
        b'"content": "x"}' % r,
        json.dumps({"chatRoomId": r, "content": "x", "senderId": "alice",
                    "sender_id": "alice", "user": "alice"}).encode(),
    ]
    for body in bodies:
        mallory = await server.ws("mallory")
        await mallory.send_raw(frame("SEND", [*SEND_JSON, ("sender", "alice"),
                                              ("user-name", "alice")], body))
        error = await mallory.receive()
        assert error.command is Command.ERROR, (body, error)
        await mallory.expect_close()
    # Forged "as alice" headers and body fields from bob: stored as bob.
    bob_sender = await server.ws("bob")
    await bob_sender.send_raw(frame("SEND", [*SEND_JSON, ("sender", "alice"), ("receipt", "r")],
                                    send_body(r, "mine", senderId="alice")))
    assert (await bob_sender.receive()).get("receipt-id") == "r"
    _, body = await bob.receive_message()  # type: ignore[attr-defined]
    assert (body["content"], body["senderId"]) == ("mine", "bob")
    await server.say(await server.ws("alice"), room, "sentinel")
    assert (await bob.receive_message())[1]["content"] == "sentinel"  # type: ignore[attr-defined]
    assert [(m["content"], m["senderId"]) for m in await server.history("bob", room)] == [
        ("mine", "bob"), ("sentinel", "alice")]


class GatedChat(ChatService):
    """The membership check waits at a gate: the test publishes while a SUBSCRIBE is in it."""

    def __init__(self, inner: Services) -> None:
        super().__init__(inner.store, inner.broker, inner.metrics, inner.fanout.deliver,
                         inner.chat.room_state)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def may_read(self, user: UserId, room_id: RoomId) -> bool:
        answer = await super().may_read(user, room_id)
        self.entered.set()
        await self.gate.wait()
        return answer


def gated(holder: list[GatedChat]) -> object:
    def compose(_app: web.Application, services: Services) -> Services:
        holder.append(GatedChat(services))
        return replace(services, chat=holder[0])

    return compose


async def test_a1_message_published_during_the_check_never_reaches_a_non_member(
    make_server: ServerFactory,
) -> None:
    holder: list[GatedChat] = []
    server = await make_server(compose=gated(holder))
    room = await server.room("alice", "bob")
    mallory = await server.ws("mallory")
    await mallory.subscribe(f"/queue/chat-rooms/{room}")
    await holder[0].entered.wait()
    await server.say(await server.ws("alice"), room, "during the check")
    holder[0].gate.set()
    # The first and only thing mallory gets is the refusal.
    await expect_fatal(mallory, "forbidden", 1008)


async def test_a1_a8_removal_during_the_check_refuses_the_subscription(
    make_server: ServerFactory,
) -> None:
    """carol passes the check, but is removed before it returns: no subscription."""
    holder: list[GatedChat] = []
    server = await make_server(compose=gated(holder))
    room = await server.room("alice", "bob", "carol")
    carol = await server.ws("carol")
    await carol.subscribe(f"/queue/chat-rooms/{room}", receipt="s")
    await holder[0].entered.wait()
    response = await server.client.delete(f"/api/chat-rooms/{room}/members/carol",
                                          headers=server.auth("alice"))
    assert response.status == 204
    holder[0].gate.set()
    await expect_fatal(carol, "forbidden", 1008)


async def test_a8_removed_member_gets_no_further_messages(server: Server) -> None:
    """A8 with the sentinel: after removal, carol's next frame is never a room MESSAGE."""
    room = await server.room("alice", "bob", "carol")
    carol = await server.subscribed("carol", room)
    await carol.subscribe("/user/queue/notifications", "n", receipt="n")
    assert (await carol.receive()).get("receipt-id") == "n"
    response = await server.client.delete(f"/api/chat-rooms/{room}/members/carol",
                                          headers=server.auth("alice"))
    assert response.status == 204
    notice = await carol.receive()
    assert json.loads(notice.body)["type"] == "room_removed"
    await server.say(await server.ws("alice"), room, "after removal")
    await carol.send_raw(frame("SUBSCRIBE", [("id", "e"), ("destination", "/user/queue/errors"),
                                             ("receipt", "sentinel")]))
    assert (await carol.receive()).get("receipt-id") == "sentinel"


async def test_p25_unsubscribe_after_removal_is_receipted_and_the_connection_goes_on(
    server: Server,
) -> None:
    """The demo page unsubscribes a room it was removed from: that must not end the session."""
    team = await server.room("alice", "bob", "carol")
    other = await server.room("alice", "carol", name="other")
    carol = await server.subscribed("carol", team, sub_id="team")
    await carol.subscribe(f"/queue/chat-rooms/{other}", "other", receipt="o")
    await carol.subscribe("/user/queue/notifications", "n", receipt="n")
    assert [(await carol.receive()).get("receipt-id") for _ in range(2)] == ["o", "n"]
    response = await server.client.delete(f"/api/chat-rooms/{team}/members/carol",
                                          headers=server.auth("alice"))
    assert response.status == 204
    assert json.loads((await carol.receive()).body)["type"] == "room_removed"
    await carol.receipted(Command.UNSUBSCRIBE, {"id": "team"}, receipt="gone")
    await server.say(await server.ws("alice"), other, "still here")
    _, body = await carol.receive_message()
    assert body["content"] == "still here"


async def test_a_send_to_a_missing_room_and_to_someone_elses_get_the_same_answer(
    server: Server,
) -> None:
    """Existence never leaks (BAD_INPUTS R2 over STOMP): the two refusals differ only in the id
    the client gave."""
    foreign = await server.room("bob", "carol")
    missing = foreign + 1000
    mallory = await server.ws("mallory")
    await mallory.subscribe("/user/queue/errors", "e", receipt="e")
    assert (await mallory.receive()).get("receipt-id") == "e"
    refusals = []
    for room in (foreign, missing):
        await mallory.send_message(room, "hello?")
        _, body = await mallory.receive_message()
        refusals.append(body["error"])
    assert [r.pop("details") for r in refusals] == [{"roomId": foreign}, {"roomId": missing}]
    assert refusals[0] == refusals[1] == {
        "code": "not_a_member", "message": "not a member of this room"}
