"""SqliteWriter: a whole transaction per trip to its thread, and writers of one file (one per
worker process) queue on an advisory lock instead of SQLite's sleep-and-retry."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from chat_server.models import NewMessage, UserId
from chat_server.store.migrate import migrate
from chat_server.store.sql import open_store
from chat_server.store.sqlite import SqliteWriter


async def test_a_second_writer_waits_for_the_first_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    await migrate(f"sqlite:///{path}")  # creates the schema
    # A busy timeout far shorter than the first transaction: SQLite alone would give up.
    first, second = SqliteWriter(str(path), 10), SqliteWriter(str(path), 10)
    inside, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection, _: None) -> int:
        conn.execute("UPDATE rooms SET last_seq = last_seq WHERE 0")
        inside.set()
        release.wait(10)
        return 1

    def write(conn: sqlite3.Connection, _: None) -> int:
        return int(conn.execute("SELECT count(*) FROM rooms").fetchone()[0])

    try:
        holding = asyncio.ensure_future(first.run(hold, None))
        await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
        waiting = asyncio.ensure_future(second.run(write, None))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done  # queued behind the first, not failed with "database is locked"
        release.set()
        assert await holding == 1
        assert await waiting == 0
    finally:
        release.set()
        await first.close()
        await second.close()


async def test_appended_ids_are_the_stored_ones_and_never_reused(tmp_path: Path) -> None:
    """The SQLite appender gives a batch its ids itself, under the write lock: each must be the
    row's, and above every id ever given, even once the newest row is gone (AUTOINCREMENT)."""
    path = tmp_path / "chat.db"
    url = f"sqlite:///{path}"
    await migrate(url)
    store = await open_store(url)
    try:
        rooms = [
            await store.create_group_room(UserId(f"u{n}"), f"room {n}", [UserId("peer")])
            for n in range(3)
        ]
        sends = [
            store.append_message(NewMessage(rooms[n % 3].id, UserId(f"u{n % 3}"), f"m{n}"))
            for n in range(10)
        ]
        first = [result.message for result in await asyncio.gather(*sends)]
        for room in rooms:
            stored = await store.messages(room.id, limit=100)
            assert sorted((m.id, m.seq, m.content) for m in stored) == [
                (m.id, m.seq, m.content) for m in first if m.room_id == room.id
            ]
        newest = max(m.id for m in first)
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM messages WHERE id = ?", (newest,))
        later = await store.append_message(NewMessage(rooms[0].id, UserId("u0"), "after"))
        assert later.message.id > newest
    finally:
        await store.close()
