"""Store fixtures: a freshly migrated database for each backend under test."""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chat_server.models import Room, UserId
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, build_engine, open_store

#: Set to a PostgreSQL URL whose database the tests may wipe, to also run every store test there.
POSTGRES_URL_ENV = "CHAT_TEST_POSTGRES_URL"

BACKENDS = ["sqlite", *(["postgresql"] if os.environ.get(POSTGRES_URL_ENV) else [])]

# The store's own tables, dropped before each PostgreSQL test (never anything else).
_STORE_TABLES = ("messages", "room_members", "rooms", "alembic_version")

StoreOpener = Callable[..., Awaitable[SqlStore]]


async def _reset_postgres(url: str) -> None:
    engine = build_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {', '.join(_STORE_TABLES)} CASCADE")
    finally:
        await engine.dispose()


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """An empty, migrated database of the parametrised backend."""
    backend: str = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'chat.db'}"
    else:
        url = os.environ[POSTGRES_URL_ENV]
        await _reset_postgres(url)
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
