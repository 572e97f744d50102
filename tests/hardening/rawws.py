"""A WebSocket client on a bare TCP socket: exact frames (masked or not, any RSV/opcode/length),
a receive buffer as small as the kernel allows, and the ability to stop reading altogether."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

TIMEOUT_S = 5.0

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
