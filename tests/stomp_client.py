"""The one STOMP-over-WebSocket test client, in three modes.

* bytes: :func:`frame`, :func:`connect_bytes`, :func:`send_body` build exact STOMP bytes (no
  escaping, no content-length added) for tests that must send precisely what they say;
* :class:`StompClient`: STOMP frames over an aiohttp WebSocket, sent encoded and read parsed;
* :class:`RawWebSocket`: a WebSocket on a bare TCP socket, for exact RFC 6455 frames (masked or
  not, any RSV bit, opcode or declared length), a tiny receive buffer, or not reading at all.

:class:`ChatClient` builds on :class:`StompClient` for the multi-process tests: a reader task
records every MESSAGE, RECEIPT and the close, and a dropped connection can be resumed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import ClientWebSocketResponse, WSMsgType

from chat_server.stomp.frames import Command, Frame, Version, encode
from chat_server.stomp.parser import FrameParser, ParserLimits

TIMEOUT_S = 5.0


# --------------------------------------------------------------------------------------------------
# Exact STOMP bytes
# --------------------------------------------------------------------------------------------------


def frame(command: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> bytes:
    """Exact STOMP 1.2 bytes, headers as given (no escaping, no content-length added)."""
    head = "".join(f"{k}:{v}\n" for k, v in headers or [])
    return f"{command}\n{head}\n".encode() + body + b"\0"


def send_body(room: int, content: str, **extra: Any) -> bytes:
    """The JSON body of a chat SEND."""
    return json.dumps({"chatRoomId": room, "content": content, **extra}).encode()


def connect_bytes(token: str, **extra: str) -> bytes:
    """A STOMP 1.2 CONNECT carrying `token` as its passcode."""
    headers = {"accept-version": "1.2", "host": "h", "passcode": token, **extra}
    return encode(Frame(Command.CONNECT, tuple(headers.items())), Version.V1_2)


# --------------------------------------------------------------------------------------------------
# STOMP frames over an aiohttp WebSocket
# --------------------------------------------------------------------------------------------------


class Closed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"WebSocket closed with {code}")
        self.code = code


class StompClient:
    def __init__(self, ws: ClientWebSocketResponse, version: Version = Version.V1_2) -> None:
        self.ws = ws
        self.version = version
        big = ParserLimits(max_frame_bytes=2**24, max_body_bytes=2**24, max_headers=1000)
        self._parser = FrameParser(big, version)
        self._frames: list[Frame] = []
        self.close_code: int | None = None

    # --- sending ------------------------------------------------------------------------------

    async def send_raw(self, data: bytes, *, binary: bool = False) -> None:
        if binary:
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data.decode("utf-8"))

    async def send(self, command: Command, headers: dict[str, str] | None = None,
                   body: bytes = b"") -> None:
        frame = Frame(command, tuple((headers or {}).items()), body)
        await self.send_raw(encode(frame, self.version))

    async def connect(self, token: str, **headers: str) -> Frame:
        all_headers = {"accept-version": "1.2", "host": "localhost",
                       "Authorization": f"Bearer {token}", "heart-beat": "0,0", **headers}
        await self.send(Command.CONNECT, all_headers)
        frame = await self.receive()
        assert frame.command is Command.CONNECTED, frame
        version = frame.get("version")
        if version:
            self.version = Version(version)
            self._parser.version = self.version
        return frame

    async def subscribe(self, destination: str, sub_id: str = "0", **headers: str) -> None:
        await self.send(Command.SUBSCRIBE, {"destination": destination, "id": sub_id, **headers})

    async def send_message(self, room_id: int, content: str, **headers: str) -> None:
        body: dict[str, Any] = {"chatRoomId": room_id, "content": content}
        if "client_message_id" in headers:
            body["clientMessageId"] = headers.pop("client_message_id")
        await self.send(
            Command.SEND,
            {"destination": "/app/message", "content-type": "application/json", **headers},
            json.dumps(body).encode(),
        )

    async def receipted(self, command: Command, headers: dict[str, str], body: bytes = b"",
                        receipt: str = "r") -> Frame:
        """Send a frame asking for a receipt; return the RECEIPT (asserting nothing came first)."""
        await self.send(command, {**headers, "receipt": receipt}, body)
        frame = await self.receive()
        assert frame.command is Command.RECEIPT, frame
        assert frame.get("receipt-id") == receipt
        return frame

    # --- receiving ----------------------------------------------------------------------------

    async def receive(self, timeout: float = TIMEOUT_S) -> Frame:
        """The next frame; raises Closed when the server closes the socket first."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                message = await self.ws.receive()
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    data = message.data
                    self._parser.feed(data if isinstance(data, bytes) else data.encode())
                    self._frames.extend(self._parser.frames())
                else:
                    self.close_code = self.ws.close_code
                    raise Closed(self.ws.close_code)
        return self._frames.pop(0)

    async def receive_message(self, timeout: float = TIMEOUT_S) -> tuple[Frame, dict[str, Any]]:
        frame = await self.receive(timeout)
        assert frame.command is Command.MESSAGE, frame
        return frame, json.loads(frame.body)

    async def expect_error(self, timeout: float = TIMEOUT_S) -> Frame:
        """The ERROR frame the server sends, then the close that must follow it."""
        frame = await self.receive(timeout)
        assert frame.command is Command.ERROR, frame
        await self.expect_close(timeout)
        return frame

    async def expect_close(self, timeout: float = TIMEOUT_S) -> int | None:
        try:
            while True:
                frame = await self.receive(timeout)
                raise AssertionError(f"expected the socket to close, got {frame}")
        except Closed as closed:
            return closed.code

    async def expect_silence(self, seconds: float) -> None:
        """Nothing arrives for `seconds` (used only where absence is the behaviour under test)."""
        try:
            frame = await self.receive(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {frame}")


# --------------------------------------------------------------------------------------------------
# Raw mode: RFC 6455 frames on a bare TCP socket
# --------------------------------------------------------------------------------------------------

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def ws_frame(
    payload: bytes,
    opcode: int = TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    declared_length: int | None = None,
) -> bytes:
    """One RFC 6455 frame; `declared_length` may lie about the payload's size."""
    length = len(payload) if declared_length is None else declared_length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@dataclass
class Received:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, response_headers: dict[str, str]) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = response_headers

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        path: str = "/ws",
        headers: dict[str, str | None] | None = None,
        extra_header_lines: list[bytes] | None = None,
        rcvbuf: int | None = None,
    ) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        # A small StreamReader limit too, so a paused client buffers next to nothing itself.
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        all_headers: dict[str, str | None] = {
            "Host": f"{host}:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "v12.stomp",
            **(headers or {}),
        }
        lines = [f"GET {path} HTTP/1.1".encode()]
        lines += [f"{k}: {v}".encode() for k, v in all_headers.items() if v is not None]
        lines += extra_header_lines or []
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        async with asyncio.timeout(TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        response_headers = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                response_headers[name.strip().lower()] = value.strip()
        return cls(reader, writer, status, response_headers)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_text(self, payload: bytes) -> None:
        await self.send(ws_frame(payload, TEXT))

    async def receive(self, timeout: float = TIMEOUT_S) -> Received:
        """The next whole WebSocket frame; IncompleteReadError when the server hangs up."""
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length)
        return Received(first & 0x0F, payload)

    async def close_code(self, timeout: float = TIMEOUT_S) -> int | None:
        """Read until the server's close frame (its code) or EOF/reset (None)."""
        try:
            while True:
                frame = await self.receive(timeout)
                if frame.opcode == CLOSE:
                    return frame.close_code
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None

    async def stomp_until_close(self, timeout: float = TIMEOUT_S) -> tuple[bytes, int | None]:
        """All STOMP bytes the server sends, and its close code (None: the socket just ended)."""
        data = b""
        try:
            while True:
                frame = await self.receive(timeout)
                if frame.opcode == CLOSE:
                    return data, frame.close_code
                if frame.opcode in (TEXT, BINARY):
                    data += frame.payload
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return data, None

    def close(self) -> None:
        self.writer.close()


