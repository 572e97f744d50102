"""Closing a store (and a migration's engine) finishes even when the closing task is cancelled.

A shutdown cancels what is left of the server's tasks; a close cut short there left pooled
connections open and SQLAlchemy's pool logging a `CancelledError` traceback (issue 17, item 6).
The cancellation lands after a varying number of event-loop steps, so somewhere inside the
engine's dispose, the SQLite writer's thread or the queued appends.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy.pool import Pool, QueuePool

from chat_server.models import NewMessage, UserId
from chat_server.store import migrate as migrate_module
from chat_server.store.backend import Backend
from chat_server.store.closing import close_fully
from chat_server.store.engine import backend_for
from chat_server.store.sql import open_store
from tests.waiting import eventually

ALICE, BOB = UserId("alice"), UserId("bob")
#: Event-loop steps between the start of the close and its cancellation.
STEPS = [1, 2, 3, 4, 6, 8, 12, 20]


def store_threads() -> set[threading.Thread]:
    """aiosqlite's connection threads and the SQLite writer's thread."""
    return {thread for thread in threading.enumerate()
            if thread.name.startswith("chat-sqlite-writer") or "_connection_worker" in thread.name}


def queue_pool(pool: Pool) -> QueuePool:
    assert isinstance(pool, QueuePool), pool  # both backends pool with a queue
    return pool


async def steps_then_cancel(task: asyncio.Task[None], steps: int) -> None:
    """Cancel `task` after `steps` turns of the loop (unless it finished already)."""
    for _ in range(steps):
        await asyncio.sleep(0)
    if not task.cancel():
        await task
        return
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("steps", STEPS)
async def test_store_close_completes_when_cancelled_midway(database_url: str, steps: int) -> None:
    before = store_threads()
    store = await open_store(database_url, pool_size=4)
    room = await store.create_direct_room(ALICE, BOB)
    # Several pooled connections, a queued append and (on SQLite) the writer's thread.
    await asyncio.gather(*(store.rooms_of(ALICE) for _ in range(4)))
    appended = store.append_message(NewMessage(room.id, ALICE, "last words", None))
    pool = queue_pool(store.engine.pool)
    assert pool.checkedin() > 0

    closing = asyncio.create_task(close_fully(store.close()))
    await steps_then_cancel(closing, steps)

    assert (await appended).message.content == "last words"  # answered before the pool went
    assert pool.checkedin() == 0, pool.status()
    await eventually(lambda: not (store_threads() - before), 5,
                     "the store's threads ended", lambda: repr(store_threads() - before))


async def test_a_close_cancelled_without_close_fully_leaves_connections_open(
    database_url: str,
) -> None:
    """What close_fully is for: the same cancellation, unshielded, cuts the close short."""
    store = await open_store(database_url, pool_size=4)
    await asyncio.gather(*(store.rooms_of(ALICE) for _ in range(4)))
    pool = queue_pool(store.engine.pool)
    opened = pool.checkedin()
    assert opened > 1
    closing = asyncio.create_task(store.close())
    await steps_then_cancel(closing, 2)
    try:
        assert pool.checkedin() > 0
    finally:
        await store.close()


@pytest.mark.parametrize("steps", STEPS)
async def test_migration_closes_its_engine_when_cancelled_while_closing(
    database_url: str, steps: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`migrate`, cancelled while it closes its engine, still closes it to the end."""
    closing_began = asyncio.Event()
    pools: list[QueuePool] = []

    def watched_backend_for(*args: Any, **kwargs: Any) -> Backend:
        backend = backend_for(*args, **kwargs)
        close = backend.close
        pools.append(queue_pool(backend.engine.pool))

        async def announced_close() -> None:
            closing_began.set()
            await close()

        monkeypatch.setattr(backend, "close", announced_close)
        return backend

    monkeypatch.setattr(migrate_module, "backend_for", watched_backend_for)
    before = store_threads()
    migrating = asyncio.create_task(migrate_module.migrate(database_url))
    await closing_began.wait()
    await steps_then_cancel(migrating, steps)
    assert pools[0].checkedin() == 0, pools[0].status()
    await eventually(lambda: not (store_threads() - before), 5,
                     "the migration's threads ended", lambda: repr(store_threads() - before))
