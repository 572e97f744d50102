"""Closing to the end: a store's close that a cancellation cannot cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def close_fully(closing: Awaitable[None]) -> None:
    """Await `closing` until it has finished, even when the caller is cancelled meanwhile.

    A close cut short half way leaves pooled connections (and their threads) open, and
    SQLAlchemy's pool logs the `CancelledError` that reached it with a traceback. So the close
    runs in a task of its own, shielded from the caller's cancellation, which is raised once
    the close is done. Only cancelling that task itself stops it.
    """
    task = asyncio.ensure_future(closing)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise  # the close itself was cancelled, not just its caller
            cancelled = exc
            continue
        break
    if cancelled is not None:
        raise cancelled
