"""Store fixtures: a freshly migrated database for each backend under test.

PostgreSQL is the session's private server (tests/conftest.py `postgres_server`), always on; the
only way it is left out is a skip where PostgreSQL is not installed (which fails the run in CI).
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chat_server.models import Room, UserId
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, open_store
from tests.postgres import PostgresDatabases

BACKENDS = ["sqlite", "postgresql"]

StoreOpener = Callable[..., Awaitable[SqlStore]]


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """An empty, migrated database of the parametrised backend."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'chat.db'}"
    else:
        # Looked up only here: SQLite runs need no PostgreSQL at all.
        databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
        url = await databases.empty_shared()
    await migrate(url)
    return url


@pytest.fixture
def is_sqlite(database_url: str) -> bool:
    return database_url.startswith("sqlite")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    opened = await open_store(database_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def open_another(database_url: str) -> AsyncIterator[StoreOpener]:
    """Opens further stores on the same database (as other worker processes would)."""
    opened: list[SqlStore] = []

    async def opener(**options: Any) -> SqlStore:
        another = await open_store(database_url, **options)
        opened.append(another)
        return another

    try:
        yield opener
    finally:
        for another in opened:
            await another.close()


@pytest.fixture
async def room(store: SqlStore) -> Room:
    """A group room of alice (creator), bob and carol."""
    return await store.create_group_room(UserId("alice"), "team", [UserId("bob"), UserId("carol")])
