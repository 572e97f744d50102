"""RFC 6455 frame headers checked on their way from the socket to aiohttp's WebSocket reader.

aiohttp's reader (its C and its Python one alike) reads a client frame's mask bit and unmasks by
it, but never refuses an unmasked frame, which a server MUST (RFC 6455 §5.1: close 1002); and it
answers a message over its size limit with a bare close 1009, while STOMP says a server SHOULD
send an ERROR frame first ("Size Limits"). `FrameCheck` sits where aiohttp's protocol
hands upgraded bytes to its reader (`RequestHandler.set_parser`, see serving.py): it walks the
frame headers, payloads skipped and never copied, passes on every byte up to the first header it
refuses, and drops everything after it. The refusal is then queued behind the messages already
read (`ChatWebSocketResponse.refuse`), so the handler answers it after the frames before it, as
the STOMP connection would: the reader never sees the refused frame, and nothing of it is buffered.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.http_websocket import WebSocketError, WebSocketReader

_OPCODE = 0x0F
_FIN = 0x80
_LENGTH = 0x7F
_CONTINUATION, _TEXT, _BINARY = 0x0, 0x1, 0x2
_MASKED = 0x80
_MASK_KEY = 4


class FrameRefused(WebSocketError):
    """A client frame refused before aiohttp's reader saw it; `code` is the close code."""


class FrameCheck:
    """The payload parser aiohttp's protocol feeds for one upgraded connection: checks each
    frame header, then hands the bytes to aiohttp's `WebSocketReader`."""

    def __init__(self, reader: WebSocketReader, max_message_bytes: int) -> None:
        self._reader = reader
        #: Payload bytes one data message may carry (0: no limit, as aiohttp's max_msg_size).
        self._max_message_bytes = max_message_bytes
        #: The start of a frame header that the last read cut short.
        self._head = b""
        #: Bytes of the current frame (mask key and payload) still to pass on unexamined.
        self._skip = 0
        #: Payload bytes of the data message in progress, and whether one is in progress.
        self._message_bytes = 0
        self._in_message = False
        #: Set once; from then on nothing more is passed on.
        self.refusal: FrameRefused | None = None
        self._on_refusal: Callable[[FrameRefused], None] | None = None

    def watch(self, on_refusal: Callable[[FrameRefused], None]) -> None:
        """Whom to tell of the refusal (at once, if it came before anyone watched)."""
        self._on_refusal = on_refusal
        if self.refusal is not None:
            on_refusal(self.refusal)

    # --- aiohttp's payload parser interface (RequestHandler.data_received, connection_lost) ----

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.refusal is not None:
            return False, b""  # the connection is being closed: drop, never buffer
        if self._head:
            data, self._head = self._head + data, b""
        passed = self._scan(data)
        result = (False, b"")
        if passed:
            result = self._reader.feed_data(data if passed == len(data) else data[:passed])
        if self.refusal is not None and self._on_refusal is not None:
            self._on_refusal(self.refusal)  # after the messages before it are queued
        return result

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    # --- the headers ----------------------------------------------------------------------------

    def _scan(self, data: bytes) -> int:
        """How many bytes of `data` may go on: all of them, or up to a header that is cut short
        (kept for the next read) or refused."""
        pos, end = 0, len(data)
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
            if pos == end:
                return end
            # RFC 6455 §5.2: 2 bytes, then a 16- or 64-bit length when the 7-bit one says so.
            if end - pos < 2:
                self._head = data[pos:]
                return pos
            first, second = data[pos], data[pos + 1]
            length = second & _LENGTH
            header = 2 if length < 126 else 4 if length == 126 else 10
            if end - pos < header:
                self._head = data[pos:]
                return pos
            if header > 2:
                length = int.from_bytes(data[pos + 2 : pos + header], "big")
            self.refusal = self._check(first, second, length)
            if self.refusal is not None:
                return pos
            pos += header
            self._skip = length + _MASK_KEY  # every frame passed on is masked

    def _check(self, first: int, second: int, length: int) -> FrameRefused | None:
        if not second & _MASKED:
            # RFC 6455 §5.1: "a server MUST close the connection upon receiving a frame that is
            # not masked", with 1002 (§7.4.1), whatever the frame (control frames too).
            return FrameRefused(WSCloseCode.PROTOCOL_ERROR, "client frames must be masked")
        opcode = first & _OPCODE
        if opcode in (_TEXT, _BINARY):
            self._message_bytes = length
        elif opcode == _CONTINUATION and self._in_message:
            self._message_bytes += length
        else:
            return None  # control frames, and whatever aiohttp's reader refuses itself
        self._in_message = not (first & _FIN)
        limit = self._max_message_bytes
        if limit and self._message_bytes > limit:
            return FrameRefused(
                WSCloseCode.MESSAGE_TOO_BIG,
                f"a WebSocket message may carry at most {limit} bytes",
            )
        return None


class ChatWebSocketResponse(web.WebSocketResponse):
    """aiohttp's WebSocketResponse, which can queue a `FrameRefused` behind the messages read."""

    def refuse(self, refusal: FrameRefused) -> None:
        """`receive()` returns it, as an ERROR message, once the messages before it are taken;
        aiohttp's own `close()` wakes a waiting `receive()` the same way (its CLOSING message)."""
        if self._reader is not None:
            self._reader.feed_data(WSMessage(WSMsgType.ERROR, refusal, None), 0)
