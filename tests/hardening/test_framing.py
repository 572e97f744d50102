"""BAD_INPUTS C1 (framing and parsing) over a real WebSocket, as exact bytes."""

from __future__ import annotations

import pytest

from chat_server.stomp.frames import Command
from tests.hardening.conftest import Server, expect_fatal
from tests.stomp_client import frame, send_body

SEND_JSON = [("destination", "/app/message"), ("content-type", "application/json")]


@pytest.mark.parametrize(
    ("data", "message", "code"),
    [
        # F3: unknown, lowercase, trailing space; F4: server commands from the client.
        (b"WRONGCOMMAND\n\n\0", "Bad command", 1002),
        (b"send\n\n\0", "Bad command", 1002),
        (b"SEND \ndestination:/app/message\n\n\0", "Bad command", 1002),
        (b"CONNECTED\n\n\0", "Bad command", 1002),
        (b"RECEIPT\nreceipt-id:1\n\n\0", "Bad command", 1002),
        (b"ERROR\nmessage:x\n\n\0", "Bad command", 1002),
        (b"MESSAGE\n\n\0", "Bad command", 1002),
        # F5: a header line without a colon.
        (b"SUBSCRIBE\nhdrerror\n\n\0", "malformed header", 1002),
        # F7: undefined escapes, and a trailing lone backslash.
        *((b"SUBSCRIBE\nid:" + escape + b"\ndestination:/user/queue/errors\n\n\0",
           "invalid header escape", 1002) for escape in (b"a\\tb", b"a\\x", b"a\\")),
        # F9: a lone CR in a command, a header name, a header value, between frames.
        (b"SE\rND\n\n\0", "Bad command", 1002),
        (b"SUBSCRIBE\nid\r:1\n\n\0", "malformed header", 1002),
        (b"SUBSCRIBE\nid:1\r\n\r\rdestination:x\n\n\0", "malformed header", 1002),
        (b"\n\r\rSEND\n\n\0", "malformed frame", 1002),
        # F10: spaces are never trimmed, so the destination is unknown.
        (b"SUBSCRIBE\nid:1\ndestination: /user/queue/errors\n\n\0", "Unknown destination", 1002),
        (b"SUBSCRIBE\nid:1\ndestination:/user/queue/errors \n\n\0", "Unknown destination", 1002),
        # F11: an empty header name; an empty destination.
        (b"SUBSCRIBE\n:value\n\n\0", "malformed header", 1002),
        (b"SUBSCRIBE\nid:1\ndestination:\n\n\0", "Missing destination", 1002),
        (b"SEND\ndestination:\n\n{}\0", "Missing destination", 1002),
        # F14: content-length shorter than the body.
        (b"SEND\ndestination:/app/message\ncontent-length:2\n\n{}}\0", "content-length mismatch",
         1002),
        # F16: content-length that is not 1-9 ASCII digits.
        *((b"SEND\ndestination:/app/message\ncontent-length:" + value + b"\n\n{}\0",
           "invalid content-length", 1002)
          for value in (b"-1", b"+5", b"0x10", b"1e3", b" 5", b"", "\u0665".encode(),
                        b"18446744073709551617", b"1234567890")),
        # F17: a declared body over the limit is refused before any of it arrives.
        (b"SEND\ndestination:/app/message\ncontent-length:2147483648\n\n", "invalid content-length",
         1002),
        (b"SEND\ndestination:/app/message\ncontent-length:16385\n\n", "body too large", 1009),
        # F20: a body on a frame that has none.
        (b"SUBSCRIBE\nid:1\ndestination:/user/queue/errors\n\nbody\0", "unexpected body", 1002),
        (b"SUBSCRIBE\nid:1\ncontent-length:1\ndestination:/user/queue/errors\n\nb\0",
         "unexpected body", 1002),
        # F25 policy: C0 controls in chat text are refused; F26: a body that is not UTF-8.
        (frame("SEND", SEND_JSON, b'{"chatRoomId": 1, "content": "a\\u0007b"}'),
         "invalid fields", 1002),
        (frame("SEND", SEND_JSON, b'{"chatRoomId": 1, "content": "\xff\xfe"}'),
         "body is not valid UTF-8", 1002),
        (frame("SEND", [("destination", "/app/message"), ("content-type", "text/plain")],
               b"\xff\xfe"), "content-type must be application/json", 1002),
        # F27: 10,000 one-byte headers: refused at the 33rd.
        (b"SEND\n" + b"a:\n" * 10_000 + b"\n\0", "too many headers", 1009),
    ],
)
async def test_bad_frame_after_connect_is_fatal(
    server: Server, data: bytes, message: str, code: int
) -> None:
    alice = await server.ws("alice")
    await alice.send_raw(data, binary=True)
    await expect_fatal(alice, message, code)


