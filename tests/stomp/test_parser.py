"""The incremental parser against byte vectors, each fed whole and one byte at a time.

Row numbers (F1-F27) are those of BAD_INPUTS.md, section C1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import BODY_COMMANDS, Command, Frame, Version, encode
from chat_server.stomp.parser import FrameParser, ParserLimits

DEFAULT_LIMITS = ParserLimits()
TOO_BIG = CloseCode.MESSAGE_TOO_BIG


@dataclass(frozen=True)
class Outcome:
    """What a parser made of a stream: the frames, then the error that stopped it, if any."""

    frames: list[Frame]
    error: StompProtocolError | None
    heartbeats: int
    buffered_bytes: int

    @property
    def failure(self) -> tuple[str, str, CloseCode] | None:
        if self.error is None:
            return None
        return (self.error.message, self.error.detail, self.error.close_code)


def run(
    chunks: Iterable[bytes],
    limits: ParserLimits = DEFAULT_LIMITS,
    version: Version = Version.V1_2,
) -> Outcome:
    """Feed `chunks` one after another, draining the frames after each, as a connection does."""
    parser = FrameParser(limits, version)
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            for frame in parser.frames():
                frames.append(frame)
    except StompProtocolError as exc:
        return Outcome(frames, exc, parser.heartbeats, parser.buffered_bytes)
    return Outcome(frames, None, parser.heartbeats, parser.buffered_bytes)


def parse_both(
    data: bytes, limits: ParserLimits = DEFAULT_LIMITS, version: Version = Version.V1_2
) -> Outcome:
    """Parse `data` fed whole and fed one byte at a time; both must give the same outcome."""
    whole = run([data], limits, version)
    trickled = run([data[i : i + 1] for i in range(len(data))], limits, version)
    assert trickled.frames == whole.frames
    assert trickled.failure == whole.failure
    if whole.error is None:
        # After an error these depend on how far feed had read when frames() failed.
        assert trickled.heartbeats == whole.heartbeats
        assert trickled.buffered_bytes == whole.buffered_bytes
    return whole


def parse_ok(
    data: bytes, limits: ParserLimits = DEFAULT_LIMITS, version: Version = Version.V1_2
) -> list[Frame]:
    outcome = parse_both(data, limits, version)
    assert outcome.error is None, outcome.failure
    return outcome.frames


def parse_error(
    data: bytes, limits: ParserLimits = DEFAULT_LIMITS, version: Version = Version.V1_2
) -> StompProtocolError:
    outcome = parse_both(data, limits, version)
    assert outcome.error is not None, f"expected an error, parsed {outcome.frames}"
    return outcome.error


def send(*headers: tuple[str, str], body: bytes = b"") -> Frame:
    return Frame(Command.SEND, headers, body)


# --- framing -----------------------------------------------------------------------------------


def test_parser_reads_a_frame_without_content_length() -> None:
    assert parse_ok(b"SEND\ndestination:/app/message\n\nhello\0") == [
        send(("destination", "/app/message"), body=b"hello")
    ]


def test_parser_reads_a_frame_with_content_length() -> None:
    assert parse_ok(b"SEND\ncontent-length:5\n\nhello\0") == [
        send(("content-length", "5"), body=b"hello")
    ]


def test_parser_reads_a_frame_with_no_headers_and_no_body() -> None:
    assert parse_ok(b"DISCONNECT\n\n\0") == [Frame(Command.DISCONNECT)]


def test_parser_accepts_crlf_line_endings_everywhere() -> None:
    assert parse_ok(b"SEND\r\ndestination:/a\r\nx:1\r\n\r\nbody\0\r\n") == [
        send(("destination", "/a"), ("x", "1"), body=b"body")
    ]


def test_parser_mixes_lf_and_crlf_line_endings() -> None:
    assert parse_ok(b"SEND\na:1\r\nb:2\n\r\n\0") == [send(("a", "1"), ("b", "2"))]


def test_parser_keeps_carriage_returns_and_controls_in_a_body() -> None:
    assert parse_ok(b"SEND\n\n\r\n\r\x01\x7f\0") == [send(body=b"\r\n\r\x01\x7f")]


def test_parser_accepts_any_bytes_in_a_counted_body() -> None:
    body = bytes(range(256)) * 2
    frames = parse_ok(b"SEND\ncontent-length:512\n\n" + body + b"\0")
    assert frames == [send(("content-length", "512"), body=body)]


def test_parser_yields_several_frames_in_order() -> None:
    data = b"SEND\na:1\n\n\0SEND\na:2\n\n\0BEGIN\ntransaction:t\n\n\0"
    frames = parse_ok(data)
    assert [f.command for f in frames] == [Command.SEND, Command.SEND, Command.BEGIN]
    assert [f.headers[0][1] for f in frames] == ["1", "2", "t"]


@pytest.mark.parametrize("command", list(Command))
def test_parser_accepts_every_command_client_or_server(command: Command) -> None:
    # F4 is the connection's job: the parser also serves test clients that read MESSAGE etc.
    body = b"x" if command in BODY_COMMANDS else b""
    assert parse_ok(f"{command}\n\n".encode() + body + b"\0") == [Frame(command, (), body)]


@pytest.mark.parametrize(
    "line",
    [b"WRONGCOMMAND", b"send", b"Send", b"SEND ", b" SEND", b"SEN", b"SENDX", b"\xffSEND", b"S\0"],
)
def test_parser_rejects_unknown_or_misspelt_commands(line: bytes) -> None:
    # F3: commands are exact and case-sensitive, nothing is trimmed.
    error = parse_error(line + b"\n\n\0")
    assert error.message == "Bad command"
    assert error.close_code == CloseCode.PROTOCOL_ERROR


def test_parser_rejects_an_http_request_at_its_first_bytes() -> None:
    parser = FrameParser()
    parser.feed(b"GET")
    with pytest.raises(StompProtocolError, match="Bad command"):
        list(parser.frames())


def test_parser_rejects_a_command_line_that_grows_past_any_command() -> None:
    parser = FrameParser()
    parser.feed(b"UNSUBSCRIBE\r")
    assert list(parser.frames()) == []
    parser.feed(b"\r")
    with pytest.raises(StompProtocolError, match="Bad command"):
        list(parser.frames())


# --- heart-beats and padding (F22) ---------------------------------------------------------------


def test_parser_counts_eol_heartbeats_between_frames() -> None:
    outcome = parse_both(b"\n\r\n\nSEND\n\n\0\n\r\n")
    assert outcome.frames == [send()]
    assert outcome.heartbeats == 5


def test_parser_ignores_nul_bytes_between_frames() -> None:
    outcome = parse_both(b"\0\0SEND\n\n\0\0\0\nDISCONNECT\n\n\0\0")
    assert outcome.frames == [send(), Frame(Command.DISCONNECT)]
    assert outcome.heartbeats == 1


def test_parser_with_only_heartbeats_yields_nothing() -> None:
    outcome = parse_both(b"\n" * 100)
    assert outcome.frames == []
    assert outcome.heartbeats == 100
    assert outcome.buffered_bytes == 0


def test_parser_waits_for_the_lf_after_a_cr_between_frames() -> None:
    parser = FrameParser()
    parser.feed(b"\r")
    assert list(parser.frames()) == []
    assert parser.heartbeats == 0
    parser.feed(b"\n")
    assert list(parser.frames()) == []
    assert parser.heartbeats == 1


# --- lone CR (F9) ------------------------------------------------------------------------------


def test_parser_rejects_a_lone_cr_between_frames() -> None:
    error = parse_error(b"SEND\n\n\0\rSEND\n\n\0")
    assert error.message == "malformed frame"


def test_parser_rejects_a_lone_cr_in_a_command() -> None:
    assert parse_error(b"SE\rND\n\n\0").message == "Bad command"
    assert parse_error(b"SEND\r\r\n\n\0").message == "Bad command"


@pytest.mark.parametrize(
    "line", [b"dest\rination:/a", b"destination:/\ra", b"destination:/a\r\r", b"a:\r\0"]
)
def test_parser_rejects_a_lone_cr_in_a_header(line: bytes) -> None:
    assert parse_error(b"SEND\n" + line + b"\n\n\0").message == "malformed header"


def test_parser_rejects_a_lone_cr_instead_of_the_blank_line() -> None:
    assert parse_error(b"SEND\na:1\n\rbody\0").message == "malformed header"


# --- headers -------------------------------------------------------------------------------------


def test_parser_splits_a_header_at_its_first_colon() -> None:
    # F6
    assert parse_ok(b"SEND\na:b:c\n\n\0", version=Version.V1_0) == [send(("a", "b:c"))]
    assert parse_ok(b"SEND\nurl:http://x:80/\n\n\0") == [send(("url", "http://x:80/"))]


def test_parser_rejects_a_header_without_a_colon() -> None:
    # F5
    error = parse_error(b"SEND\nhdrerror\n\n\0")
    assert error.message == "malformed header"
    assert error.close_code == CloseCode.PROTOCOL_ERROR


def test_parser_rejects_an_empty_header_name() -> None:
    # F11
    assert parse_error(b"SEND\n:value\n\n\0").message == "malformed header"


def test_parser_accepts_an_empty_header_value() -> None:
    # F11: whether an empty destination is missing is the connection's call.
    assert parse_ok(b"SEND\ndestination:\n\n\0") == [send(("destination", ""))]


def test_parser_does_not_trim_header_spaces() -> None:
    # F10
    frames = parse_ok(b"SEND\ndestination: /queue/chat-rooms/1 \n x :y\n\n\0")
    assert frames == [send(("destination", " /queue/chat-rooms/1 "), (" x ", "y"))]


def test_parser_keeps_repeated_headers_in_order_and_get_returns_the_first() -> None:
    # F13
    (frame,) = parse_ok(b"SEND\ndestination:/q/1\ndestination:/q/2\n\n\0")
    assert frame.headers == (("destination", "/q/1"), ("destination", "/q/2"))
    assert frame.get("destination") == "/q/1"


def test_parser_decodes_utf8_headers_split_inside_a_character() -> None:
    # F21: parse_both feeds the multi-byte characters one byte at a time.
    assert parse_ok("SEND\nx-ünï:ç😀\n\n\0".encode()) == [send(("x-ünï", "ç😀"))]


@pytest.mark.parametrize("line", [b"x:\xff", b"\xc3:a", b"x:\xed\xa0\x80", b"x:\xc3"])
def test_parser_rejects_invalid_utf8_in_a_header(line: bytes) -> None:
    # F12
    assert parse_error(b"SEND\n" + line + b"\n\n\0").message == "malformed header"


def test_parser_rejects_a_nul_inside_a_header_line() -> None:
    # The frame ended before its blank line: it must not swallow the next frame's bytes.
    assert parse_error(b"SUBSCRIBE\nid:1\0SEND\n\n\0").message == "malformed header"
    assert parse_error(b"SEND\n\0").message == "malformed header"


def test_parser_reports_a_missing_blank_line_before_the_next_frame() -> None:
    parser = FrameParser()
    parser.feed(b"SUBSCRIBE\nid:1\0")
    with pytest.raises(StompProtocolError, match="malformed header"):
        list(parser.frames())


# --- escapes (F7, F8, F24) ----------------------------------------------------------------------


def test_parser_unescapes_headers_in_1_2() -> None:
    frames = parse_ok(b"SEND\na\\cb:c\\nd\\re\\\\f\\c\n\n\0")
    assert frames == [send(("a:b", "c\nd\re\\f:"))]


def test_parser_unescapes_headers_in_1_1_but_has_no_cr_escape() -> None:
    assert parse_ok(b"SEND\na:b\\c\\n\\\\\n\n\0", version=Version.V1_1) == [send(("a", "b:\n\\"))]
    assert parse_error(b"SEND\na:\\r\n\n\0", version=Version.V1_1).message == (
        "invalid header escape"
    )


def test_parser_takes_1_0_headers_literally() -> None:
    assert parse_ok(b"SEND\na:\\c\\t\\\n\n\0", version=Version.V1_0) == [send(("a", "\\c\\t\\"))]


@pytest.mark.parametrize("value", [b"\\t", b"\\x", b"a\\", b"\\N", b"\\ "])
@pytest.mark.parametrize("version", [Version.V1_1, Version.V1_2])
def test_parser_rejects_undefined_escape(value: bytes, version: Version) -> None:
    # F7: the spec says an undefined escape MUST be fatal.
    error = parse_error(b"SEND\nx:" + value + b"\n\n\0", version=version)
    assert error.message == "invalid header escape"
    assert error.close_code == CloseCode.PROTOCOL_ERROR


def test_parser_rejects_undefined_escape_in_a_header_name() -> None:
    assert parse_error(b"SEND\n\\t:x\n\n\0").message == "invalid header escape"


@pytest.mark.parametrize("command", [b"CONNECT", b"STOMP", b"CONNECTED"])
@pytest.mark.parametrize("version", list(Version))
def test_parser_takes_connect_and_connected_headers_literally(
    command: bytes, version: Version
) -> None:
    # F8: "\c" in a passcode stays as it is, and so does an undefined escape.
    (frame,) = parse_ok(command + b"\nlogin:a\\cb\npasscode:x\\ty\\\n\n\0", version=version)
    assert frame.headers == (("login", "a\\cb"), ("passcode", "x\\ty\\"))


def test_parser_applies_a_version_change_to_the_frames_after_it() -> None:
    parser = FrameParser(version=Version.V1_2)
    parser.feed(b"CONNECT\naccept-version:1.0\n\n\0SEND\nx:a\\cb\n\n\0")
    frames = parser.frames()
    assert next(frames).command is Command.CONNECT
    parser.version = Version.V1_0  # what the connection does after negotiating
    assert next(frames) == send(("x", "a\\cb"))


def test_parser_reports_frames_before_a_bad_escape_first() -> None:
    outcome = parse_both(b"SEND\na:1\n\n\0SEND\na:\\t\n\n\0SEND\n\n\0")
    assert outcome.frames == [send(("a", "1"))]
    assert outcome.failure == (
        "invalid header escape",
        "undefined escape sequence '\\\\t' in a header",
        CloseCode.PROTOCOL_ERROR,
    )


# --- content-length and bodies (F14-F20) ------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["-1", "+5", "0x10", "1e3", " 5", "5 ", "", "٥", "18446744073709551617", "1234567890", "5\\c"],
)
def test_parser_rejects_invalid_content_length(value: str) -> None:
    # F16: ASCII [0-9]{1,9} only.
    error = parse_error(f"SEND\ncontent-length:{value}\n\n\0".encode())
    assert error.message == "invalid content-length"
    assert error.close_code == CloseCode.PROTOCOL_ERROR


def test_parser_accepts_leading_zeros_in_content_length() -> None:
    assert parse_ok(b"SEND\ncontent-length:003\n\nabc\0")[0].body == b"abc"


def test_parser_refuses_a_huge_content_length_before_the_body_arrives() -> None:
    # F17
    parser = FrameParser()
    parser.feed(b"SEND\ncontent-length:999999999\n")
    with pytest.raises(StompProtocolError, match="body too large") as info:
        list(parser.frames())
    assert info.value.close_code == TOO_BIG


def test_parser_accepts_a_counted_body_of_exactly_the_body_limit() -> None:
    limits = ParserLimits(max_body_bytes=10)
    assert parse_ok(b"SEND\ncontent-length:10\n\n0123456789\0", limits)[0].body == b"0123456789"
    error = parse_error(b"SEND\ncontent-length:11\n\n0123456789a\0", limits)
    assert (error.message, error.close_code) == ("body too large", TOO_BIG)


def test_parser_rejects_content_length_shorter_than_the_body() -> None:
    # F14: and the rest is not read as a next frame.
    outcome = parse_both(b"SEND\ncontent-length:2\n\nabc\0SEND\n\n\0")
    assert outcome.frames == []
    assert outcome.error is not None
    assert outcome.error.message == "content-length mismatch"


def test_parser_waits_for_a_body_longer_than_what_arrived() -> None:
    # F15: nothing is yielded for a truncated frame.
    outcome = parse_both(b"SEND\ncontent-length:10\n\nabc")
    assert (outcome.frames, outcome.error) == ([], None)
    assert outcome.buffered_bytes == len(b"SEND\ncontent-length:10\n\nabc")


def test_parser_ends_a_body_without_content_length_at_the_first_nul() -> None:
    # F18: the rest is parsed as a frame of its own (here a bad one).
    outcome = parse_both(b"SEND\ndestination:/a\n\nab\0SEND\n\ncd\0")
    assert outcome.frames == [send(("destination", "/a"), body=b"ab"), send(body=b"cd")]
    assert parse_both(b"SEND\n\nab\0cd\0").failure == (
        "Bad command",
        "unknown command 'c'",
        CloseCode.PROTOCOL_ERROR,
    )


def test_parser_uses_the_first_of_repeated_content_lengths() -> None:
    # F19: the first wins, as for every header; the later one is kept but frames nothing.
    (frame,) = parse_ok(b"SEND\ncontent-length:3\ncontent-length:1\n\na\0c\0")
    assert frame.body == b"a\0c"
    assert frame.headers == (("content-length", "3"), ("content-length", "1"))
    assert parse_error(b"SEND\ncontent-length:1\ncontent-length:3\n\na\0c\0").message == (
        "Bad command"
    )


def test_parser_ignores_the_validity_of_a_later_content_length() -> None:
    (frame,) = parse_ok(b"SEND\ncontent-length:1\ncontent-length:x\n\na\0")
    assert frame.body == b"a"


@pytest.mark.parametrize("command", [b"SUBSCRIBE", b"CONNECT", b"DISCONNECT", b"ACK", b"RECEIPT"])
def test_parser_rejects_a_body_on_a_frame_that_has_none(command: bytes) -> None:
    # F20
    assert parse_error(command + b"\nid:1\n\nbody\0").message == "unexpected body"
    assert parse_error(command + b"\ncontent-length:4\n\nbody\0").message == "unexpected body"


def test_parser_refuses_an_unexpected_body_at_its_first_byte() -> None:
    parser = FrameParser()
    parser.feed(b"SUBSCRIBE\nid:1\n\nx")
    with pytest.raises(StompProtocolError, match="unexpected body"):
        list(parser.frames())


def test_parser_accepts_a_zero_content_length_on_a_frame_without_body() -> None:
    assert parse_ok(b"SUBSCRIBE\ncontent-length:0\n\n\0") == [
        Frame(Command.SUBSCRIBE, (("content-length", "0"),))
    ]


# --- limits (F2, F17, F27) ----------------------------------------------------------------------


def test_parser_accepts_a_header_line_of_exactly_the_limit() -> None:
    limits = ParserLimits(max_header_bytes=20)
    line = b"x:" + b"v" * 18
    for eol in (b"\n", b"\r\n"):
        assert parse_ok(b"SEND\n" + line + eol + b"\n\0", limits) == [send(("x", "v" * 18))]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_parser_rejects_a_header_line_over_the_limit(eol: bytes) -> None:
    limits = ParserLimits(max_header_bytes=20)
    error = parse_error(b"SEND\nx:" + b"v" * 19 + eol + b"\n\0", limits)
    assert (error.message, error.close_code) == ("header too long", TOO_BIG)


def test_parser_rejects_a_long_header_line_as_soon_as_it_passes_the_limit() -> None:
    limits = ParserLimits(max_header_bytes=100)
    parser = FrameParser(limits)
    parser.feed(b"SEND\n")
    for _ in range(100):
        parser.feed(b"v")
        assert list(parser.frames()) == []
    parser.feed(b"\r")  # may still be the start of the EOL
    assert list(parser.frames()) == []
    parser.feed(b"v")
    with pytest.raises(StompProtocolError, match="malformed header"):
        list(parser.frames())
    parser = FrameParser(limits)
    parser.feed(b"SEND\n" + b"v" * 101)
    with pytest.raises(StompProtocolError, match="header too long"):
        list(parser.frames())


def test_parser_accepts_exactly_the_maximum_number_of_headers() -> None:
    headers = b"".join(b"h%d:v\n" % i for i in range(32))
    assert len(parse_ok(b"SEND\n" + headers + b"\n\0")[0].headers) == 32


def test_parser_rejects_one_header_more_than_the_maximum() -> None:
    # F27: counted while parsing, so 10,000 tiny headers stop at the 33rd.
    headers = b"a:\n" * 10_000
    outcome = parse_both(b"SEND\n" + headers + b"\n\0")
    assert outcome.failure is not None
    assert outcome.failure[0::2] == ("too many headers", TOO_BIG)
    parser = FrameParser()
    parser.feed(b"SEND\n" + b"a:\n" * 32)
    assert list(parser.frames()) == []
    parser.feed(b"a:\n")
    with pytest.raises(StompProtocolError, match="too many headers"):
        list(parser.frames())


def frame_of_size(size: int, *, counted: bool) -> bytes:
    """A SEND whose encoding is exactly `size` bytes long."""
    if counted:
        overhead = len(encode(send(("content-length", "00000")), Version.V1_2))
        body = b"b" * (size - overhead)
        return encode(send(("content-length", f"{len(body):05d}"), body=body), Version.V1_2)
    body = b"b" * (size - len(encode(send(), Version.V1_2)))
    return encode(send(body=body), Version.V1_2)


@pytest.mark.parametrize("counted", [False, True])
def test_parser_accepts_a_frame_of_exactly_the_frame_limit(counted: bool) -> None:
    limits = ParserLimits(max_frame_bytes=1000, max_body_bytes=5000)
    data = frame_of_size(1000, counted=counted)
    assert len(data) == 1000
    assert len(parse_ok(data, limits)) == 1


@pytest.mark.parametrize("counted", [False, True])
def test_parser_rejects_a_frame_one_byte_over_the_frame_limit(counted: bool) -> None:
    limits = ParserLimits(max_frame_bytes=1000, max_body_bytes=5000)
    error = parse_error(frame_of_size(1001, counted=counted), limits)
    assert (error.message, error.close_code) == ("frame too large", TOO_BIG)


def test_parser_counts_headers_toward_the_frame_limit() -> None:
    limits = ParserLimits(max_frame_bytes=100)
    headers = b"".join(b"h%d:%s\n" % (i, b"v" * 20) for i in range(5))
    error = parse_error(b"SEND\n" + headers + b"\n\0", limits)
    assert (error.message, error.close_code) == ("frame too large", TOO_BIG)


@pytest.mark.parametrize("prefix", [b"SEND\n\n", b"SEND\n", b"SEND\nx:"])
def test_parser_never_buffers_past_the_frame_limit(prefix: bytes) -> None:
    # F2: bytes keep coming without a NUL (in the body, a header line, a header value).
    limits = ParserLimits(max_frame_bytes=2000, max_body_bytes=4000, max_header_bytes=4000)
    parser = FrameParser(limits)
    parser.feed(b"CONNECT\n\n\0" + prefix)
    assert len(list(parser.frames())) == 1
    with pytest.raises(StompProtocolError, match="frame too large") as info:
        for _ in range(3000):
            assert parser.buffered_bytes < 2000
            parser.feed(b"x")
            list(parser.frames())
    assert info.value.close_code == TOO_BIG
    assert parser.buffered_bytes == 0


def test_parser_rejects_an_uncounted_body_over_the_body_limit_as_it_arrives() -> None:
    limits = ParserLimits(max_body_bytes=10)
    parser = FrameParser(limits)
    parser.feed(b"SEND\n\n" + b"b" * 10)
    assert list(parser.frames()) == []
    parser.feed(b"b")
    with pytest.raises(StompProtocolError, match="body too large") as info:
        list(parser.frames())
    assert info.value.close_code == TOO_BIG


def test_parser_accepts_an_uncounted_body_of_exactly_the_body_limit() -> None:
    limits = ParserLimits(max_body_bytes=10)
    assert parse_ok(b"SEND\n\n0123456789\0", limits)[0].body == b"0123456789"
    assert parse_error(b"SEND\n\n0123456789a\0", limits).message == "body too large"


def test_parser_refuses_a_counted_body_that_cannot_fit_the_frame() -> None:
    limits = ParserLimits(max_frame_bytes=100, max_body_bytes=1000)
    parser = FrameParser(limits)
    parser.feed(b"SEND\ncontent-length:200\n")
    with pytest.raises(StompProtocolError, match="frame too large"):
        list(parser.frames())


def test_parser_limits_must_be_sane() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ParserLimits(max_frame_bytes=15)
    with pytest.raises(ValueError, match="negative"):
        ParserLimits(max_headers=-1)


# --- errors and their order (F23) ---------------------------------------------------------------


def test_parser_yields_the_frame_before_garbage_then_fails() -> None:
    # F23: deterministic whatever the chunking: the SEND first, then the error.
    outcome = parse_both(b"SEND\ndestination:/a\n\nhi\0garbage\n\n\0")
    assert outcome.frames == [send(("destination", "/a"), body=b"hi")]
    assert outcome.error is not None
    assert outcome.error.message == "Bad command"


def test_parser_stays_dead_after_an_error() -> None:
    parser = FrameParser()
    parser.feed(b"SEND\n\n\0nope\n")
    frames = parser.frames()
    assert next(frames) == send()
    with pytest.raises(StompProtocolError) as first:
        next(frames)
    with pytest.raises(StompProtocolError) as again:
        list(parser.frames())
    assert again.value is first.value
    with pytest.raises(StompProtocolError) as fed:
        parser.feed(b"SEND\n\n\0")
    assert fed.value is first.value


def test_parser_ignores_bytes_after_an_error_it_has_not_reported_yet() -> None:
    parser = FrameParser()
    parser.feed(b"SEND\n\n\0bad\n")
    parser.feed(b"SEND\n\n\0")
    assert parser.buffered_bytes == 0
    frames = parser.frames()
    assert next(frames) == send()
    with pytest.raises(StompProtocolError, match="Bad command"):
        next(frames)


def test_parser_keeps_undelivered_frames_when_the_reader_stops_early() -> None:
    parser = FrameParser()
    parser.feed(b"SEND\na:1\n\n\0SEND\na:2\n\n\0")
    for _frame in parser.frames():
        break
    assert list(parser.frames()) == [send(("a", "2"))]


# --- buffering and efficiency (F1, F21) ---------------------------------------------------------


def test_parser_reports_the_bytes_of_an_incomplete_frame() -> None:
    parser = FrameParser()
    parser.feed(b"\n\nSEND\ndestination:/a\n\nab")
    assert list(parser.frames()) == []
    assert parser.buffered_bytes == len(b"SEND\ndestination:/a\n\nab")
    parser.feed(b"\0\n")
    assert len(list(parser.frames())) == 1
    assert parser.buffered_bytes == 0


def test_parser_reassembles_a_frame_split_mid_escape_and_mid_crlf() -> None:
    # F21, the RabbitMQ parse_resume cases: split at every possible point.
    data = "SEND\r\nx-a:b\\cc\\\\\r\ndestination:/é\r\n\r\nbody\0".encode()
    expected = [send(("x-a", "b:c\\"), ("destination", "/é"), body=b"body")]
    for cut in range(len(data) + 1):
        assert run([data[:cut], data[cut:]]).frames == expected


def test_parser_handles_a_large_frame_fed_one_byte_at_a_time() -> None:
    # How long this takes (scanning must be incremental) is `python -m benchmarks.parser_scan`.
    limits = ParserLimits(max_frame_bytes=300_000, max_body_bytes=200_000)
    header = b"x-big:" + b"h" * 8000 + b"\n"
    data = b"SEND\n" + header * 10 + b"\n" + b"b" * 200_000 + b"\0"
    parser = FrameParser(limits)
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
    (frame,) = list(parser.frames())
    assert len(frame.body) == 200_000


def test_parser_handles_many_frames_in_one_chunk() -> None:
    data = b"SEND\na:1\n\nx\0\n" * 5000
    outcome = run([data])
    assert len(outcome.frames) == 5000
    assert outcome.heartbeats == 5000


def test_a_complete_frame_is_taken_in_one_pass_without_the_line_by_line_path() -> None:
    parser = FrameParser()
    # A frame that only the fast path could have read: the line-by-line steps are unusable.
    parser._header_line = None  # type: ignore[assignment,method-assign]
    parser.feed(b"SEND\r\ndestination:/app/message\nx-a:b\\cc\ncontent-length:2\n\n{}\0\n")
    assert list(parser.frames()) == [
        Frame(
            Command.SEND,
            (("destination", "/app/message"), ("x-a", "b:c"), ("content-length", "2")),
            b"{}",
        )
    ]
    assert parser.heartbeats == 1
    assert parser.buffered_bytes == 0
