"""SENDs that arrive together are stored together (one group commit), and still answered one
by one, in order, each only after its own commit; a failure stops those queued behind it."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.stomp.frames import Command, Frame, Version, encode
from chat_server.web.app import create_app
from chat_server.web.services import SERVICES
from tests.conftest import AiohttpClient, StompFactory, create_direct_room
from tests.e2e.test_chat import stored_rows
from tests.stomp_client import StompClient


def send(room: int, content: str, receipt: str, **extra: str) -> bytes:
    body = json.dumps({"chatRoomId": room, "content": content}).encode()
    headers = {"destination": "/app/message", "content-type": "application/json",
               "receipt": receipt, **extra}
    return encode(Frame(Command.SEND, tuple(headers.items()), body), Version.V1_2)


def other(command: Command, **headers: str) -> bytes:
    return encode(Frame(command, tuple(headers.items())), Version.V1_2)


async def receipts(stomp: StompClient, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        frame = await stomp.receive()
        assert frame.command is Command.RECEIPT, frame
        ids.append(frame.get("receipt-id") or "")
    return ids


def contents(rows: list[tuple[Any, ...]]) -> list[str]:
    return [str(row[3]) for row in rows]


async def test_a_burst_is_receipted_in_order_and_shares_commits(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory, settings: Settings
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    bob = await stomp("bob")
    await bob.subscribe(f"/queue/chat-rooms/{room}", receipt="sub")
    assert (await bob.receive()).command is Command.RECEIPT
    alice = await stomp("alice")
    burst = 20
    await alice.send_raw(b"".join(send(room, f"m{n}", f"r{n}") for n in range(burst)))
    assert await receipts(alice, burst) == [f"r{n}" for n in range(burst)]
    for n in range(burst):
        _, body = await bob.receive_message()
        assert (body["seq"], body["content"]) == (n + 1, f"m{n}")
    assert contents(await stored_rows(settings)) == [f"m{n}" for n in range(burst)]
    metrics = client.app[SERVICES].metrics
    assert metrics.value("chat_append_batch_size_sum") == burst
    assert metrics.value("chat_append_batch_size_count") < burst  # some shared a commit


async def test_a_refused_send_stops_those_queued_behind_it(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory, settings: Settings
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    elsewhere = await create_direct_room(client, tokens, "bob", "carol")
    alice = await stomp("alice")
    await alice.send_raw(
        send(room, "one", "r1") + send(room, "two", "r2") + send(elsewhere, "no", "r3")
        + send(room, "after", "r4") + send(room, "also after", "r5")
    )
    assert await receipts(alice, 2) == ["r1", "r2"]
    error = await alice.receive()
    assert error.command is Command.ERROR
    assert error.get("receipt-id") == "r3"
    assert await alice.expect_close() == 1008
    # Stored exactly as if each SEND had waited for the one before: nothing behind the refusal.
    assert contents(await stored_rows(settings)) == ["one", "two"]


async def test_an_invalid_send_is_answered_after_the_ones_before_it(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory, settings: Settings
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    broken = send(room, "x", "bad").replace(b'"content": "x"', b'"content": 7')
    await alice.send_raw(send(room, "one", "r1") + send(room, "two", "r2") + broken
                         + send(room, "never", "r4"))
    assert await receipts(alice, 2) == ["r1", "r2"]
    error = await alice.receive()
    assert error.command is Command.ERROR and error.get("receipt-id") == "bad"
    assert contents(await stored_rows(settings)) == ["one", "two"]


async def test_with_an_errors_queue_a_refusal_does_not_stop_the_rest(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory, settings: Settings
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    elsewhere = await create_direct_room(client, tokens, "bob", "carol")
    alice = await stomp("alice")
    await alice.subscribe("/user/queue/errors", "errors", receipt="e")
    assert (await alice.receive()).command is Command.RECEIPT
    await alice.send_raw(send(room, "one", "r1") + send(elsewhere, "no", "r2")
                         + send(room, "two", "r3"))
    assert await receipts(alice, 1) == ["r1"]
    _, refusal = await alice.receive_message()
    assert refusal["receiptId"] == "r2"
    assert refusal["error"]["code"] == "not_a_member"
    assert await receipts(alice, 1) == ["r3"]
    assert contents(await stored_rows(settings)) == ["one", "two"]


async def test_other_frames_are_answered_after_the_sends_before_them(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = await stomp("alice")
    await alice.send_raw(
        send(room, "one", "r1") + send(room, "two", "r2")
        + other(Command.SUBSCRIBE, id="0", destination=f"/queue/chat-rooms/{room}", receipt="sub")
        + send(room, "three", "r3") + other(Command.DISCONNECT, receipt="bye")
    )
    assert await receipts(alice, 3) == ["r1", "r2", "sub"]
    _, body = await alice.receive_message()  # sent after the SUBSCRIBE: delivered, then receipted
    assert body["content"] == "three"
    assert await receipts(alice, 2) == ["r3", "bye"]


async def test_the_pipeline_limit_pauses_reading_and_loses_nothing(
    aiohttp_client: AiohttpClient, tokens: TokenAuthority, settings: Settings
) -> None:
    narrow = replace(settings, max_pipelined_sends=2)
    client = await aiohttp_client(create_app(narrow))
    room = await create_direct_room(client, tokens, "alice", "bob")
    alice = StompClient(await client.ws_connect("/ws", protocols=("v12.stomp",)))
    await alice.connect(tokens.mint("alice"))
    await alice.send_raw(b"".join(send(room, f"m{n}", f"r{n}") for n in range(9)))
    assert await receipts(alice, 9) == [f"r{n}" for n in range(9)]
    assert contents(await stored_rows(narrow)) == [f"m{n}" for n in range(9)]
    await alice.ws.close()