#: 1000 pings with a 125-byte payload (the most RFC 6455 allows a control frame): 131 KB.
PING_BATCH = b"".join(ws_frame(b"p" * 125, PING) for _ in range(1000))


async def flood_pings(host: str, port: int, *, token: str | None, connections: int,
                      until: float) -> int:
    """Ping a server without ever reading its answers (a 4 KiB receive buffer), 1000 pings per
    write, until the server ends the connection; then again on a new one (with CONNECT first
    when `token` is given), `connections` times, or until the monotonic time `until`. Returns
    how many connections the server ended."""
    closed = 0
    while closed < connections and time.monotonic() < until:
        try:
            raw = await RawWebSocket.open(host, port, rcvbuf=4096)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            await asyncio.sleep(0.05)
            continue
        try:
            if token is not None:
                await raw.send_text(connect_bytes(token))
            while time.monotonic() < until:
                raw.writer.write(PING_BATCH)
                async with asyncio.timeout(max(0.01, until - time.monotonic())):
                    await raw.writer.drain()
        except (ConnectionError, TimeoutError):
            closed += time.monotonic() < until
        finally:
            raw.writer.transport.abort()
    return closed


# --------------------------------------------------------------------------------------------------
# A recording, resuming client for the multi-process tests
# --------------------------------------------------------------------------------------------------


