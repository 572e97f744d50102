"""SqliteWriter: a whole transaction per trip to its thread, and writers of one file (one per
worker process) queue on an advisory lock instead of SQLite's sleep-and-retry."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from chat_server.store.migrate import migrate
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
