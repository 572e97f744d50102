"""Migrations build exactly the schema that schema.py describes, and are safe to repeat."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from chat_server.errors import StoreUnavailable
from chat_server.models import RoomId, UserId
from chat_server.store.engine import build_engine
from chat_server.store.migrate import alembic_config, current_revision, head_revision, migrate
from chat_server.store.schema import metadata
from chat_server.store.sql import open_store


async def _inspect(database_url: str, probe: Any) -> Any:
    engine = build_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(probe)
    finally:
        await engine.dispose()


def _tables(connection: Connection) -> dict[str, set[str]]:
    inspector = inspect(connection)
    return {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in inspector.get_table_names()
    }


def _schema_diff(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


def _unique_and_indexes(connection: Connection) -> dict[str, set[tuple[str, ...]]]:
    inspector = inspect(connection)
    found: dict[str, set[tuple[str, ...]]] = {}
    for table in metadata.tables:
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
        indexes = {tuple(str(c) for c in i["column_names"]) for i in inspector.get_indexes(table)}
        found[table] = uniques | indexes
    return found


async def test_migrated_database_is_at_head(database_url: str) -> None:
    assert head_revision() == "0002"
    assert await _inspect(database_url, current_revision) == head_revision()


async def test_migrated_tables_and_columns_match_schema_module(database_url: str) -> None:
    tables = await _inspect(database_url, _tables)
    expected = {name: {c.name for c in table.columns} for name, table in metadata.tables.items()}
    assert tables.pop("alembic_version") == {"version_num"}
    tables.pop("sqlite_sequence", None)
    assert tables == expected


async def test_migrated_schema_has_no_differences_from_metadata(database_url: str) -> None:
    assert await _inspect(database_url, _schema_diff) == []


async def test_migrated_schema_has_the_unique_keys_the_store_relies_on(database_url: str) -> None:
    found = await _inspect(database_url, _unique_and_indexes)
    assert ("direct_key",) in found["rooms"]
    assert ("user_id",) in found["room_members"]
    assert ("room_id", "seq") in found["messages"]
    assert ("room_id", "sender_id", "client_message_id") in found["messages"]


async def test_migrating_again_is_a_no_op(database_url: str) -> None:
    before = await _inspect(database_url, _tables)
    await migrate(database_url)
    await migrate(database_url)
    assert await _inspect(database_url, _tables) == before
    assert await _inspect(database_url, current_revision) == head_revision()


async def test_concurrent_migrations_of_a_new_database_both_succeed(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'chat.db'}"
    await asyncio.gather(migrate(url), migrate(url))
    assert await _inspect(url, current_revision) == head_revision()


async def test_migrate_creates_the_sqlite_directory(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'chat.db'}"
    await migrate(url)
    assert (tmp_path / "a" / "b" / "chat.db").is_file()


async def test_unreachable_database_gives_store_unavailable(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        await migrate(f"sqlite:///{tmp_path / 'file' / 'chat.db'}")


def _upgrade_to(revision: str) -> Callable[[Connection], None]:
    """Upgrade to `revision` only (migrate() always goes to head)."""

    def upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return upgrade


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_read_markers_start_at_each_members_own_last_message(
    backend: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    """Migration 0002 on a database with history: every member has read what they wrote, so
    their unread count is others' messages only (the store keeps it so from then on)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        databases = request.getfixturevalue("postgres_databases")
        url = await databases.create_empty()
    engine = build_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to("0001"))
            await conn.exec_driver_sql(
                "INSERT INTO rooms (id, kind, name, created_by, created_at_ms, last_activity_ms,"
                " last_seq) VALUES (1, 'group', 'old', 'alice', 0, 0, 3)")
            for user in ("alice", "bob", "carol"):
                await conn.exec_driver_sql(
                    "INSERT INTO room_members (room_id, user_id, joined_at_ms)"
                    f" VALUES (1, '{user}', 0)")
            for seq, sender in ((1, "alice"), (2, "bob"), (3, "alice")):
                await conn.exec_driver_sql(
                    "INSERT INTO messages (room_id, seq, sender_id, content, created_at_ms)"
                    f" VALUES (1, {seq}, '{sender}', 'm', 0)")
    finally:
        await engine.dispose()
    await migrate(url)
    store = await open_store(url)
    try:
        assert await store.reads(RoomId(1)) == {"alice": 3, "bob": 2, "carol": 0}
        unread = {user: (await store.rooms_of(UserId(user)))[0].unread_count
                  for user in ("alice", "bob", "carol")}
        assert unread == {"alice": 0, "bob": 1, "carol": 3}
    finally:
        await store.close()
