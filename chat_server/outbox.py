"""A bounded per-connection queue of encoded frames; overflowing it marks a slow consumer."""

from __future__ import annotations

import asyncio
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
        # A list, not a deque: an empty deque weighs 760 bytes on every idle connection.
        self._chunks: list[bytes] = []
        self._size = 0
        self._closed = False
        # Futures made only while someone waits: an idle connection holds no waiter objects.
        self._writer_waiting: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
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
        self._wake_writer()

    def close(self, final: bytes = b"") -> None:
        """Accept nothing more; `final` (an ERROR frame, say) is the last thing written."""
        if self._closed:
            return
        if final:
            self._chunks.append(final)
            self._size += len(final)
        self._closed = True
        self._wake_writer()

    def abandon(self, final: bytes = b"") -> None:
        """A slow consumer: drop the backlog, keep only `final`, and wake a blocked writer."""
        self._chunks.clear()
        self._size = 0
        self._closed = False
        self.close(final)
        self._release_drain_waiters()
        if self.waker is not None:
            self.waker()

    def discard(self) -> None:
        """Drop whatever is queued (the socket is gone) and close."""
        self._chunks.clear()
        self._size = 0
        self._closed = True
        self._wake_writer()
        self._release_drain_waiters()

    async def take(self, timeout: float | None, max_bytes: int = 65536) -> bytes | None:
        """Queued frames joined (whole frames, about `max_bytes` at most), b"" if `timeout`
        passed idle, None once closed and empty."""
        if not self._chunks and not self._closed:
            self._writer_waiting = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._writer_waiting, timeout)
            except TimeoutError:
                return b""
            finally:
                self._writer_waiting = None
        if not self._chunks:
            return None if self._closed else b""
        chunks = self._chunks
        count, total = 1, len(chunks[0])
        while count < len(chunks) and total + len(chunks[count]) <= max_bytes:
            total += len(chunks[count])
            count += 1
        taken = chunks[:count]
        del chunks[:count]
        self._size -= total
        if not self._chunks:
            self._release_drain_waiters()
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def take_now(self) -> bytes:
        """Everything queued, joined, without waiting (b"" when empty)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._release_drain_waiters()
        return data

    async def wait_drained(self) -> None:
        """Until the writer has taken everything queued (used to pace history replays)."""
        if not self._chunks:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_writer(self) -> None:
        if self._writer_waiting is not None and not self._writer_waiting.done():
            self._writer_waiting.set_result(None)

    def _release_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
