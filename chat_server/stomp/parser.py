"""Incremental STOMP parser: bytes in any chunking become Frames, with every limit checked early."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, auto

from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import (
    BODY_COMMANDS,
    LITERAL_COMMANDS,
    Command,
    Frame,
    Headers,
    Version,
    unescape,
)

_LF = 0x0A
_CR = 0x0D
_NUL = 0x00

# STOMP 1.2: frame = command EOL *(header EOL) EOL *OCTET NULL *(EOL), with EOL = [CR] LF. We
# accept CRLF in every version and treat EOLs (and stray NULs, F22) between frames as heart-beats.
_BETWEEN_FRAMES = re.compile(rb"(?:\r?\n|\x00)*")
# Bytes that may sit inside a header line; LF ends it, CR must be followed by LF (F9), and a NUL
# means a frame ended before its blank line (rejected at once instead of swallowing the next frame).
_HEADER_TEXT = re.compile(rb"[^\n\r\x00]*")
# A frame's command line and header block up to its blank line, for the whole-frame fast path:
# header lines are non-empty, free of NUL, with CR only before their LF.
_FRAME_HEAD = re.compile(rb"([A-Z]{1,11})\r?\n((?:[^\n\r\x00]+\r?\n)*)\r?\n")
# One header of that block: split at the first colon (F6), the name not empty, nothing trimmed
# (F10) but the CR of a CRLF. Anchored at line starts, so a line that does not match is missed
# (and counted missing) rather than matched from its middle.
_HEADER_LINE = re.compile(r"^([^:\n]+):([^\r\n]*)\r?\n", re.MULTILINE)

_GAP_BYTES = frozenset(b"\r\n\x00")  # what may open the gap between frames

_COMMANDS: dict[bytes, Command] = {command.value.encode(): command for command in Command}
# Every prefix of a valid command line (CR allowed before the LF), so that garbage such as an HTTP
# request is refused at its first wrong byte, not after a whole header line of it.
_COMMAND_PREFIXES: frozenset[bytes] = frozenset(
    line[:size]
    for name in _COMMANDS
    for line in (name, name + b"\r")
    for size in range(1, len(line) + 1)
)
_CONTENT_LENGTH = "content-length"
_MAX_CONTENT_LENGTH_DIGITS = 9  # F16: ASCII [0-9]{1,9}, so never a huge integer


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """Size limits; a frame past any of them is refused as soon as the excess is certain."""

    max_frame_bytes: int = 65536  # whole frame as on the wire: command line to NUL, inclusive
    max_body_bytes: int = 16384
    max_headers: int = 32
    max_header_bytes: int = 8192  # one header line, without its EOL

    def __post_init__(self) -> None:
        # The shortest frame with the longest command, "UNSUBSCRIBE\r\n\r\n\0", must fit.
        if self.max_frame_bytes < 16:
            raise ValueError("max_frame_bytes must be at least 16")
        if self.max_body_bytes < 0 or self.max_headers < 0 or self.max_header_bytes < 1:
            raise ValueError("parser limits must not be negative")


class _State(Enum):
    BETWEEN = auto()  # before a frame: heart-beats and padding
    COMMAND = auto()
    HEADERS = auto()
    BODY = auto()


def _too_big(message: str, detail: str) -> StompProtocolError:
    return StompProtocolError(message, detail=detail, close_code=CloseCode.MESSAGE_TOO_BIG)


def _malformed(detail: str) -> StompProtocolError:
    return StompProtocolError("malformed header", detail=detail)


# Command, headers as on the wire, body, and whether the headers hold no escape at all (then
# they read the same in every version).
_RawFrame = tuple[Command, Headers, bytes, bool]


class FrameParser:
    """Turns a byte stream into frames.

    `feed` splits the stream into frames as bytes arrive, so each limit is checked before the
    buffer can grow past it; `frames` then yields them, decoding header escapes with `version`
    as it stands at that moment (the connection changes it after the CONNECT/CONNECTED exchange).
    Whatever the chunking, the frames and the error are the same: each check is made at the byte
    where it could first be decided, exactly as if the stream arrived one byte at a time.
    """

    #: Take a frame that is already complete in the buffer in one go (tests turn it off to
    #: compare it with the byte-by-byte path).
    _whole_frames = True

    def __init__(
        self,
        limits: ParserLimits = ParserLimits(),
        version: Version = Version.V1_2,
        *,
        whole_frames: bool = True,
    ) -> None:
        self.limits = limits
        self.version = version
        if not whole_frames:
            self._whole_frames = False  # an attribute only then: idle connections add up
        self.heartbeats = 0
        self._buf = bytearray()  # always starts at the line or body being read
        self._scan = 0  # how far into _buf the current search has already looked
        self._state = _State.BETWEEN
        self._command = Command.SEND
        self._headers: list[tuple[str, str]] = []
        self._content_length: int | None = None
        self._frame_bytes = 0  # bytes of the current frame already consumed from _buf
        # A list, not a deque: it holds a frame or two, and an idle connection keeps it.
        self._ready: list[_RawFrame] = []
        self._pending_error: StompProtocolError | None = None  # found by feed, not yet raised
        self._dead: StompProtocolError | None = None  # raised by frames; the parser is finished

    @property
    def buffered_bytes(self) -> int:
        """Bytes received that are not yet a complete frame or heart-beat (0 between frames)."""
        return self._frame_bytes + len(self._buf)

    def feed(self, data: bytes) -> None:
        """Add bytes from the peer; raises only if the parser has already failed."""
        if self._dead is not None:
            raise self._dead.with_traceback(None)
        if self._pending_error is not None:
            return  # the stream is already broken at an earlier byte; nothing later matters
        self._buf += data
        try:
            while self._step():
                pass
        except StompProtocolError as exc:
            # Deferred so that the frames before the bad bytes are still delivered first (F23).
            self._pending_error = exc
            self._buf = bytearray()
            self._frame_bytes = 0

    def frames(self) -> Iterator[Frame]:
        """Yield the complete frames in order, then raise the stream's error if it has one."""
        while True:
            if self._dead is not None:
                raise self._dead.with_traceback(None)
            if self._ready:
                command, headers, body, plain = self._ready.pop(0)
                try:
                    frame = Frame(
                        command, headers if plain else self._unescape(command, headers), body
                    )
                except StompProtocolError as exc:
                    self._dead = exc
                    raise
                yield frame
            elif self._pending_error is not None:
                self._dead = self._pending_error
            else:
                return

    def _unescape(self, command: Command, headers: Headers) -> Headers:
        version = self.version
        if command in LITERAL_COMMANDS or version is Version.V1_0:
            return headers
        return tuple((unescape(name, version), unescape(value, version)) for name, value in headers)

    # Each _step consumes one unit (the gap before a frame, a line, a body) and returns True, or
    # returns False when it needs more bytes; it raises at the first byte that breaks a rule.
    def _step(self) -> bool:
        match self._state:
            case _State.BETWEEN:
                return self._between_frames()
            case _State.COMMAND:
                return self._command_line()
            case _State.HEADERS:
                return self._header_line()
            case _State.BODY:
                return self._body()

    def _consume(self, size: int) -> None:
        del self._buf[:size]
        self._frame_bytes += size
        self._scan = 0

    def _between_frames(self) -> bool:
        buf = self._buf
        if not buf:
            return False
        if buf[0] not in _GAP_BYTES:  # the usual case: a frame starts right here
            self._state = _State.COMMAND
            self._frame_bytes = 0
            return True
        end = _match_end(_BETWEEN_FRAMES, buf, 0, len(buf))
        self.heartbeats += buf.count(b"\n", 0, end)
        del buf[:end]
        if not buf:
            return False
        if buf[0] == _CR:
            if len(buf) == 1:
                return False  # maybe the first half of a CRLF heart-beat
            raise StompProtocolError("malformed frame", detail="CR without LF between frames")
        self._state = _State.COMMAND
        self._frame_bytes = 0
        return True

    def _command_line(self) -> bool:
        if self._whole_frames and self._whole_frame():
            return True
        buf = self._buf
        eol = buf.find(b"\n", 0, 14)
        line = bytes(buf[: eol if eol >= 0 else 14])
        if eol < 0:
            if line not in _COMMAND_PREFIXES:
                raise _bad_command(line)
            return False
        # STOMP 1.2: commands are case-sensitive; no trimming, so "SEND " is unknown too (F3).
        command = _COMMANDS.get(line[:-1] if line.endswith(b"\r") else line)
        if command is None:
            raise _bad_command(line)
        self._command = command
        self._headers = []
        self._content_length = None
        self._consume(eol + 1)
        self._state = _State.HEADERS
        return True

    def _whole_frame(self) -> bool:
        """Take a frame lying complete at the start of the buffer in one pass, and True; False
        (nothing consumed) when it is incomplete or breaks any rule, for the incremental path
        to handle. It accepts only frames that path accepts, with the same result, so every
        error still comes from the one place that decides it at the right byte."""
        buf, limits = self._buf, self.limits
        head = _FRAME_HEAD.match(buf)
        if head is None:
            return False
        command = _COMMANDS.get(head.group(1))
        if command is None:
            return False
        read = _header_block(head.group(2), limits)
        if read is None:
            return False
        headers, length = read
        start = head.end()
        if length is None:
            end = buf.find(b"\0", start, start + limits.max_body_bytes + 1)
            if end < 0:
                return False
        else:
            end = start + length
            if length > limits.max_body_bytes or len(buf) <= end or buf[end] != _NUL:
                return False
        if (end > start and command not in BODY_COMMANDS) or end >= limits.max_frame_bytes:
            return False
        plain = b"\\" not in head.group(2)
        self._ready.append((command, tuple(headers), bytes(buf[start:end]), plain))
        del buf[: end + 1]
        self._state = _State.BETWEEN
        return True

    def _header_line(self) -> bool:
        eol = self._find_header_eol()
        if eol < 0:
            return False
        buf = self._buf
        end = eol - 1 if eol > 0 and buf[eol - 1] == _CR else eol
        line = bytes(buf[:end])
        self._consume(eol + 1)
        if line:
            self._add_header(line)
        else:
            self._state = _State.BODY
        self._check_frame_room()
        return True

    def _find_header_eol(self) -> int:
        """Index of the LF that ends the current header line, or -1 when more bytes are needed."""
        buf, limits = self._buf, self.limits
        # Room left in this line for text bytes before a limit is certainly exceeded: the line's
        # own limit, and the frame limit less the NUL that must still follow.
        frame_room = limits.max_frame_bytes - self._frame_bytes - 1
        room = min(limits.max_header_bytes, frame_room)
        end = _match_end(_HEADER_TEXT, buf, self._scan, min(len(buf), room + 1))
        if end > room:
            if room == limits.max_header_bytes:
                raise _too_big("header too long", f"a header line is over {room} bytes")
            raise _frame_too_big(limits)
        if end == len(buf):
            self._scan = end
            return -1
        if buf[end] == _LF:
            return end
        if buf[end] == _NUL:
            raise _malformed("NUL inside a header line")
        # A CR: it counts toward the frame, though not toward the line (it may start the EOL).
        if end >= frame_room:
            raise _frame_too_big(limits)
        if end + 1 == len(buf):
            self._scan = end  # look at the CR again when its successor arrives
            return -1
        if buf[end + 1] == _LF:
            return end + 1
        if buf[end + 1] == _NUL:
            raise _malformed("NUL inside a header line")
        raise _malformed("CR without LF in a header line")

    def _add_header(self, line: bytes) -> None:
        limits = self.limits
        if len(self._headers) >= limits.max_headers:
            raise _too_big("too many headers", f"a frame may have at most {limits.max_headers}")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("a header is not valid UTF-8") from None
        # STOMP: split at the first colon; later colons belong to the value (F6). Nothing is
        # trimmed (F10): "destination: /x" has the value " /x".
        name, colon, value = text.partition(":")
        if not colon:
            raise _malformed(f"no colon in header line {text[:64]!r}")
        if not name:
            raise _malformed("empty header name")
        # STOMP 1.2: repeated headers, the first wins; that holds for content-length too, so a
        # later, conflicting content-length is kept in the headers but never frames the body
        # (F19). No escape can spell "content-length", so the raw name is the decoded name.
        if name == _CONTENT_LENGTH and self._content_length is None:
            self._content_length = self._body_length(value)
        self._headers.append((name, value))

    def _body_length(self, value: str) -> int:
        if not (
            value.isascii() and value.isdigit() and len(value) <= _MAX_CONTENT_LENGTH_DIGITS
        ):
            raise StompProtocolError(
                "invalid content-length", detail="content-length must be 1 to 9 ASCII digits"
            )
        length = int(value)
        if length and self._command not in BODY_COMMANDS:
            raise _unexpected_body(self._command)
        if length > self.limits.max_body_bytes:
            # F17: refused before a byte of the body is read or room for it is made.
            raise _too_big(
                "body too large", f"a body may have at most {self.limits.max_body_bytes} bytes"
            )
        return length

    def _check_frame_room(self) -> None:
        """Refuse a frame that cannot fit however its remaining parts turn out."""
        # Still to come: the blank line (while in the headers), the body if counted, the NUL.
        still_to_come = int(self._state is _State.HEADERS) + (self._content_length or 0) + 1
        if self._frame_bytes + still_to_come > self.limits.max_frame_bytes:
            raise _frame_too_big(self.limits)

    def _body(self) -> bool:
        if self._content_length is not None:
            return self._counted_body(self._content_length)
        buf, limits = self._buf, self.limits
        if buf and buf[0] != _NUL and self._command not in BODY_COMMANDS:
            raise _unexpected_body(self._command)
        # Body bytes allowed before the NUL: the body limit, and the frame limit less the NUL.
        room = min(limits.max_body_bytes, limits.max_frame_bytes - self._frame_bytes - 1)
        # F18: without content-length the body ends at the first NUL.
        nul = buf.find(b"\0", self._scan, min(len(buf), room + 1))
        if nul < 0:
            if len(buf) > room:
                if room == limits.max_body_bytes:
                    raise _too_big("body too large", f"a body may have at most {room} bytes")
                raise _frame_too_big(limits)
            self._scan = len(buf)
            return False
        self._finish(bytes(buf[:nul]))
        return True

    def _counted_body(self, length: int) -> bool:
        buf = self._buf
        if len(buf) <= length:
            return False
        if buf[length] != _NUL:
            # F14: the frame is broken; what follows is not read as another frame.
            raise StompProtocolError(
                "content-length mismatch", detail="the byte after the body is not NUL"
            )
        self._finish(bytes(buf[:length]))
        return True

    def _finish(self, body: bytes) -> None:
        del self._buf[: len(body) + 1]
        self._ready.append((self._command, tuple(self._headers), body, False))
        self._headers = []
        self._frame_bytes = 0
        self._scan = 0
        self._state = _State.BETWEEN


