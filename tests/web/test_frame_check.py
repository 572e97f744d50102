"""FrameCheck without a socket: whatever the chunking, it passes on exactly the bytes before the
first refused frame header, and refuses at the same header."""

from __future__ import annotations

from typing import Any, cast

import pytest
from aiohttp.http_websocket import WebSocketReader

from chat_server.web.frame_check import FrameCheck, FrameRefused
from tests.stomp_client import BINARY, CONTINUATION, PING, TEXT, ws_frame

LIMIT = 70_000


class RecordingReader:
    """Stands in for aiohttp's WebSocketReader: keeps what it is fed."""

    def __init__(self) -> None:
        self.data = b""
        self.eof = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        self.eof = True


def run(stream: bytes, chunk: int) -> tuple[bytes, list[FrameRefused]]:
    reader = RecordingReader()
    check = FrameCheck(cast(WebSocketReader, reader), LIMIT)
    refusals: list[FrameRefused] = []
    check.watch(refusals.append)
    for start in range(0, len(stream), chunk):
        assert check.feed_data(stream[start:start + chunk]) == (False, b"")
    return reader.data, refusals


GOOD = (
    ws_frame(b"x" * 125, TEXT)
    + ws_frame(b"y" * 126, BINARY)  # a 16-bit length
    + ws_frame(b"p", PING)
    + ws_frame(b"z" * 65_536, TEXT, fin=False)  # a 64-bit length
    + ws_frame(b"p", PING)  # a control frame between fragments
    + ws_frame(b"w" * (LIMIT - 65_536), CONTINUATION)  # the message exactly at the limit
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4096, len(GOOD)])
def test_frames_within_the_limit_pass_whole_whatever_the_chunking(chunk: int) -> None:
    assert run(GOOD, chunk) == (GOOD, [])


FIRST_FRAGMENT = ws_frame(b"o" * LIMIT, TEXT, fin=False)


@pytest.mark.parametrize("chunk", [1, 5, 4096, 1 << 20])
@pytest.mark.parametrize(
    ("allowed", "crossing"),
    [
        (b"", ws_frame(b"o" * (LIMIT + 1), BINARY)),
        (b"", ws_frame(b"", TEXT, declared_length=2**40)),
        (FIRST_FRAGMENT, ws_frame(b"o", CONTINUATION)),
    ],
    ids=["one frame", "declared 2**40", "fragments"],
)
def test_a_message_over_the_limit_is_refused_at_the_header_that_crosses_it(
    chunk: int, allowed: bytes, crossing: bytes
) -> None:
    before = ws_frame(b"ok", TEXT) + allowed
    passed, refusals = run(before + crossing + ws_frame(b"after", TEXT), chunk)
    assert passed == before  # nothing of the crossing frame, nor of what follows it
    assert [refusal.code for refusal in refusals] == [1009]


@pytest.mark.parametrize("chunk", [1, 3, 4096])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, CONTINUATION, PING])
def test_an_unmasked_frame_is_refused_at_its_header(chunk: int, opcode: int) -> None:
    before = ws_frame(b"ok", TEXT, fin=opcode != CONTINUATION)
    passed, refusals = run(before + ws_frame(b"bare", opcode, masked=False), chunk)
    assert passed == before
    assert [refusal.code for refusal in refusals] == [1002]


def test_a_refusal_before_anyone_watches_is_told_when_they_do() -> None:
    reader = RecordingReader()
    check = FrameCheck(cast(Any, reader), LIMIT)
    check.feed_data(ws_frame(b"", TEXT, declared_length=LIMIT + 1))
    refusals: list[FrameRefused] = []
    check.watch(refusals.append)
    assert [refusal.code for refusal in refusals] == [1009]
    assert check.feed_data(ws_frame(b"more", TEXT)) == (False, b"")
    assert reader.data == b""
    check.feed_eof()
    assert reader.eof
