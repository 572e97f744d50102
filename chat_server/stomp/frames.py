"""STOMP frames as values: commands, versions, header escaping and the wire encoding."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from chat_server.stomp.errors import StompProtocolError


class Command(StrEnum):
    """Every STOMP 1.0-1.2 command; the value is the exact, case-sensitive wire name."""

    CONNECT = "CONNECT"
    STOMP = "STOMP"
    CONNECTED = "CONNECTED"
    SEND = "SEND"
    SUBSCRIBE = "SUBSCRIBE"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    ACK = "ACK"
    NACK = "NACK"
    BEGIN = "BEGIN"
    COMMIT = "COMMIT"
    ABORT = "ABORT"
    DISCONNECT = "DISCONNECT"
    MESSAGE = "MESSAGE"
    RECEIPT = "RECEIPT"
    ERROR = "ERROR"


class Version(StrEnum):
    """The protocol versions spoken; the value is the `accept-version`/`version` token."""

    V1_0 = "1.0"
    V1_1 = "1.1"
    V1_2 = "1.2"


CLIENT_COMMANDS: frozenset[Command] = frozenset(
    {
        Command.CONNECT,
        Command.STOMP,
        Command.SEND,
        Command.SUBSCRIBE,
        Command.UNSUBSCRIBE,
        Command.ACK,
        Command.NACK,
        Command.BEGIN,
        Command.COMMIT,
        Command.ABORT,
        Command.DISCONNECT,
    }
)
SERVER_COMMANDS: frozenset[Command] = frozenset(
    {Command.CONNECTED, Command.MESSAGE, Command.RECEIPT, Command.ERROR}
)
# STOMP 1.2: "Only the SEND, MESSAGE, and ERROR frames MAY have a body."
BODY_COMMANDS: frozenset[Command] = frozenset({Command.SEND, Command.MESSAGE, Command.ERROR})
# STOMP 1.2: "The CONNECT and CONNECTED frames do not escape the carriage return, line feed or
# colon octets". STOMP is CONNECT under another name (the spec says it MUST be handled the same
# way, BAD_INPUTS P5), so a passcode is read identically whichever of the two the client sends.
LITERAL_COMMANDS: frozenset[Command] = frozenset(
    {Command.CONNECT, Command.STOMP, Command.CONNECTED}
)

Headers = tuple[tuple[str, str], ...]

#: An EOL heart-beat (STOMP 1.1+, "Heart-beating").
HEARTBEAT: bytes = b"\n"


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame; headers keep their wire order, repeats included."""

    command: Command
    headers: Headers = ()
    body: bytes = b""

    def get(self, name: str) -> str | None:
        """The value of header `name`, or None when absent."""
        # STOMP 1.2: repeated headers, only the first is used (BAD_INPUTS F13).
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def with_content_length(self) -> Frame:
        """A copy whose first header is `content-length` for the body (older ones dropped)."""
        kept = tuple(header for header in self.headers if header[0] != "content-length")
        return Frame(self.command, (("content-length", str(len(self.body))), *kept), self.body)


# STOMP 1.1 "Value Encoding" defines \n, \c and \\; STOMP 1.2 adds \r.
_ESCAPES_1_1 = {"\\": "\\\\", "\n": "\\n", ":": "\\c"}
_ESCAPES_1_2 = {**_ESCAPES_1_1, "\r": "\\r"}
_ESCAPE_TABLE_1_1 = str.maketrans(_ESCAPES_1_1)
_ESCAPE_TABLE_1_2 = str.maketrans(_ESCAPES_1_2)
_UNESCAPES_1_1 = {"\\": "\\", "n": "\n", "c": ":"}
_UNESCAPES_1_2 = {**_UNESCAPES_1_1, "r": "\r"}