def _header_block(
    block: bytes, limits: ParserLimits
) -> tuple[list[tuple[str, str]], int | None] | None:
    """The headers of a whole header block and its content-length, or None when any line
    breaks a rule (the incremental path then finds which, and where)."""
    count = block.count(b"\n")
    if count > limits.max_headers or (
        # A line's trailing CR is counted here though the limit does not count it: too strict
        # only means the incremental path decides.
        len(block) > limits.max_header_bytes
        and max(map(len, block.split(b"\n"))) > limits.max_header_bytes
    ):
        return None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    headers: list[tuple[str, str]] = _HEADER_LINE.findall(text)
    if len(headers) != count:
        return None  # a line without a colon, or with an empty name
    if _CONTENT_LENGTH in text:
        for name, value in headers:
            if name == _CONTENT_LENGTH:  # the first one frames the body
                if not (
                    value.isascii()
                    and value.isdigit()
                    and len(value) <= _MAX_CONTENT_LENGTH_DIGITS
                ):
                    return None
                return headers, int(value)
    return headers, None


def _match_end(pattern: re.Pattern[bytes], buf: bytearray, pos: int, endpos: int) -> int:
    match = pattern.match(buf, pos, endpos)
    return pos if match is None else match.end()


def _bad_command(line: bytes) -> StompProtocolError:
    # Show the line only up to its first wrong byte: that is all a byte-at-a-time stream would
    # have seen, so the error reads the same however the bytes were chunked.
    size = next((n for n in range(1, len(line) + 1) if line[:n] not in _COMMAND_PREFIXES), 0)
    shown = (line[:size] if size else line).decode("utf-8", "replace")
    return StompProtocolError("Bad command", detail=f"unknown command {shown!r}")


def _unexpected_body(command: Command) -> StompProtocolError:
    return StompProtocolError("unexpected body", detail=f"a {command} frame has no body")


def _frame_too_big(limits: ParserLimits) -> StompProtocolError:
    return _too_big("frame too large", f"a frame may have at most {limits.max_frame_bytes} bytes")