async def test_nothing_is_persisted_by_refused_frames(server: Server) -> None:
    """F14/F18/F23: broken frames never store a message; a valid frame before them does."""
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    good = frame("SEND", [*SEND_JSON, ("receipt", "first")], send_body(room, "kept"))
    await alice.send_raw(good + b"GARBAGE\n\n\0", binary=True)  # F23
    receipt = await alice.receive()
    assert receipt.get("receipt-id") == "first"
    await expect_fatal(alice, "Bad command", 1002)
    body = send_body(room, "lost")
    alice = await server.ws("alice")
    short = [*SEND_JSON, ("content-length", str(len(body) - 1))]
    await alice.send_raw(frame("SEND", short, body), binary=True)  # F14
    await expect_fatal(alice, "content-length mismatch", 1002)
    assert [m["content"] for m in await server.history("alice", room)] == ["kept"]


async def test_f6_value_with_colons_keeps_everything_after_the_first(server: Server) -> None:
    room = await server.room("alice", "bob")
    bob = await server.subscribed("bob", room)
    alice = await server.ws("alice")
    await alice.send_raw(frame("SEND", [*SEND_JSON, ("x-a", "b:c"), ("receipt", "r")],
                               send_body(room, "hi")))
    assert (await alice.receive()).get("receipt-id") == "r"
    message, _ = await bob.receive_message()
    assert message.get("x-a") == "b:c"


async def test_f8_connect_headers_are_taken_literally(server: Server) -> None:
    raw = await server.ws(None)
    token = server.tokens.mint("alice")
    # `\c` and even an undefined `\t` are plain text in CONNECT: no unescaping, no error.
    await raw.send_raw(frame("CONNECT", [("accept-version", "1.2"), ("host", "h"),
                                         ("login", "a\\cb"), ("x", "a\\tb"),
                                         ("passcode", token)]))
    connected = await raw.receive()
    assert connected.command is Command.CONNECTED
    assert connected.get("user-name") == "alice"


async def test_f13_first_of_repeated_destinations_is_used_for_auth_and_routing(
    server: Server
) -> None:
    own = await server.room("alice", "bob")
    foreign = await server.room("carol", "dave")
    dave = await server.subscribed("dave", foreign)
    alice = await server.ws("alice")
    # SUBSCRIBE: first is the foreign room, so it is checked, and refused.
    await alice.send_raw(frame("SUBSCRIBE", [("id", "1"),
                                             ("destination", f"/queue/chat-rooms/{foreign}"),
                                             ("destination", f"/queue/chat-rooms/{own}")]))
    await expect_fatal(alice, "forbidden", 1008)
    # SUBSCRIBE: first is the own room, so the later foreign one is never looked at.
    alice = await server.ws("alice")
    await alice.send_raw(frame("SUBSCRIBE", [("id", "1"),
                                             ("destination", f"/queue/chat-rooms/{own}"),
                                             ("destination", f"/queue/chat-rooms/{foreign}"),
                                             ("receipt", "s")]))
    assert (await alice.receive()).get("receipt-id") == "s"
    await server.say(await server.ws("bob"), own, "to own")
    message, body = await alice.receive_message()
    assert message.get("destination") == f"/queue/chat-rooms/{own}"
    assert body["content"] == "to own"
    # SEND: first destination /app/message wins over a later one.
    await alice.send_raw(frame("SEND", [("destination", "/app/message"),
                                        ("destination", "/app/elsewhere"),
                                        ("content-type", "application/json"),
                                        ("receipt", "sent")], send_body(own, "once")))
    got = [await alice.receive() for _ in range(2)]  # her own MESSAGE may come first
    assert {f.command for f in got} == {Command.RECEIPT, Command.MESSAGE}
    await server.say(await server.ws("carol"), foreign, "sentinel")
    assert (await dave.receive_message())[1]["content"] == "sentinel"


async def test_f15_a_short_frame_waits_and_completes_later(server: Server) -> None:
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    body = send_body(room, "late")
    data = frame("SEND", [*SEND_JSON, ("content-length", str(len(body))), ("receipt", "r")], body)
    await alice.send_raw(data[:-10], binary=True)
    await alice.expect_silence(0.3)  # waiting is the behaviour: nothing may answer yet
    assert await server.history("alice", room) == []  # never persisted while truncated
    await alice.send_raw(data[-10:], binary=True)
    assert (await alice.receive()).get("receipt-id") == "r"


