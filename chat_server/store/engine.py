"""The backend for a `DATABASE_URL`, and database failures turned into `StoreUnavailable`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_server.errors import StoreUnavailable
from chat_server.store.backend import Backend
from chat_server.store.postgres import PostgresBackend
from chat_server.store.sqlite import SqliteBackend
from chat_server.store.urls import engine_url, sqlite_path

#: Longest wait for a pooled connection before the request is refused (no unbounded queue);
#: the default of the `db_acquire_timeout_s` setting.
POOL_TIMEOUT_S: Final = 5.0

# What a broken, busy, full or unreachable database raises; `IntegrityError` is handled
# before this wherever it has a domain meaning.
_DATABASE_FAILURES: Final[tuple[type[BaseException], ...]] = (
    SQLAlchemyError,
    sqlite3.Error,
    OSError,  # includes ConnectionError and TimeoutError
)


@contextmanager
def unavailable_on_failure() -> Iterator[None]:
    """Re-raise any database failure as `StoreUnavailable` (the cause stays chained)."""
    try:
        yield
    except _DATABASE_FAILURES as exc:
        # The message names the kind only: driver text may carry SQL and parameters.
        raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc


def backend_for(
    database_url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 5000,
    foreign_keys: bool = True,
    acquire_timeout_s: float = POOL_TIMEOUT_S,
) -> Backend:
    """The backend for a contract `DATABASE_URL`; nothing connects until it is first used.

    Raises ValueError for an unsupported URL, `StoreUnavailable` when a SQLite file's directory
    cannot be made. `foreign_keys=False` is for migrations only: SQLite batch table rebuilds
    would otherwise cascade deletes into child tables.
    """
    url = engine_url(database_url)
    path = sqlite_path(database_url)
    if path is None:
        return PostgresBackend(url, pool_size=pool_size, acquire_timeout_s=acquire_timeout_s)
    with unavailable_on_failure():
        return SqliteBackend(
            url,
            path,
            pool_size=pool_size,
            busy_timeout_ms=busy_timeout_ms,
            foreign_keys=foreign_keys,
            acquire_timeout_s=acquire_timeout_s,
        )


def build_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    busy_timeout_ms: int = 5000,
    acquire_timeout_s: float = POOL_TIMEOUT_S,
) -> AsyncEngine:
    """Just the async engine of `backend_for` (with our per-connection SQLite settings), for
    direct SQL; the caller disposes of it."""
    backend = backend_for(
        database_url,
        pool_size=pool_size,
        busy_timeout_ms=busy_timeout_ms,
        acquire_timeout_s=acquire_timeout_s,
    )
    return backend.engine
