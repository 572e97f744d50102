"""A bounded per-connection queue of encoded frames; overflowing it marks a slow consumer."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class OutboxOverflow(Exception):
    """The peer reads slower than its rooms talk; the connection is to be closed."""


class Outbox:
    """Frames waiting for one socket's writer task.

    `put` never blocks (fan-out must never wait for one client); past `limit_bytes` it raises
    `OutboxOverflow`. The writer takes everything queued at once, so frames that pile up while
    a write is in flight leave in one WebSocket message.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        #: Set by the writer while a write is in flight; `abandon` calls it to cut the write short.
        self.waker: Callable[[], None] | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, data: bytes) -> None:
        if self._closed:
            return
        if self._size + len(data) > self.limit_bytes and self._size:
            raise OutboxOverflow(f"outbox above {self.limit_bytes} bytes")
        self._chunks.append(data)
        self._size += len(data)
        self._drained.clear()
        self._ready.set()

    def close(self, final: bytes = b"") -> None:
        """Accept nothing more; `final` (an ERROR frame, say) is the last thing written."""
        if self._closed:
            return
        if final:
            self._chunks.append(final)
            self._size += len(final)
        self._closed = True
        self._ready.set()

    def abandon(self, final: bytes = b"") -> None:
        """A slow consumer: drop the backlog, keep only `final`, and wake a blocked writer."""
        self._chunks.clear()
        self._size = 0
        self._closed = False
        self.close(final)
        self._drained.set()
        if self.waker is not None:
            self.waker()

    def discard(self) -> None:
        """Drop whatever is queued (the socket is gone) and close."""
        self._chunks.clear()
        self._size = 0
        self._closed = True
        self._ready.set()
        self._drained.set()

    async def take(self, timeout: float | None, max_bytes: int = 65536) -> bytes | None:
        """Queued frames joined (whole frames, about `max_bytes` at most), b"" if `timeout`
        passed idle, None once closed and empty."""
        if not self._chunks and not self._closed:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return b""
        if not self._chunks:
            return None if self._closed else b""
        taken = [self._chunks.popleft()]
        total = len(taken[0])
        while self._chunks and total + len(self._chunks[0]) <= max_bytes:
            taken.append(self._chunks.popleft())
            total += len(taken[-1])
        self._size -= total
        if not self._chunks:
            if not self._closed:
                self._ready.clear()
            self._drained.set()
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def take_now(self) -> bytes:
        """Everything queued, joined, without waiting (b"" when empty)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._drained.set()
        return data

    async def wait_drained(self) -> None:
        """Until the writer has taken everything queued (used to pace history replays)."""
        await self._drained.wait()
