"""A small STOMP-over-WebSocket test client that can send exact bytes and read parsed frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType

from chat_server.stomp.frames import Command, Frame, Version, encode
from chat_server.stomp.parser import FrameParser, ParserLimits

TIMEOUT_S = 5.0


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


