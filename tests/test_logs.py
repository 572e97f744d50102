"""Log lines: plain with context pairs, or one JSON object each; never a token."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from chat_server.logs import configure_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]


def _log(stream: io.StringIO, log_format: str) -> str:
    configure_logging(log_format)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    logging.getLogger("chat_server.session").info(
        "closing: %s", "heart-beat timeout", extra={"session": "s-1", "user": "alice"}
    )
    return stream.getvalue()


def test_json_lines_carry_the_connection_context(captured: io.StringIO) -> None:
    line = json.loads(_log(captured, "json"))
    assert line["message"] == "closing: heart-beat timeout"
    assert (line["session"], line["user"], line["level"]) == ("s-1", "alice", "INFO")
    assert line["ts"].endswith("Z")


def test_plain_lines_append_context_pairs(captured: io.StringIO) -> None:
    text = _log(captured, "plain")
    assert text.rstrip().endswith("closing: heart-beat timeout session=s-1 user=alice")
