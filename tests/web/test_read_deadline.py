"""ReadDeadline: one timer per connection ends the reader's wait once the peer is late."""

from __future__ import annotations

import asyncio
import time

import pytest

from chat_server.web.read_deadline import ReadDeadline


class Reader:
    """A stand-in for the WebSocket reader: waits on `arrived` under a ReadDeadline."""

    def __init__(self, deadline_in_s: float | None) -> None:
        self.deadline: float | None = (
            None if deadline_in_s is None else time.monotonic() + deadline_in_s
        )
        self.arrived = asyncio.Event()
        self.waiting = asyncio.Event()
        self.timed_out_at: float | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.timer = ReadDeadline(lambda: self.deadline, self.task)

    async def _run(self) -> str:
        await asyncio.sleep(0)  # let the constructor finish making the timer
        if not self.timer.arm():
            return "late before waiting"
        self.timer.waiting = True
        self.waiting.set()
        try:
            await self.arrived.wait()
        except asyncio.CancelledError:
            if not self.timer.claim_cancel():
                raise
            self.timed_out_at = time.monotonic()
            return "timed out"
        finally:
            self.timer.waiting = False
            self.timer.cancel()
        return "heard from"


async def test_a_silent_peer_is_timed_out_at_its_deadline() -> None:
    reader = Reader(0.05)
    assert await reader.task == "timed out"
    assert reader.deadline is not None and reader.timed_out_at is not None
    assert reader.timed_out_at >= reader.deadline


async def test_a_deadline_already_past_is_reported_before_waiting() -> None:
    reader = Reader(-1.0)
    assert await reader.task == "late before waiting"


async def test_a_peer_that_speaks_in_time_is_not_cut() -> None:
    reader = Reader(5.0)
    await reader.waiting.wait()
    reader.arrived.set()
    assert await reader.task == "heard from"


async def test_no_deadline_means_no_timer() -> None:
    reader = Reader(None)
    await reader.waiting.wait()
    assert reader.timer._handle is None
    reader.arrived.set()
    assert await reader.task == "heard from"


async def test_a_deadline_moved_later_is_found_when_the_timer_fires() -> None:
    reader = Reader(0.03)
    await reader.waiting.wait()
    later = time.monotonic() + 0.15
    reader.deadline = later  # the peer spoke: the armed timer is now early
    assert await reader.task == "timed out"
    assert reader.timed_out_at is not None and reader.timed_out_at >= later


async def test_a_nearer_deadline_moves_the_timer() -> None:
    reader = Reader(60.0)
    await reader.waiting.wait()
    nearer = time.monotonic() + 0.05
    reader.deadline = nearer  # e.g. a frame left incomplete
    assert reader.timer.arm()
    assert await reader.task == "timed out"
    assert reader.timed_out_at is not None and reader.timed_out_at >= nearer


async def test_another_cancel_is_passed_on_even_when_the_deadline_also_fired() -> None:
    reader = Reader(60.0)
    await reader.waiting.wait()
    reader.deadline = time.monotonic() - 1.0
    reader.timer._fire()  # the deadline cancels the reader...
    assert reader.timer.expired
    reader.task.cancel()  # ...and, in the same iteration, so does a shutdown
    with pytest.raises(asyncio.CancelledError):
        await reader.task


async def test_a_reader_busy_with_a_frame_is_not_cancelled() -> None:
    done = asyncio.Event()
    task = asyncio.get_running_loop().create_task(done.wait())
    timer = ReadDeadline(lambda: time.monotonic() - 1.0, task)
    timer._set(time.monotonic(), time.monotonic())  # fires at once, with the reader not waiting
    await asyncio.sleep(0)  # one loop iteration: the timer's callback runs
    await asyncio.sleep(0)
    assert not timer.expired and not task.cancelled()
    done.set()
    await task
