"""How `chat-server serve` stops: on the first SIGTERM or SIGINT, once, and within a bound.

aiohttp's own handling raises `GracefulExit` out of the event loop on every signal. A second
signal during the shutdown then interrupted the app's cleanup half way, and what was left of it
(a store closing its pool) was cancelled: a `CancelledError` traceback from SQLAlchemy's pool,
and connections never closed. Here the first signal only asks for the stop; the cleanup runs
undisturbed, and later signals are logged once and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import signal

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """SIGTERM and SIGINT on a loop: the first sets `requested`, later ones change nothing."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._repeats = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for number in STOP_SIGNALS:
            loop.add_signal_handler(number, self._received, number)

    def _received(self, number: signal.Signals) -> None:
        if not self.requested.is_set():
            log.info("%s: shutting down", number.name)
            self.requested.set()
            return
        self._repeats += 1
        if self._repeats == 1:  # a supervisor may repeat itself; one line says it was heard
            log.warning("%s again: already shutting down", number.name)

    @staticmethod
    def ignore_from_now_on(loop: asyncio.AbstractEventLoop) -> None:
        """Once the loop is about to close: a signal then would kill a process that is
        exiting cleanly anyway (status -15 instead of 0)."""
        for number in STOP_SIGNALS:
            loop.remove_signal_handler(number)
            signal.signal(number, signal.SIG_IGN)


def cancel_leftovers(loop: asyncio.AbstractEventLoop, grace_s: float) -> None:
    """Cancel the tasks still running after the app's cleanup and wait for them, at most
    `grace_s` seconds (CHAT_SHUTDOWN_GRACE_S); the loop is not running."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    done, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=grace_s))
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed while shutting down", task.get_name(),
                      exc_info=task.exception())
    if pending:
        names = ", ".join(sorted(task.get_name() for task in pending))
        log.warning("%d task(s) still running %s s after the shutdown, left behind: %s",
                    len(pending), grace_s, names)