async def test_f18_nul_in_an_uncounted_body_starts_a_frame_that_is_authorised_again(
    server: Server
) -> None:
    own = await server.room("alice", "bob")
    foreign = await server.room("carol", "dave")
    dave = await server.subscribed("dave", foreign)
    alice = await server.ws("alice")
    smuggled = frame("SEND", SEND_JSON, send_body(foreign, "smuggled"))
    await alice.send_raw(
        frame("SEND", [*SEND_JSON, ("receipt", "r")], send_body(own, "outer") + b"\0" + smuggled),
        binary=True,
    )
    assert (await alice.receive()).get("receipt-id") == "r"
    # The second frame was a SEND of its own, checked like any other: not a member.
    await expect_fatal(alice, "not a member of this room", 1008)
    await server.say(await server.ws("carol"), foreign, "sentinel")
    assert (await dave.receive_message())[1]["content"] == "sentinel"


async def test_f19_first_content_length_frames_the_body(server: Server) -> None:
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    body = send_body(room, "counted")
    headers = [*SEND_JSON, ("content-length", str(len(body))), ("content-length", "3"),
               ("receipt", "r")]
    await alice.send_raw(frame("SEND", headers, body))
    assert (await alice.receive()).get("receipt-id") == "r"
    assert [m["content"] for m in await server.history("bob", room)] == ["counted"]


async def test_f21_a_frame_sent_one_byte_per_websocket_message_is_reassembled(
    server: Server
) -> None:
    """Every split point: mid-command, mid-header, mid-escape, mid-CRLF, mid-UTF-8."""
    room = await server.room("alice", "bob")
    bob = await server.subscribed("bob", room)
    alice = await server.ws("alice")
    data = (b"SEND\r\ndestination:/app/message\r\ncontent-type:application/json\r\n"
            b"x-k:a\\cb\\nc\r\nreceipt:r\r\n\r\n" + send_body(room, "caf\u00e9 \u2603"))
    data += b"\0"
    for index in range(len(data)):
        await alice.send_raw(data[index:index + 1], binary=True)
    assert (await alice.receive()).get("receipt-id") == "r"
    message, body = await bob.receive_message()
    assert body["content"] == "caf\u00e9 \u2603"
    assert message.get("x-k") == "a:b\nc"


async def test_f22_many_frames_heartbeats_and_nuls_in_one_message(server: Server) -> None:
    room = await server.room("alice", "bob")
    alice = await server.ws("alice")
    data = b"\n\r\n\0\0".join(
        frame("SEND", [*SEND_JSON, ("receipt", str(n))], send_body(room, f"m{n}"))
        for n in range(5)
    )
    await alice.send_raw(b"\n\0" + data + b"\n\n", binary=True)
    assert [(await alice.receive()).get("receipt-id") for _ in range(5)] == list("01234")
    assert [m["content"] for m in await server.history("alice", room)] == [
        f"m{n}" for n in range(5)]


async def test_f24_f25_headers_are_re_escaped_and_messages_carry_content_length(
    server: Server
) -> None:
    room = await server.room("alice", "bob")
    bob = await server.raw()
    await bob.send_text(frame("CONNECT", [("accept-version", "1.2"), ("host", "h"),
                                          ("passcode", server.tokens.mint("bob"))]))
    assert (await bob.receive()).payload.startswith(b"CONNECTED\n")
    await bob.send_text(frame("SUBSCRIBE", [("id", "0"), ("destination",
                                                          f"/queue/chat-rooms/{room}"),
                                            ("receipt", "s")]))
    assert (await bob.receive()).payload.startswith(b"RECEIPT\n")
    alice = await server.ws("alice")
    await alice.send_raw(frame("SEND", [*SEND_JSON, ("x-a", "line1\\nMESSAGE\\c\\\\"),
                                        ("receipt", "r")], send_body(room, "tab\there\nok")))
    assert (await alice.receive()).get("receipt-id") == "r"
    wire = (await bob.receive()).payload
    head, _, rest = wire.partition(b"\n\n")
    lines = head.split(b"\n")
    assert lines[0] == b"MESSAGE"
    assert b"x-a:line1\\nMESSAGE\\c\\\\" in lines  # decoded on the way in, re-escaped out
    assert b"MESSAGE" not in lines[1:]
    length = int(next(line for line in lines if line.startswith(b"content-length:"))[15:])
    assert rest[length:] == b"\0" and b'"tab\\there\\nok"' in rest[:length]
