"""Frames, header escaping and the wire encoding, checked against exact bytes."""

from __future__ import annotations

import pytest

from chat_server.stomp.errors import StompProtocolError
from chat_server.stomp.frames import (
    BODY_COMMANDS,
    CLIENT_COMMANDS,
    HEARTBEAT,
    LITERAL_COMMANDS,
    SERVER_COMMANDS,
    Command,
    Frame,
    Version,
    encodable,
    encode,
    encode_headers,
    escape,
    unescape,
)
from chat_server.stomp.parser import FrameParser


def test_command_values_are_the_wire_names() -> None:
    for command in Command:
        assert command.value == command.name
        assert str(command) == command.name


def test_client_and_server_commands_partition_all_commands() -> None:
    assert set(Command) == CLIENT_COMMANDS | SERVER_COMMANDS
    assert not CLIENT_COMMANDS & SERVER_COMMANDS
    assert {Command.CONNECTED, Command.MESSAGE, Command.RECEIPT, Command.ERROR} == SERVER_COMMANDS


def test_only_send_message_and_error_may_have_a_body() -> None:
    assert {Command.SEND, Command.MESSAGE, Command.ERROR} == BODY_COMMANDS


def test_connect_stomp_and_connected_are_never_escaped() -> None:
    assert {Command.CONNECT, Command.STOMP, Command.CONNECTED} == LITERAL_COMMANDS


def test_version_values_are_the_negotiation_tokens() -> None:
    assert [v.value for v in Version] == ["1.0", "1.1", "1.2"]
    assert Version("1.2") is Version.V1_2


def test_heartbeat_is_one_line_feed() -> None:
    assert HEARTBEAT == b"\n"


def test_frame_get_returns_the_first_of_repeated_headers() -> None:
    frame = Frame(Command.SEND, (("destination", "/a"), ("destination", "/b")))
    assert frame.get("destination") == "/a"


def test_frame_get_returns_none_for_a_missing_header() -> None:
    assert Frame(Command.SEND).get("destination") is None


def test_frame_get_distinguishes_an_empty_value_from_a_missing_header() -> None:
    assert Frame(Command.SEND, (("destination", ""),)).get("destination") == ""


def test_frame_defaults_to_no_headers_and_no_body() -> None:
    frame = Frame(Command.DISCONNECT)
    assert frame.headers == ()
    assert frame.body == b""


def test_frame_is_immutable_and_hashable() -> None:
    frame = Frame(Command.SEND, (("a", "1"),), b"x")
    with pytest.raises(AttributeError):
        frame.body = b"y"  # type: ignore[misc]
    assert hash(frame) == hash(Frame(Command.SEND, (("a", "1"),), b"x"))


def test_with_content_length_puts_the_byte_count_first() -> None:
    frame = Frame(Command.SEND, (("destination", "/a"),), "é".encode())
    assert frame.with_content_length() == Frame(
        Command.SEND, (("content-length", "2"), ("destination", "/a")), b"\xc3\xa9"
    )


def test_with_content_length_replaces_every_existing_content_length() -> None:
    frame = Frame(
        Command.SEND,
        (("content-length", "99"), ("a", "1"), ("content-length", "7")),
        b"abc",
    )
    assert frame.with_content_length().headers == (("content-length", "3"), ("a", "1"))


def test_with_content_length_leaves_the_original_untouched() -> None:
    frame = Frame(Command.SEND, (), b"abc")
    frame.with_content_length()
    assert frame.headers == ()


@pytest.mark.parametrize(
    ("version", "raw", "escaped"),
    [
        (Version.V1_2, "a:b", "a\\cb"),
        (Version.V1_2, "a\nb", "a\\nb"),
        (Version.V1_2, "a\\b", "a\\\\b"),
        (Version.V1_2, "a\rb", "a\\rb"),
        (Version.V1_2, "\\n", "\\\\n"),
        (Version.V1_2, "plain value", "plain value"),
        (Version.V1_1, "a:b\nc\\d", "a\\cb\\nc\\\\d"),
        (Version.V1_0, "a:b\\c", "a:b\\c"),
        (Version.V1_2, "", ""),
    ],
)
def test_escape_follows_the_version(version: Version, raw: str, escaped: str) -> None:
    assert escape(raw, version) == escaped
    assert unescape(escaped, version) == raw


@pytest.mark.parametrize(
    ("version", "text"),
    [
        (Version.V1_0, "a\nb"),
        (Version.V1_0, "a\rb"),
        (Version.V1_1, "a\rb"),
        (Version.V1_2, "a\0b"),
        (Version.V1_1, "\0"),
    ],
)
def test_escape_refuses_text_the_version_cannot_carry(version: Version, text: str) -> None:
    assert not encodable(text, version)
    with pytest.raises(ValueError, match="cannot be sent"):
        escape(text, version)


def test_encodable_reports_what_each_version_can_carry() -> None:
    assert encodable("a\r\nb:c", Version.V1_2)
    assert encodable("a\nb:c", Version.V1_1)
    assert encodable("a:b", Version.V1_0)
    assert not encodable("a:b", Version.V1_0, name=True)
    assert encodable("a:b", Version.V1_2, name=True)
    assert not encodable("a\nb", Version.V1_2, literal=True)
    assert not encodable("a:b", Version.V1_2, name=True, literal=True)
    assert encodable("a:b\\c", Version.V1_2, literal=True)


