"""WriterThread: calls run one at a time in submission order, each answered on its loop."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from chat_server.store.writer_thread import WriterThread


async def test_calls_run_in_order_in_one_thread_other_than_the_loops() -> None:
    writer = WriterThread("test-writer")
    seen: list[tuple[int, str]] = []

    def call(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 10

    try:
        results = await asyncio.gather(*(writer.run(functools.partial(call, n)) for n in range(20)))
    finally:
        await writer.stop()
    assert results == [n * 10 for n in range(20)]
    assert [n for n, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"test-writer"}


async def test_an_exception_reaches_its_caller_and_spares_the_next_call() -> None:
    writer = WriterThread("test-writer")

    def fail() -> int:
        raise ValueError("boom")

    try:
        failing, fine = writer.run(fail), writer.run(lambda: 2)
        with pytest.raises(ValueError, match="boom"):
            await failing
        assert await fine == 2
    finally:
        await writer.stop()


async def test_a_call_cancelled_before_it_starts_is_skipped() -> None:
    writer = WriterThread("test-writer")
    inside, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def hold() -> None:
        inside.set()
        release.wait(10)

    try:
        holding = writer.run(hold)
        await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
        skipped = writer.run(lambda: ran.append("skipped"))
        after = writer.run(lambda: ran.append("after"))
        skipped.cancel()
        release.set()
        await holding
        await after
    finally:
        release.set()
        await writer.stop()
    assert ran == ["after"]


async def test_stop_finishes_what_was_submitted() -> None:
    writer = WriterThread("test-writer")
    release = threading.Event()
    first, last = writer.run(lambda: release.wait(10)), writer.run(lambda: "last")
    release.set()
    await writer.stop()
    assert first.done() and last.done()
    assert last.result() == "last"
