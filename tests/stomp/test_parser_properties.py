"""Properties of encode and the parser: round trips, any chunking, and arbitrary bytes.

`CHAT_FUZZ_EXAMPLES` sets the examples per property (default 2000); a nightly run raises it.
"""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_server.stomp.errors import StompProtocolError
from chat_server.stomp.frames import (
    BODY_COMMANDS,
    LITERAL_COMMANDS,
    Command,
    Frame,
    Version,
    encode,
)
from chat_server.stomp.parser import FrameParser, ParserLimits
from tests.stomp.test_parser import Outcome, run

FUZZ = settings(
    max_examples=int(os.environ.get("CHAT_FUZZ_EXAMPLES", "2000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Pieces of header text, rich in what needs escaping; joined a few at a time (cheaper to draw
# than character by character), with an arbitrary character now and then.
PIECES = [":", "\\", "\n", "\r", "\r\n", "\\c", "a:b", " ", "é", "😀", "dest", "x-id", "1.2"]
SEPARATORS = st.lists(st.sampled_from([b"\n", b"\r\n", b"\0"]), max_size=3).map(b"".join)


def header_text(version: Version, *, name: bool, literal: bool) -> st.SearchStrategy[str]:
    """Header text `version` can carry, rich in the characters that need escaping."""
    banned = "\0"  # no version carries a NUL in a header
    if literal or version is Version.V1_0:
        banned += "\n\r" + (":" if name else "")
    elif version is Version.V1_1:
        banned += "\r"
    pieces = st.one_of(
        st.sampled_from([p for p in PIECES if not any(c in banned for c in p)]),
        st.characters(codec="utf-8", exclude_characters=banned),
    )
    return st.lists(pieces, min_size=1 if name else 0, max_size=3).map("".join)


# Built once: making strategies inside a draw costs more than drawing from them.
TEXT = {
    (version, name, literal): header_text(version, name=name, literal=literal)
    for version in Version
    for name in (False, True)
    for literal in (False, True)
}


@st.composite
def frames(draw: st.DrawFn, version: Version) -> Frame:
    """A frame that `version` can carry, as a sender would build it."""
    command = draw(st.sampled_from(list(Command)))
    literal = command in LITERAL_COMMANDS
    names, values = TEXT[version, True, literal], TEXT[version, False, literal]
    headers = tuple(
        (name, value)
        for name, value in draw(st.lists(st.tuples(names, values), max_size=3))
        if name != "content-length"
    )
    body = draw(st.binary(max_size=64)) if command in BODY_COMMANDS else b""
    frame = Frame(command, headers, body)
    if b"\0" in body or draw(st.booleans()):
        frame = frame.with_content_length()
    return frame


FRAMES = {version: frames(version) for version in Version}


@st.composite
def versioned_frames(draw: st.DrawFn) -> tuple[Version, list[Frame]]:
    version = draw(st.sampled_from(list(Version)))
    return version, draw(st.lists(FRAMES[version], min_size=1, max_size=3))


def parse(data: bytes, version: Version) -> list[Frame]:
    parser = FrameParser(version=version)
    parser.feed(data)
    return list(parser.frames())


def rechunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@FUZZ
@given(st.data())
def test_parse_of_encode_gives_the_frame_back(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from(list(Version)))
    frame = data.draw(FRAMES[version])
    assert parse(encode(frame, version), version) == [frame]


@FUZZ
@given(
    versioned_frames(),
    st.lists(SEPARATORS, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=10),
)
def test_any_chunking_of_a_stream_gives_the_same_frames(
    stream: tuple[Version, list[Frame]], separators: list[bytes], cuts: list[int]
) -> None:
    version, sent = stream
    gaps = [*separators, *[b""] * len(sent)]
    data = b"".join(gap + encode(f, version) for gap, f in zip(gaps, sent, strict=False))
    whole = run([data], version=version)
    chunked = run(rechunk(data, cuts), version=version)
    assert whole.error is None
    assert whole.frames == chunked.frames == sent
    assert whole.heartbeats == chunked.heartbeats == data.count(b"\n") - sum(
        encode(f, version).count(b"\n") for f in sent
    )


limits = st.builds(
    ParserLimits,
    max_frame_bytes=st.integers(16, 400),
    max_body_bytes=st.integers(0, 300),
    max_headers=st.integers(0, 8),
    max_header_bytes=st.integers(1, 80),
)


def same_outcome(a: Outcome, b: Outcome) -> None:
    assert a.frames == b.frames
    assert a.failure == b.failure
    if a.error is None:
        # After an error the count depends on how far feed had read when frames() failed.
        assert a.heartbeats == b.heartbeats


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 10**6), max_size=8), limits)
def test_arbitrary_bytes_parse_or_raise_a_protocol_error(
    data: bytes, cuts: list[int], parser_limits: ParserLimits
) -> None:
    # `run` catches StompProtocolError only: anything else fails the test.
    for version in Version:
        whole = run([data], parser_limits, version)
        same_outcome(whole, run(rechunk(data, cuts), parser_limits, version))


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[Version, bytes]:
    """A valid stream with a few bytes inserted, deleted or replaced: mostly nearly valid."""
    version, sent = draw(versioned_frames())
    data = bytearray(b"\n".join(encode(f, version) for f in sent))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        byte = draw(st.sampled_from([0, 10, 13, 58, 92, 0xFF, 0xC3, 32, 65]))
        match draw(st.sampled_from(["insert", "delete", "replace"])):
            case "insert":
                data[at:at] = bytes([byte])
            case "delete":
                del data[at : at + 1]
            case _:
                data[at : at + 1] = bytes([byte])
    return version, bytes(data)


