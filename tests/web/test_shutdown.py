"""`serve`'s stop (web/shutdown.py): signals after the first change nothing, and the tasks left
after the app's cleanup are waited for no longer than the grace."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import pytest

from chat_server.web.shutdown import StopSignals, cancel_leftovers


async def test_the_first_signal_asks_for_the_stop_and_a_repeat_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chat_server.web.shutdown")
    loop = asyncio.get_running_loop()
    signals = StopSignals()
    signals.install(loop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(signals.requested.wait(), 5)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0)  # the loop runs the handler on its next turn
        await asyncio.sleep(0)
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
    assert signals.requested.is_set()
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("SIGTERM: shutting down") == 1
    assert messages.count("SIGINT again: already shutting down") == 1


def test_leftover_tasks_are_cancelled_and_waited_for_at_most_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    finished: list[str] = []
    relent = asyncio.Event()  # the test's own way to end the stubborn task afterwards

    async def obliging() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append("obliging")

    async def stubborn() -> None:
        while not relent.is_set():  # swallows every cancellation
            with contextlib.suppress(asyncio.CancelledError):
                await relent.wait()

    try:
        gone = loop.create_task(obliging(), name="obliging")
        left = loop.create_task(stubborn(), name="stubborn")
        loop.run_until_complete(asyncio.sleep(0))  # both have started
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            cancel_leftovers(loop, 0.2)
        waited = time.monotonic() - started
        assert finished == ["obliging"] and gone.cancelled()
        assert not left.done()
        assert waited < 5  # bounded by the grace, not by the stubborn task
        assert "1 task(s) still running 0.2 s after the shutdown, left behind: stubborn" in (
            caplog.text
        )
    finally:
        relent.set()
        if pending := asyncio.all_tasks(loop):
            loop.run_until_complete(asyncio.wait(pending))
        loop.close()
