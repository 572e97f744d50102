"""`WriterThread`: one thread that runs calls in order and answers each on its event loop.

What `run_in_executor` on a one-thread pool does, minus what one thread does not need: no
concurrent future with its condition variable and callbacks chained to an asyncio future, no
pool bookkeeping per call. A call is one queue put, and its answer one `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

Result = TypeVar("Result")

_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _settle(answer: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if answer.done():
        return  # its caller was cancelled meanwhile
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(result)


class WriterThread:
    """Runs calls one at a time, in submission order, in a thread of its own (started at the
    first call). A call whose caller was cancelled before it started is skipped."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, call: Callable[[], Result]) -> asyncio.Future[Result]:
        """`call()` in the thread; the future is done with its result or its exception."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Result] = loop.create_future()
        if self._thread is None:
            # A daemon: a store never closed must not keep the interpreter from exiting.
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((call, loop, answer))
        return answer

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, loop, answer = job
            if answer.cancelled():
                continue
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, whatever it is
                error = exc
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, answer, result, error)

    async def stop(self) -> None:
        """Finish the calls already submitted, then end the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