@FUZZ
@given(mutated_streams(), limits)
def test_mutated_streams_parse_the_same_fed_whole_or_byte_by_byte(
    stream: tuple[Version, bytes], parser_limits: ParserLimits
) -> None:
    version, data = stream
    whole = run([data], parser_limits, version)
    same_outcome(whole, run([data[i : i + 1] for i in range(len(data))], parser_limits, version))
    if whole.error is not None:
        assert isinstance(whole.error, StompProtocolError)
        assert whole.error.message


# --- the whole-frame fast path against the incremental path ------------------------------------


def run_with(
    chunks: list[bytes], parser_limits: ParserLimits, version: Version, *, whole_frames: bool
) -> Outcome:
    """`run`, with the whole-frame fast path on or off."""
    parser = FrameParser(parser_limits, version, whole_frames=whole_frames)
    frames: list[Frame] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            frames.extend(parser.frames())
    except StompProtocolError as exc:
        return Outcome(frames, exc, parser.heartbeats, parser.buffered_bytes)
    return Outcome(frames, None, parser.heartbeats, parser.buffered_bytes)


def fast_and_incremental_agree(
    data: bytes, cuts: list[int], parser_limits: ParserLimits, version: Version
) -> None:
    incremental = run_with([data], parser_limits, version, whole_frames=False)
    for chunks in ([data], rechunk(data, cuts)):
        fast = run_with(chunks, parser_limits, version, whole_frames=True)
        same_outcome(fast, incremental)
        if incremental.error is None:
            assert fast.buffered_bytes == incremental.buffered_bytes


@FUZZ
@given(
    versioned_frames(),
    st.lists(SEPARATORS, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=10),
    st.one_of(st.just(ParserLimits()), limits),
)
def test_whole_frames_parse_as_the_incremental_path_does(
    stream: tuple[Version, list[Frame]],
    separators: list[bytes],
    cuts: list[int],
    parser_limits: ParserLimits,
) -> None:
    version, sent = stream
    gaps = [*separators, *[b""] * len(sent)]
    data = b"".join(gap + encode(f, version) for gap, f in zip(gaps, sent, strict=False))
    fast_and_incremental_agree(data, cuts, parser_limits, version)


@FUZZ
@given(
    mutated_streams(),
    st.lists(st.integers(0, 10**6), max_size=8),
    st.one_of(st.just(ParserLimits()), limits),
)
def test_whole_frames_fail_as_the_incremental_path_does(
    stream: tuple[Version, bytes], cuts: list[int], parser_limits: ParserLimits
) -> None:
    version, data = stream
    fast_and_incremental_agree(data, cuts, parser_limits, version)


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 10**6), max_size=8), limits)
def test_whole_frames_agree_on_arbitrary_bytes(
    data: bytes, cuts: list[int], parser_limits: ParserLimits
) -> None:
    fast_and_incremental_agree(data, cuts, parser_limits, Version.V1_2)
