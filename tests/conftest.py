"""Shared fixtures: a server on a temp SQLite (or private PostgreSQL) database, tokens, and STOMP
clients."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.web.app import create_app
from chat_server.web.services import SETTINGS
from chat_server.web.serving import ChatRunner
from tests.postgres import PostgresDatabases
from tests.services import PostgresServer
from tests.stomp_client import StompClient

# metrics, store and fanout: the parts behind a socket (tests/store overrides `store`).
pytest_plugins = ["tests.fanout_fixtures"]

SECRET = "test-secret-that-is-long-enough-for-hs256"

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]


class ChatTestServer(TestServer):
    """aiohttp's test server on ChatRunner, the runner `serve` and the gunicorn workers use:
    its connections time their request heads and check WebSocket frames (web/serving.py)."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        head_timeout_s = self.app[SETTINGS].request_head_timeout_s
        return ChatRunner(self.app, head_timeout_s=head_timeout_s, **kwargs)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL for the whole session (never the machine's own on 5432); skipped,
    through `require_binary`, only where PostgreSQL is not installed.

    Its directory is not under pytest's numbered temp dirs: another pytest session starting on
    the same machine may delete all but the newest three of those while this one still runs.
    """
    root = tempfile.mkdtemp(prefix="chat-test-pg-")
    try:
        server = PostgresServer(root)
        try:
            server.start()
            yield server
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: PostgresServer) -> PostgresDatabases:
    return PostgresDatabases(postgres_server)


@pytest.fixture
async def postgres_url(postgres_databases: PostgresDatabases) -> str:
    """The session PostgreSQL's shared database, migrated, its tables emptied for this test."""
    return await postgres_databases.empty_shared()


@pytest.fixture
def db_backend() -> str:
    """The database behind `settings`; tests/e2e and tests/web parametrise it over both."""
    return "sqlite"


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if db_backend == "sqlite":
        return f"sqlite:///{tmp_path}/chat.db"
    assert db_backend == "postgresql", db_backend
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        jwt_secret=SECRET,
        frames_per_s=0,  # tests of the frame budget turn it back on
    )


@pytest.fixture
def tokens() -> TokenAuthority:
    return TokenAuthority(SECRET)


@pytest.fixture
def auth(tokens: TokenAuthority) -> Callable[[str], dict[str, str]]:
    def headers(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.mint(user)}"}

    return headers


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings))


StompFactory = Callable[..., Awaitable[StompClient]]


@pytest.fixture
async def stomp(
    client: TestClient[Any, Any], tokens: TokenAuthority
) -> AsyncIterator[StompFactory]:
    """`await stomp("alice")`: a CONNECTed client; `await stomp(None)`: a raw socket."""
    opened: list[StompClient] = []

    async def open_client(user: str | None, *, protocols: tuple[str, ...] = ("v12.stomp",),
                          **connect_headers: str) -> StompClient:
        ws = await client.ws_connect("/ws", protocols=protocols)
        stomp_client = StompClient(ws)
        opened.append(stomp_client)
        if user is not None:
            await stomp_client.connect(tokens.mint(user), **connect_headers)
        return stomp_client

    yield open_client
    for stomp_client in opened:
        await stomp_client.ws.close()


async def create_direct_room(client: TestClient[Any, Any], tokens: TokenAuthority,
                             user: str, other: str) -> int:
    response = await client.post(
        "/api/chat-rooms", json={"participantId": other},
        headers={"Authorization": f"Bearer {tokens.mint(user)}"},
    )
    assert response.status == 201, await response.text()
    room_id: int = (await response.json())["id"]
    return room_id




def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (CI=true) a skipped test fails the run: every real part must be present there."""
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        print(f"\nCI=true: {len(skipped)} test(s) skipped; failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
