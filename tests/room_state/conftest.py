"""The room-state tests run on asyncio's own loop and on uvloop, the loop `chat-server serve`
runs on: their timers differ (uvloop answers `call_at` for a time already due with a plain
`Handle`, which has no `when()`), and room state lives on timers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    factories: dict[str, LoopFactory] = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop
    except ImportError:  # not installed off Linux and macOS, where serve runs on asyncio's loop
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