class Dropped(Exception):
    """The connection ended before the awaited frame came."""


class ChatClient:
    """One STOMP connection with a reader task recording MESSAGE bodies, RECEIPTs and the close;
    `mint(user)` gives the bearer token it connects with.

    `messages[room]` keeps every chat message body in arrival order, across reconnections (a new
    connection continues the same lists), so loss, duplication and order are checked on them.
    `events[room]` keeps the room's events (`/queue/chat-rooms/{id}/events`: the snapshot, then
    presence, typing and reads) and `notices` the bodies from the user's queues.
    """

    def __init__(self, http: aiohttp.ClientSession, user: str, url: str,
                 mint: Callable[[str], str]) -> None:
        self.http = http
        self.mint = mint
        self.user = user
        self.url = url
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.notices: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.close_codes: list[int | None] = []
        self.connections = 0
        self.stomp: StompClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self._receipts: dict[str, asyncio.Future[None]] = {}
        self._changed = asyncio.Event()
        self._receipt_counter = 0
        self._resuming = asyncio.Lock()
        self.drops = 0
        #: When each resume() after a drop completed (connected and resubscribed).
        self.resumed_at: list[float] = []
        self._watcher: asyncio.Task[None] | None = None

    # --- connection ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    @property
    def settled(self) -> bool:
        """Connected, and not in the middle of resuming (resubscribing)."""
        return self.connected and not self._resuming.locked()

    async def connect(self, url: str | None = None) -> None:
        if url is not None:
            self.url = url
        ws = await self.http.ws_connect(self.url, protocols=("v12.stomp",),
                                        timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
        stomp = StompClient(ws)
        try:
            await stomp.connect(self.mint(self.user))
        except BaseException:
            await ws.close()
            raise
        self.stomp = stomp
        self.connections += 1
        self._reader = asyncio.create_task(self._read(stomp))

    async def _read(self, stomp: StompClient) -> None:
        try:
            while True:
                frame = await stomp.receive(timeout=3600)
                if frame.command is Command.MESSAGE:
                    body = orjson.loads(frame.body)
                    destination = frame.get("destination") or ""
                    if destination.endswith("/events"):
                        self.events.setdefault(int(body["roomId"]), []).append(body)
                    elif destination.startswith("/user/"):
                        self.notices.append(body)
                    else:
                        self.messages.setdefault(int(body["chatRoomId"]), []).append(body)
                elif frame.command is Command.RECEIPT:
                    waiter = self._receipts.pop(frame.get("receipt-id") or "", None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                elif frame.command is Command.ERROR:
                    self.errors.append(f"{frame.get('message')}: {frame.body!r}")
                self._changed.set()
        except Closed as closed:
            self.close_codes.append(closed.code)
        except (aiohttp.ClientError, OSError) as exc:
            self.close_codes.append(None)
            self.errors.append(repr(exc))
        finally:
            for waiter in self._receipts.values():
                if not waiter.done():
                    waiter.set_exception(Dropped(self.user))
            self._receipts.clear()
            self._changed.set()

    async def wait_dropped(self, timeout: float | None = None) -> None:
        """Until the current connection ends (the server closed it or the socket broke)."""
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            await asyncio.wait({self._reader})

    async def resume(self, url: str, rooms: Sequence[int], timeout: float = 15.0) -> None:
        """Reconnect (retrying, with jitter, while refused) and resubscribe every room with
        `x-resume-after:<last seq seen>`, as a client does after its socket dropped."""
        async with self._resuming:
            if self.connected:
                return
            deadline = time.monotonic() + timeout
            delay = 0.05
            while True:
                try:
                    await self.connect(url)
                    for room in rooms:
                        await self.subscribe(room, resume_after=self.last_seq(room))
                    self.resumed_at.append(time.monotonic())
                    return
                except (Dropped, TimeoutError, AssertionError, aiohttp.ClientError, OSError):
                    await self.close()
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 1.0)

    def keep_connected(self, url: str, rooms: Sequence[int]) -> None:
        """From now on, whenever the connection drops, resume through `url` (a task)."""

        async def watch() -> None:
            while True:
                await self.wait_dropped()
                self.drops += 1
                await self.resume(url, rooms)

        self._watcher = asyncio.create_task(watch())

    async def shutdown(self) -> None:
        """Teardown: stop resuming, close the connection."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.stomp is not None:
            with contextlib.suppress(Exception):
                await self.stomp.ws.close()

    # --- frames -------------------------------------------------------------------------------

    def _next_receipt(self) -> tuple[str, asyncio.Future[None]]:
        self._receipt_counter += 1
        receipt = f"{self.user}-r{self._receipt_counter}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receipts[receipt] = waiter
        return receipt, waiter

    async def _receipted(self, send: Callable[[str], Any], timeout: float) -> None:
        if not self.connected or self.stomp is None:
            raise Dropped(self.user)
        receipt, waiter = self._next_receipt()
        try:
            await send(receipt)
        except (ConnectionError, aiohttp.ClientError) as exc:
            self._receipts.pop(receipt, None)
            raise Dropped(self.user) from exc
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            self._receipts.pop(receipt, None)

    async def subscribe(self, room: int, *, resume_after: int | None = None,
                        timeout: float = 10.0) -> None:
        headers = {} if resume_after is None else {"x-resume-after": str(resume_after)}
        stomp = self.stomp
        assert stomp is not None
        await self._receipted(
            lambda receipt: stomp.subscribe(f"/queue/chat-rooms/{room}", f"room-{room}",
                                            receipt=receipt, **headers),
            timeout,
        )

    async def send(self, room: int, content: str, client_message_id: str,
                   timeout: float = 10.0) -> None:
        """SEND with a receipt; returns once receipted (raises Dropped or TimeoutError)."""
        stomp = self.stomp
        assert stomp is not None
        await self._receipted(
            lambda receipt: stomp.send_message(room, content, receipt=receipt,
                                               client_message_id=client_message_id),
            timeout,
        )

    async def watch(self, room: int, timeout: float = 10.0) -> None:
        """SUBSCRIBE to the room's events; returns once receipted (the snapshot came first)."""
        stomp = self.stomp
        assert stomp is not None
        await self._receipted(
            lambda receipt: stomp.subscribe(f"/queue/chat-rooms/{room}/events",
                                            f"events-{room}", receipt=receipt),
            timeout,
        )

    async def signal(self, destination: str, body: dict[str, Any], *, receipted: bool = False,
                     timeout: float = 10.0) -> None:
        """A SEND to `/app/typing` or `/app/read`; with `receipted`, awaits its RECEIPT."""
        stomp = self.stomp
        assert stomp is not None
        headers = {"destination": destination, "content-type": "application/json"}
        payload = json.dumps(body).encode()
        if not receipted:
            await stomp.send(Command.SEND, headers, payload)
            return
        await self._receipted(
            lambda receipt: stomp.send(Command.SEND, {**headers, "receipt": receipt}, payload),
            timeout,
        )

    def of(self, room: int, kind: str) -> list[dict[str, Any]]:
        """The room's events of one type, in arrival order."""
        return [event for event in self.events.get(room, []) if event["type"] == kind]

    def seqs(self, room: int) -> list[int]:
        return [int(body["seq"]) for body in self.messages.get(room, [])]

    def last_seq(self, room: int) -> int:
        seqs = self.seqs(room)
        return max(seqs) if seqs else 0

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Until `predicate()` holds, re-checked on every frame; TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
