"""A bounded per-connection queue of encoded frames; overflowing it marks a slow consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class OutboxOverflow(Exception):
    """The peer reads slower than its rooms talk; the connection is to be closed."""


def _ignore() -> None:
    pass


def _nothing_downstream() -> int:
    return 0


class Outbox:
    """Frames waiting for one socket's writer.

    `put` never blocks (fan-out must never wait for one client); past `limit_bytes` it raises
    `OutboxOverflow`. The limit bounds every byte the connection holds for its peer: what is
    queued here and what the writer already handed to the socket but the peer has not taken
    (`downstream`), pongs and pings included (the writer asks `admit` before writing those).
    The writer is told through `on_ready` and takes everything queued at once, so frames queued
    in the same loop iteration leave in one WebSocket message. Whether more may be queued is not
    the outbox's to know: the connection decides the close (`Outlet` asks it).
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        # A list, not a deque: an empty deque weighs 760 bytes on every idle connection.
        self._chunks: list[bytes] = []
        self._size = 0
        # Futures made only while someone waits: an idle connection holds no waiter objects.
        self._drain_waiters: list[asyncio.Future[None]] = []
        #: Called by the put that makes the outbox non-empty, and by every wake and abandon
        #: (the writer schedules a flush).
        self.on_ready: Callable[[], None] = _ignore
        #: Called by `abandon`, so a writer waiting for a slow peer stops waiting.
        self.on_abandon: Callable[[], None] = _ignore
        #: Bytes written on but not yet sent (the transport's write buffer; set by the writer).
        self.downstream: Callable[[], int] = _nothing_downstream

    @property
    def size(self) -> int:
        return self._size

    @property
    def pending(self) -> bool:
        """Whether anything is queued."""
        return bool(self._chunks)

    def put(self, data: bytes) -> None:
        size = self._size
        held = size + self.downstream()  # `admit`, inline: this is the fan-out's path
        if held + len(data) > self.limit_bytes and held:
            raise OutboxOverflow(f"outgoing bytes above {self.limit_bytes}")
        self._chunks.append(data)
        self._size = size + len(data)
        if not size:
            # Only the first frame wakes the writer: while anything is queued it has a flush
            # scheduled or a task under way (or is finished), and takes everything then.
            self.on_ready()

    def admit(self, size: int) -> None:
        """Raise `OutboxOverflow` unless `size` more bytes fit beside what the peer has yet to
        take (one frame larger than the limit still goes when nothing is held)."""
        held = self._size + self.downstream()
        if held + size > self.limit_bytes and held:
            raise OutboxOverflow(f"outgoing bytes above {self.limit_bytes}")

    def put_final(self, data: bytes) -> None:
        """The last frame (an ERROR): queued even past the limit, since it is small and must
        go out; nothing is put after it."""
        self._chunks.append(data)
        self._size += len(data)
        self.on_ready()

    def wake(self) -> None:
        """Nothing new, but the writer should look again (the connection's close was decided)."""
        self.on_ready()

    def abandon(self, final: bytes = b"") -> None:
        """A slow consumer: drop the backlog, keep only `final`, and cut a blocked write short."""
        self.discard()
        if final:
            self._chunks.append(final)
            self._size = len(final)
        self.on_ready()
        self.on_abandon()

    def discard(self) -> None:
        """Drop whatever is queued (the socket is gone, or the peer reads too slowly)."""
        self._chunks.clear()
        self._size = 0
        self._release_drain_waiters()

    def take(self, max_bytes: int | None = None) -> bytes:
        """Queued frames joined: whole frames, about `max_bytes` at most (b"" when empty)."""
        chunks = self._chunks
        if not chunks:
            return b""
        if max_bytes is None or self._size <= max_bytes:
            count, total = len(chunks), self._size
        else:
            count, total = 1, len(chunks[0])
            while count < len(chunks) and total + len(chunks[count]) <= max_bytes:
                total += len(chunks[count])
                count += 1
        data = chunks[0] if count == 1 else b"".join(chunks[:count])
        del chunks[:count]
        self._size -= total
        if not chunks and self._drain_waiters:
            self._release_drain_waiters()
        return data

    async def wait_drained(self) -> None:
        """Until the writer has taken everything queued (used to pace history replays)."""
        if not self._chunks:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _release_drain_waiters(self) -> None:
        if not self._drain_waiters:
            return
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
