"""SQLite specifics: `SqliteBackend`, connection settings, and the thread that commits appends.

Through aiosqlite every statement is a round trip between the event loop and aiosqlite's
thread, and under load each trip waits for the loop to come round: a batch of appends spent
more time waiting than working. `SqliteWriter` runs a whole transaction in its own thread, on
a plain sqlite3 connection, and answers once: one trip per batch, however many statements.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

from sqlalchemy import Engine, Insert, Table, event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chat_server.store.appends import Append, Outcome, append_batch
from chat_server.store.sqlite_appends import SqliteAppends
from chat_server.store.writer_thread import WriterThread

#: Execution option naming the `BEGIN` flavour our SQLite `begin` hook emits.
SQLITE_BEGIN_OPTION: Final = "chat_server_sqlite_begin"
_SQLITE_BEGIN_MODES: Final = frozenset({"DEFERRED", "IMMEDIATE"})

Arg = TypeVar("Arg")
Result = TypeVar("Result")


def _use_wal(cursor: Any, attempts: int = 5) -> None:
    """Put the database file in WAL mode: readers never block the writer nor wait for it.

    The mode is persistent, so normally this only reads it. Switching needs an exclusive lock
    and fails at once, without the busy handler, while another connection (another worker
    starting at the same moment) is switching too; then wait for that one and look again.
    """
    for _ in range(attempts):
        cursor.execute("PRAGMA journal_mode")
        if cursor.fetchone()[0] == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            # BEGIN IMMEDIATE does honour busy_timeout: it returns once the other is done.
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
            continue
        if cursor.fetchone()[0] == "wal":
            return
    raise sqlite3.OperationalError("could not switch the database to WAL mode")


def _make_private_if_new(cursor: Any) -> None:
    """A database file this connection just created (still empty) becomes 0600, like the secret
    kept beside it; SQLite gives its -wal and -shm files the database file's mode."""
    cursor.execute("PRAGMA database_list")
    path = next((row[2] for row in cursor.fetchall() if row[1] == "main"), "")
    with contextlib.suppress(OSError):  # not ours to change: leave it as the operator made it
        if path and os.stat(path).st_size == 0:
            os.chmod(path, 0o600)


def configure_connection(dbapi_connection: Any, busy_timeout_ms: int, foreign_keys: bool) -> None:
    """Our settings on a new sqlite3 connection, whoever opened it."""
    # Take BEGIN away from the driver: it would start transactions lazily, before DML only,
    # and always DEFERRED. Our callers emit the right one instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _make_private_if_new(cursor)
        # busy_timeout first: switching to WAL may itself have to wait for a lock.
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _use_wal(cursor)
        # FULL: the WAL is synced at every commit, so a receipted message survives power loss.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    finally:
        cursor.close()


def install_sqlite_hooks(engine: Engine, busy_timeout_ms: int, foreign_keys: bool) -> None:
    """Our settings on every new connection of `engine`, and the `BEGIN` our transactions need."""
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_connection(dbapi_connection, busy_timeout_ms, foreign_keys)

    def on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front, waiting up to busy_timeout for it, so a
        # read-then-write transaction can never fail half-way with SQLITE_BUSY(_SNAPSHOT).
        # Reads stay DEFERRED and never take the write lock.
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)


class SqliteWriter:
    """Write transactions of one SQLite file, each run whole in one dedicated thread, on a
    plain sqlite3 connection: the driver's own calls, no pool checkout or reset per batch.

    Workers of one deployment share the file, and SQLite makes a writer that finds it locked
    sleep and retry (1, 2, 5, 10, ... ms): under load two workers' batches took turns with
    sleeps in between. Each transaction here first takes an advisory lock on a file beside
    the database, which the kernel hands to the next waiter the moment it is released.
    """

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._lock_path = f"{path}-writer.lock"
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread = WriterThread("chat-sqlite-writer")

    async def run(self, work: Callable[[sqlite3.Connection, Arg], Result], arg: Arg) -> Result:
        """`work(connection, arg)` inside one `BEGIN IMMEDIATE` transaction, committed after."""
        return await self._thread.run(functools.partial(self._transaction, work, arg))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_ms / 1000,
                isolation_level=None,
                # Made, used and closed in the writer thread only; the flag spares close() a check.
                check_same_thread=False,
            )
            try:
                configure_connection(conn, self._busy_timeout_ms, foreign_keys=True)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection, Arg], Result], arg: Arg) -> Result:
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        # Blocks this thread only; the lock goes with the process should it die.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            conn = self._connection()
            # IMMEDIATE takes the write lock up front, waiting up to busy_timeout for it, so
            # the read-then-write transaction never fails half-way with SQLITE_BUSY.
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn, arg)
                conn.execute("COMMIT")
            except BaseException:
                self._roll_back(conn)
                raise
            return result
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # Whatever state it is in, a fresh connection is certain to be clean.
            self._close_connection()

    def _close_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _dispose(self) -> None:
        self._close_connection()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def close(self) -> None:
        await self._thread.run(self._dispose)
        await self._thread.stop()


def _append_batch(conn: sqlite3.Connection, appends: Sequence[Append]) -> list[Outcome]:
    return append_batch(SqliteAppends(conn), appends)


class SqliteBackend:
    """SQLite: reads through aiosqlite's pool, writes one at a time per process, and appends
    committed whole in a `SqliteWriter` thread.

    SQLite has one writer at a time anyway: queueing this process's writers on an asyncio lock
    spares them the busy handler's sleep-and-retry. `BEGIN IMMEDIATE` still orders other
    processes.
    """

    def __init__(
        self,
        url: str,
        path: pathlib.Path,
        *,
        pool_size: int,
        busy_timeout_ms: int,
        foreign_keys: bool,
        acquire_timeout_s: float,
    ) -> None:
        """Raises OSError when the database's directory cannot be made."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as the secret
        self._engine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=acquire_timeout_s,
            connect_args={"timeout": busy_timeout_ms / 1000},
        )
        install_sqlite_hooks(self._engine.sync_engine, busy_timeout_ms, foreign_keys)
        self._immediate = self._engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        self._write_lock = asyncio.Lock()
        self._path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        # Made at the first append: a migration or a read-only use never starts the thread.
        self._appender: SqliteWriter | None = None

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        async with self._write_lock, self._immediate.begin() as conn:
            yield conn

    async def append(self, appends: Sequence[Append]) -> list[Outcome]:
        if self._appender is None:
            self._appender = SqliteWriter(self._path, self._busy_timeout_ms)
        async with self._write_lock:
            return await self._appender.run(_append_batch, appends)

    def insert_if_absent(self, table: Table, values: Mapping[str, Any]) -> Insert:
        return sqlite_dialect.insert(table).values(values).on_conflict_do_nothing()

    async def before_migration(self, conn: AsyncConnection) -> None:
        """Nothing to do: `BEGIN IMMEDIATE` already queues concurrent migrators."""

    async def after_migration(self, conn: AsyncConnection) -> None:
        # Migrations run with foreign keys off (batch table rebuilds would cascade deletes
        # into child tables), so verify them once the rebuilds are done.
        broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
        if broken:
            raise RuntimeError(f"migration left dangling foreign keys: {broken!r}")

    async def close(self) -> None:
        if self._appender is not None:
            await self._appender.close()
            self._appender = None
        await self._engine.dispose()
