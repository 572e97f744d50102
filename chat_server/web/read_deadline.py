"""One timer per connection that ends the reader's wait once the peer is past its deadline.

`ws.receive(timeout=...)` makes a timeout scope, and with it a timer, for every WebSocket
message; with frames arriving far more often than any deadline falls due, nearly all of them are
cancelled unused. Here one timer stays armed for the connection. It is moved only when the
deadline comes nearer (a frame left incomplete); when the deadline moved later in the meantime
(the peer spoke), the timer finds that when it fires and re-arms itself for the new time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class ReadDeadline:
    """Cancels the reader task if it is still waiting for the peer when the deadline passes."""

    __slots__ = ("_deadline", "_due", "_handle", "_loop", "_task", "expired", "waiting")

    def __init__(self, deadline: Callable[[], float | None], task: asyncio.Task[object]) -> None:
        #: The monotonic time by which the peer must have sent something, or None.
        self._deadline = deadline
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0  # monotonic time the armed timer stands for
        #: The reader is waiting in `receive` (the only place a deadline may interrupt).
        self.waiting = False
        #: The timer cancelled the reader; its CancelledError means "timed out".
        self.expired = False

    def arm(self) -> bool:
        """Before each wait: False when the deadline has already passed, else True with the
        timer set no later than the deadline."""
        deadline = self._deadline()
        if deadline is None:
            self.cancel()
            return True
        now = time.monotonic()
        if deadline <= now:
            return False
        if self._handle is None or deadline < self._due:
            self._set(deadline, now)
        return True

    def claim_cancel(self) -> bool:
        """Whether the reader's CancelledError came from this timer alone; if so it is taken
        back (`Task.uncancel`) and the reader ends the connection as timed out."""
        return self.expired and self._task.uncancel() == 0

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _set(self, deadline: float, now: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._due = deadline
        self._handle = self._loop.call_later(deadline - now, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self.waiting:
            return  # the reader is busy with a frame; it calls arm() before it waits again
        deadline = self._deadline()
        if deadline is None:
            return
        now = time.monotonic()
        if deadline > now:
            self._set(deadline, now)  # the peer spoke since the timer was set
            return
        self.expired = True
        self._task.cancel()
