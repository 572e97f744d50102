"""Waiting in tests: `eventually`, the one poll-until-true with a deadline.

Poll only where nothing can be awaited (another process's state, a counter with no event behind
it); where a future, an event or a frame marks the moment, await that instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

POLL_INTERVAL_S = 0.02

#: A condition to wait for: a plain function, or a coroutine function (e.g. an HTTP check).
Condition = Callable[[], bool | Awaitable[bool]]


async def _holds(condition: Condition) -> bool:
    outcome = condition()
    if inspect.isawaitable(outcome):
        return bool(await outcome)
    return bool(outcome)


async def eventually(
    condition: Condition,
    timeout: float,
    what: str,
    context: Callable[[], str] = lambda: "",
    *,
    interval: float = POLL_INTERVAL_S,
) -> float:
    """Re-checks `condition` every `interval` seconds until it holds; returns the seconds it took.

    Fails with ``AssertionError("not within <timeout> s: <what>")`` followed by `context()` (logs,
    counters: whatever explains the state at that moment) once `timeout` has passed.
    """
    started = time.monotonic()
    while not await _holds(condition):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}\n{context()}".rstrip())
        await asyncio.sleep(interval)
    return time.monotonic() - started
