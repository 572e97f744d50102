"""Interop: the server driven by a third-party client library (stomp.py over WebSocket)."""

from __future__ import annotations

import asyncio
import json
import queue
from typing import Any

import stomp
from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from chat_server.stomp.frames import Command
from tests.conftest import StompFactory, create_direct_room

WAIT_S = 5.0


class Inbox(stomp.ConnectionListener):  # type: ignore[misc]
    """Collects what stomp.py's receiver thread hands us."""

    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()

    def on_message(self, frame: Any) -> None:
        self.frames.put(("MESSAGE", frame))

    def on_receipt(self, frame: Any) -> None:
        self.frames.put(("RECEIPT", frame))

    def on_error(self, frame: Any) -> None:
        self.frames.put(("ERROR", frame))

    def next(self) -> tuple[str, Any]:
        item: tuple[str, Any] = self.frames.get(timeout=WAIT_S)
        return item


def open_stomp_py(port: int, token: str) -> tuple[Any, Inbox]:
    connection = stomp.WSStompConnection([("127.0.0.1", port)], ws_path="/ws",
                                         reconnect_attempts_max=1)
    inbox = Inbox()
    connection.set_listener("inbox", inbox)
    connection.connect(passcode=token, wait=True)
    return connection, inbox


async def test_stomp_py_client_receives_and_sends_room_messages(
    client: TestClient[Any, Any], tokens: TokenAuthority, stomp: StompFactory,
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    port = client.server.port
    assert port is not None
    bob, inbox = await asyncio.to_thread(open_stomp_py, port, tokens.mint("bob"))
    try:
        await asyncio.to_thread(
            bob.subscribe, destination=f"/queue/chat-rooms/{room}", id="s1", ack="auto",
            headers={"receipt": "sub"},
        )
        kind, frame = await asyncio.to_thread(inbox.next)
        assert (kind, frame.headers["receipt-id"]) == ("RECEIPT", "sub")

        alice = await stomp("alice")
        await alice.send_message(room, "héllo from aiohttp", receipt="a")
        assert (await alice.receive()).command is Command.RECEIPT
        kind, frame = await asyncio.to_thread(inbox.next)
        assert kind == "MESSAGE"
        body = json.loads(frame.body)
        assert (body["senderId"], body["content"], body["seq"]) == (
            "alice", "héllo from aiohttp", 1)
        assert frame.headers["subscription"] == "s1"

        await alice.receipted(Command.SUBSCRIBE,
                              {"destination": f"/queue/chat-rooms/{room}", "id": "a1"})
        await asyncio.to_thread(
            bob.send, "/app/message",
            json.dumps({"chatRoomId": room, "content": "hi from stomp.py"}),
            content_type="application/json", headers={"receipt": "b1"},
        )
        # Bob watches the room too: his own message comes back, ahead of his RECEIPT.
        kinds = [(await asyncio.to_thread(inbox.next))[0] for _ in range(2)]
        assert kinds == ["MESSAGE", "RECEIPT"]
        _, received = await alice.receive_message()
        assert (received["senderId"], received["content"]) == ("bob", "hi from stomp.py")
    finally:
        await asyncio.to_thread(bob.disconnect)
