"""The floor under chat_server's figures: the least a STOMP relay on the same stack can do.

    python -m benchmarks.relay_server --port 8080

aiohttp and uvloop, like chat_server, and nothing else: no storage, no validation, no
authentication, no heart-beats, no limits. It speaks the STOMP that `benchmarks.loadgen`'s
RabbitMQ dialect sends (`/topic/room.{id}`): CONNECTED to any CONNECT, a SUBSCRIBE joins the
room, a SEND is relayed to the room's subscribers (one encode per SEND, written straight into
each transport, as chat_server's socket writer does) and receipted when asked.

What this process spends per delivery is what the WebSocket and socket I/O of a Python server
cost on this machine; the gap between it and chat_server is what chat_server's own work costs
(the database, STOMP parsing, validation, fan-out bookkeeping). Not a server for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import struct
from collections import defaultdict

from aiohttp import WSMsgType, web

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_ROOM_PREFIX = "/topic/room."
_ROOMS = web.AppKey("rooms", defaultdict)


def _text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame around `payload` (RFC 6455 §5.2)."""
    length = len(payload)
    if length < 126:
        return _SHORT.pack(0x81, length) + payload
    if length < 65536:
        return _MEDIUM.pack(0x81, 126, length) + payload
    return _LONG.pack(0x81, 127, length) + payload


def _parse(frame: str) -> tuple[str, dict[str, str], str]:
    head, _, body = frame.partition("\n\n")
    command, *lines = head.split("\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name, value)
    return command, headers, body


class _Client:
    __slots__ = ("rooms", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.rooms: list[str] = []

    def write(self, frame: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(frame)


_message_ids = itertools.count(1)


def _relay(rooms: defaultdict[str, set[_Client]], room: str, body: str) -> None:
    payload = body.encode()
    tail = (f"destination:{_ROOM_PREFIX}{room}\ncontent-type:text/plain\n"
            f"content-length:{len(payload)}\n\n").encode() + payload + b"\0"
    head = f"MESSAGE\nsubscription:0\nmessage-id:{next(_message_ids)}\n".encode()
    frame = _text_frame(head + tail)  # the same bytes for every subscriber
    for client in rooms.get(room, ()):
        client.write(frame)


def _handle(client: _Client, rooms: defaultdict[str, set[_Client]], frame: str) -> bool:
    """One STOMP frame; False once the client said DISCONNECT."""
    command, headers, body = _parse(frame)
    if command in ("CONNECT", "STOMP"):
        client.write(_text_frame(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0"))
        return True
    if command == "SUBSCRIBE":
        room = headers.get("destination", "").removeprefix(_ROOM_PREFIX)
        rooms[room].add(client)
        client.rooms.append(room)
    elif command == "SEND":
        _relay(rooms, headers.get("destination", "").removeprefix(_ROOM_PREFIX), body)
    receipt = headers.get("receipt")
    if receipt is not None:
        client.write(_text_frame(f"RECEIPT\nreceipt-id:{receipt}\n\n\0".encode()))
    return command != "DISCONNECT"


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("v12.stomp",), autoping=True, compress=False)
    await ws.prepare(request)
    assert request.transport is not None
    client = _Client(request.transport)
    rooms = request.app[_ROOMS]
    buffer = ""
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                break
            *frames, buffer = (buffer + message.data).split("\0")
            for frame in frames:
                frame = frame.lstrip("\r\n")
                if frame and not _handle(client, rooms, frame):
                    await ws.close()
                    return ws
    finally:
        for room in client.rooms:
            rooms[room].discard(client)
    return ws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    app = web.Application()
    app[_ROOMS] = defaultdict(set)
    app.router.add_get("/ws", _websocket)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