def encodable(text: str, version: Version, *, name: bool = False, literal: bool = False) -> bool:
    """Whether `text` can be sent as a header value (or a header `name`) in `version`.

    `literal` is for CONNECT/CONNECTED/STOMP frames, which are never escaped. Nothing can carry
    a line feed unescaped, only STOMP 1.2 has an escape for a carriage return (a bare one reads
    as a broken end of line), and only STOMP 1.1+ escapes a colon in a header name. No version
    carries a NUL in a header: many clients split frames at every NUL before parsing, so one
    would end the frame early and let the rest be read as another frame.
    """
    if "\0" in text:
        return False
    if literal or version is Version.V1_0:
        return "\n" not in text and "\r" not in text and not (name and ":" in text)
    return version is Version.V1_2 or "\r" not in text


def _unencodable(text: str, version: Version) -> ValueError:
    return ValueError(f"header text {text!r} cannot be sent in STOMP {version}")


def escape(value: str, version: Version) -> str:
    """`value` escaped for a header of a non-CONNECT frame in `version`.

    Raises ValueError for text the version cannot represent (see `encodable`): sending it raw
    would let a header inject lines, even whole frames, into the peer's stream (F24).
    """
    # Fast path: most header text has nothing to escape.
    if not ("\\" in value or "\n" in value or ":" in value or "\r" in value or "\0" in value):
        return value
    if not encodable(value, version):
        raise _unencodable(value, version)
    if version is Version.V1_0:
        return value  # STOMP 1.0 has no escapes; a colon in a value is read back as such
    return value.translate(_ESCAPE_TABLE_1_2 if version is Version.V1_2 else _ESCAPE_TABLE_1_1)


def unescape(raw: str, version: Version) -> str:
    """The header text that `raw`, as read off the wire in `version`, stands for."""
    if version is Version.V1_0 or "\\" not in raw:
        return raw
    table = _UNESCAPES_1_2 if version is Version.V1_2 else _UNESCAPES_1_1
    parts: list[str] = []
    start = 0
    while (slash := raw.find("\\", start)) >= 0:
        replacement = table.get(raw[slash + 1 : slash + 2])
        if replacement is None:
            # STOMP 1.2: "Undefined escape sequences such as \t MUST be treated as a fatal
            # protocol error" (F7); a lone trailing backslash is one too.
            raise StompProtocolError(
                "invalid header escape",
                detail=f"undefined escape sequence {raw[slash : slash + 2]!r} in a header",
            )
        parts.append(raw[start:slash])
        parts.append(replacement)
        start = slash + 2
    parts.append(raw[start:])
    return "".join(parts)


def _literal(text: str, version: Version, *, name: bool) -> str:
    if not encodable(text, version, name=name, literal=True):
        raise _unencodable(text, version)
    return text


def _encode_literal_headers(headers: Headers, version: Version) -> bytes:
    lines = [
        f"{_literal(k, version, name=True)}:{_literal(v, version, name=False)}\n"
        for k, v in headers
    ]
    return "".join(lines).encode("utf-8")


def encode_headers(headers: Headers, version: Version) -> bytes:
    """The `name:value` lines of `headers`, escaped for `version`, each ending in LF.

    For a part of a frame shared by many recipients (encode once, write many). Raises
    ValueError for text `version` cannot carry (see `encodable`).
    """
    if version is Version.V1_0:
        # STOMP 1.0 has no escapes: a colon in a name would move the split, so refuse it.
        lines = [f"{_literal(k, version, name=True)}:{escape(v, version)}\n" for k, v in headers]
    else:
        lines = [f"{escape(k, version)}:{escape(v, version)}\n" for k, v in headers]
    return "".join(lines).encode("utf-8")


_COMMAND_LINES: dict[Command, bytes] = {command: f"{command}\n".encode() for command in Command}


def encode(frame: Frame, version: Version) -> bytes:
    """`frame` on the wire for `version`: command, headers as given, blank line, body, NUL.

    It adds no `content-length` (use `Frame.with_content_length`). Raises ValueError for a
    header `version` cannot carry (see `encodable`).
    """
    if frame.command in LITERAL_COMMANDS:
        head = _encode_literal_headers(frame.headers, version)
    else:
        head = encode_headers(frame.headers, version)
    return b"".join((_COMMAND_LINES[frame.command], head, b"\n", frame.body, b"\0"))
