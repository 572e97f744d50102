"""PostgreSQL specifics on real private servers: sslmode, the pool (size, acquire deadline,
broken connections), migrations from nothing, and the `chat-server` command on `postgres://`."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.errors import StoreUnavailable
from chat_server.models import UserId
from chat_server.store.engine import build_engine
from chat_server.store.migrate import current_revision, head_revision, migrate
from chat_server.store.sql import SqlStore, open_store
from chat_server.web.app import create_app
from chat_server.web.services import SERVICES
from tests.conftest import SECRET, AiohttpClient
from tests.postgres import PostgresDatabases
from tests.services import PostgresServer, require_binary

ALICE, BOB = UserId("alice"), UserId("bob")


def heroku_form(url: str) -> str:
    """The same URL as Heroku writes it: `postgres://`."""
    return "postgres://" + url.removeprefix("postgresql://")


async def _revision(url: str) -> str | None:
    engine = build_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(current_revision)
    finally:
        await engine.dispose()


async def _uses_ssl(store: SqlStore) -> bool:
    async with store.engine.connect() as conn:
        found = await conn.scalar(text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    return bool(found)


# --- sslmode -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssl_postgres() -> Iterator[PostgresServer]:
    """A private server with TLS on (a throwaway self-signed certificate)."""
    openssl = require_binary("openssl")
    root = tempfile.mkdtemp(prefix="chat-test-pgssl-")
    server = PostgresServer(root)
    try:
        server.start()
        cert, key = server.root / "server.crt", server.root / "server.key"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )
        key.chmod(0o600)
        if os.geteuid() == 0:
            for path in (cert, key):
                shutil.chown(path, "postgres", "postgres")
        # TLS can be switched on by a reload: no restart, no change to PostgresServer.
        engine = build_engine(server.url, pool_size=1)

        async def enable() -> None:
            try:
                async with engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    for name, value in (("ssl_cert_file", cert), ("ssl_key_file", key)):
                        await conn.exec_driver_sql(f"ALTER SYSTEM SET {name} = '{value}'")
                    await conn.exec_driver_sql("ALTER SYSTEM SET ssl = on")
                    await conn.exec_driver_sql("SELECT pg_reload_conf()")
            finally:
                await engine.dispose()

        asyncio.run(enable())
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def test_sslmode_require_connects_over_tls(ssl_postgres: PostgresServer) -> None:
    deadline = time.monotonic() + 5
    while True:  # the reload is asynchronous: give the postmaster a moment
        store = await open_store(heroku_form(ssl_postgres.url) + "?sslmode=require")
        try:
            assert await _uses_ssl(store)
            break
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            await store.close()


async def test_sslmode_disable_connects_in_the_clear(ssl_postgres: PostgresServer) -> None:
    store = await open_store(heroku_form(ssl_postgres.url) + "?sslmode=disable")
    try:
        assert not await _uses_ssl(store)
    finally:
        await store.close()


async def test_sslmode_require_refuses_a_server_without_tls(postgres_url: str) -> None:
    store = await open_store(postgres_url + "?sslmode=require")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
    allowed = await open_store(postgres_url + "?sslmode=prefer")
    try:
        await allowed.ping()
        assert not await _uses_ssl(allowed)
    finally:
        await allowed.close()


# --- the pool ----------------------------------------------------------------------------------


async def _chat_server_backends(url: str) -> int:
    engine = build_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'chat_server' AND pid <> pg_backend_pid()"
                )
            )
    finally:
        await engine.dispose()
    return int(found or 0)


async def test_pool_opens_at_most_pool_size_connections(postgres_url: str) -> None:
    store = await open_store(postgres_url, pool_size=3)
    try:
        room = await store.create_group_room(ALICE, "team", [BOB])

        async def slow() -> None:
            async with store.engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(0.05)"))

        await asyncio.gather(*(slow() for _ in range(12)))
        assert room.id
        assert await _chat_server_backends(postgres_url) == 3
    finally:
        await store.close()
    assert await _chat_server_backends(postgres_url) == 0


async def test_pool_acquire_waits_at_most_the_acquire_timeout(database_url: str) -> None:
    store = await open_store(database_url, pool_size=1, acquire_timeout_s=0.3)
    try:
        async with store.engine.connect() as held:
            await held.execute(text("SELECT 1"))
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.ping()
            waited = time.monotonic() - started
        assert 0.25 <= waited < 3, waited
        await store.ping()  # the connection is back: the next caller gets it at once
    finally:
        await store.close()


async def test_broken_pooled_connections_are_replaced_not_handed_out(postgres_url: str) -> None:
    store = await open_store(postgres_url, pool_size=2)
    try:
        room = await store.create_group_room(ALICE, "team", [BOB])
        engine = build_engine(postgres_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'chat_server' AND pid <> pg_backend_pid() "
                        "AND datname = current_database()"
                    )
                )
        finally:
            await engine.dispose()
        assert killed
        # What a failover does to every pooled connection: none of it reaches the caller.
        assert await store.get_room(room.id) == room
    finally:
        await store.close()


async def test_settings_size_the_apps_pool_and_its_deadline(
    aiohttp_client: AiohttpClient, postgres_url: str
) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": heroku_form(postgres_url),
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_DB_POOL_SIZE": "4",
            "CHAT_DB_ACQUIRE_TIMEOUT_S": "1.5",
        }
    )
    assert (settings.db_pool_size, settings.db_acquire_timeout_s) == (4, 1.5)
    client = await aiohttp_client(create_app(settings))
    store = client.app[SERVICES].store
    assert isinstance(store, SqlStore)
    pool: Any = store.engine.pool
    assert (pool.size(), pool.timeout()) == (4, 1.5)
    assert Settings().db_acquire_timeout_s == 5.0


async def test_exhausted_pool_is_503_with_retry_after_not_a_queue(
    aiohttp_client: AiohttpClient, postgres_url: str
) -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": postgres_url,
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_DB_POOL_SIZE": "1",
            "CHAT_DB_ACQUIRE_TIMEOUT_S": "0.3",
        }
    )
    client = await aiohttp_client(create_app(settings))
    token = {"Authorization": f"Bearer {TokenAuthority(SECRET).mint('alice')}"}
    store = client.app[SERVICES].store
    assert isinstance(store, SqlStore)
    async with store.engine.connect() as held:  # the worker's only connection, busy
        await held.execute(text("SELECT 1"))
        started = time.monotonic()
        response = await client.get("/api/chat-rooms", headers=token)
        waited = time.monotonic() - started
        assert response.status == 503
        assert response.headers.get("Retry-After")
        assert (await response.json())["error"]["code"] == "unavailable"
    assert 0.25 <= waited < 3, waited
    again = await client.get("/api/chat-rooms", headers=token)
    assert again.status == 200


# --- migrations --------------------------------------------------------------------------------


@pytest.fixture
async def empty_postgres(postgres_databases: PostgresDatabases) -> Any:
    url = await postgres_databases.create_empty()
    try:
        yield url
    finally:
        await postgres_databases.drop(url)


async def test_concurrent_migrations_of_a_new_postgres_database_both_succeed(
    empty_postgres: str,
) -> None:
    # Separate engines, as separate workers starting at once: the advisory lock queues them.
    await asyncio.gather(*(migrate(empty_postgres) for _ in range(4)))
    assert await _revision(empty_postgres) == head_revision()


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chat_server", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(DATABASE_URL=database_url, CHAT_JWT_SECRET=SECRET)
    return env


async def test_two_migrate_processes_on_a_new_postgres_database_both_succeed(
    empty_postgres: str,
) -> None:
    env = _env(heroku_form(empty_postgres))
    processes = [_cli(env, "migrate") for _ in range(2)]
    for process in processes:
        output, _ = await asyncio.to_thread(process.communicate, timeout=60)
        assert process.returncode == 0, output
    assert await _revision(empty_postgres) == head_revision()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_serve_on_a_heroku_style_postgres_url(empty_postgres: str) -> None:
    """`DATABASE_URL=postgres://… CHAT_JWT_SECRET=… chat-server serve`, as the README shows."""
    env = _env(heroku_form(empty_postgres) + "?sslmode=disable")
    migrated = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "chat_server", "migrate"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    token = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "chat_server", "token", "alice"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    port = _free_port()
    server = _cli(env, "serve", "--port", str(port))
    try:
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                try:
                    async with http.get(f"{base}/readyz") as ready:
                        if ready.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                await asyncio.sleep(0.1)
            async with http.post(
                f"{base}/api/chat-rooms", json={"participantId": "bob"}, headers=headers
            ) as created:
                assert created.status == 201, await created.text()
            async with http.post(
                f"{base}/api/chat-rooms", json={"participantId": "bob"}, headers=headers
            ) as again:
                assert again.status == 409
    finally:
        server.terminate()
        output, _ = await asyncio.to_thread(server.communicate, timeout=30)
    assert server.returncode == 0, output