@pytest.mark.parametrize("raw", ["a\\tb", "a\\xb", "trailing\\", "\\", "\\C", "\\\\\\"])
@pytest.mark.parametrize("version", [Version.V1_1, Version.V1_2])
def test_unescape_rejects_undefined_escapes(raw: str, version: Version) -> None:
    with pytest.raises(StompProtocolError, match="invalid header escape") as info:
        unescape(raw, version)
    assert info.value.message == "invalid header escape"


def test_unescape_has_no_carriage_return_escape_in_1_1() -> None:
    with pytest.raises(StompProtocolError, match="invalid header escape"):
        unescape("a\\rb", Version.V1_1)
    assert unescape("a\\rb", Version.V1_2) == "a\rb"


def test_unescape_leaves_1_0_text_alone() -> None:
    assert unescape("a\\tb\\", Version.V1_0) == "a\\tb\\"


def test_unescape_decodes_adjacent_escapes_left_to_right() -> None:
    assert unescape("\\\\n\\n\\c\\\\", Version.V1_2) == "\\n\n:\\"


def test_encode_writes_command_headers_blank_line_body_and_nul() -> None:
    frame = Frame(Command.SEND, (("destination", "/app/message"), ("x-a", "1")), b"hi")
    assert encode(frame, Version.V1_2) == b"SEND\ndestination:/app/message\nx-a:1\n\nhi\0"


def test_encode_escapes_header_names_and_values() -> None:
    frame = Frame(Command.MESSAGE, (("a:b", "c\nd\\e\rf"),))
    assert encode(frame, Version.V1_2) == b"MESSAGE\na\\cb:c\\nd\\\\e\\rf\n\n\0"


def test_encode_writes_repeated_headers_in_order() -> None:
    frame = Frame(Command.SEND, (("a", "1"), ("a", "2")))
    assert encode(frame, Version.V1_2) == b"SEND\na:1\na:2\n\n\0"


def test_encode_does_not_add_content_length() -> None:
    assert encode(Frame(Command.SEND, (), b"x"), Version.V1_2) == b"SEND\n\nx\0"
    counted = Frame(Command.SEND, (), b"x").with_content_length()
    assert encode(counted, Version.V1_2) == b"SEND\ncontent-length:1\n\nx\0"


@pytest.mark.parametrize("command", sorted(LITERAL_COMMANDS))
def test_encode_never_escapes_connect_and_connected_headers(command: Command) -> None:
    frame = Frame(command, (("passcode", "a\\cb:c"),))
    assert encode(frame, Version.V1_2) == f"{command}\npasscode:a\\cb:c\n\n\0".encode()


def test_encode_refuses_a_line_break_in_a_connected_header() -> None:
    frame = Frame(Command.CONNECTED, (("user-name", "alice\nMESSAGE"),))
    with pytest.raises(ValueError, match="cannot be sent"):
        encode(frame, Version.V1_2)


def test_encode_refuses_a_colon_in_a_1_0_header_name() -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        encode(Frame(Command.SEND, (("a:b", "c"),)), Version.V1_0)


def test_encode_leaves_1_0_values_unescaped() -> None:
    frame = Frame(Command.SEND, (("a", "b:c\\d"),))
    assert encode(frame, Version.V1_0) == b"SEND\na:b:c\\d\n\n\0"


def test_encode_writes_utf8() -> None:
    frame = Frame(Command.SEND, (("x-ünï", "ç😀"),))
    assert encode(frame, Version.V1_2) == "SEND\nx-ünï:ç😀\n\n\0".encode()


def test_encode_headers_matches_the_header_part_of_encode() -> None:
    headers = (("subscription", "s:1"), ("x-note", "a\nb"))
    frame = Frame(Command.MESSAGE, headers, b"body")
    tail = encode_headers(headers, Version.V1_2) + b"\nbody\0"
    assert encode(frame, Version.V1_2) == b"MESSAGE\n" + tail
    assert encode_headers((), Version.V1_2) == b""


def test_encode_headers_escapes_for_1_1() -> None:
    assert encode_headers((("a", "b:c\n"),), Version.V1_1) == b"a:b\\cc\\n\n"


def test_reencoded_header_with_a_newline_cannot_inject_a_frame() -> None:
    # F24: a SEND header "x:a\nMESSAGE" decodes to a value holding a newline; echoed into a
    # MESSAGE it must be escaped again, so the stream still holds exactly one frame.
    parser = FrameParser()
    parser.feed(b"SEND\ndestination:/d\nx-evil:a\\n\\nMESSAGE\\ndestination:/x\n\n\0")
    (sent,) = list(parser.frames())
    assert sent.get("x-evil") == "a\n\nMESSAGE\ndestination:/x"
    for version in (Version.V1_1, Version.V1_2):
        relayed = Frame(Command.MESSAGE, (("x-evil", sent.get("x-evil") or ""),), b"hi")
        receiver = FrameParser(version=version)
        receiver.feed(encode(relayed.with_content_length(), version))
        assert list(receiver.frames()) == [relayed.with_content_length()]
