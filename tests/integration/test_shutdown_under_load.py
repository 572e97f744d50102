"""`chat-server serve` stopped under load: SIGTERM, SIGTERM twice, SIGINT.

Each run starts a private server on its own SQLite file (or the session's private PostgreSQL),
has a few STOMP senders and a REST
poster write to one room, signals the process mid-stream, and then checks what an operator and a
client rely on: exit status 0, no traceback in the output, and every message that was
acknowledged (a RECEIPT, or a 201) is in the database. A clean stop is a matter of luck at any
one moment (the issue saw a traceback about once in a dozen), so each way is run many times.

For the second SIGTERM to land inside the shutdown every time, those runs add a REST request
whose body never finishes: the shutdown waits for it, at most CHAT_SHUTDOWN_GRACE_S, and then
cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text

from chat_server.store.engine import build_engine
from tests.integration.conftest import (
    ClientFactory,
    Sender,
    Worker,
    bearer,
    create_group_room,
    tokens,
    worker_env,
)
from tests.services import LOCALHOST
from tests.waiting import eventually

#: Runs per way of stopping and database; each takes a second or two.
RUNS = {"sqlite": 10, "postgresql": 4}
CASES = [(database, run) for database, runs in RUNS.items() for run in range(runs)]
SENDERS = 4
#: Acknowledged messages before the signal: the server is busy writing when it arrives.
RECEIPTS_BEFORE_SIGNAL = 40
#: CHAT_SHUTDOWN_GRACE_S in these runs: how long the shutdown waits for a silent client.
GRACE_S = 2.0
EXIT_TIMEOUT_S = 30.0
WAYS = {
    "sigterm": (signal.SIGTERM,),
    "sigterm-twice": (signal.SIGTERM, signal.SIGTERM),
    "sigint": (signal.SIGINT,),
}


class RestPoster:
    """Posts messages over REST one after another; `acknowledged` holds each 201's id."""

    def __init__(self, http: aiohttp.ClientSession, url: str, room: int, user: str) -> None:
        self.http = http
        self.url = f"{url}/api/chat-rooms/{room}/messages"
        self.user = user
        self.acknowledged: list[str] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        k = 0
        while True:
            cmid = f"{self.user}-rest-{k}"
            try:
                async with self.http.post(
                    self.url, headers=bearer(self.user),
                    json={"content": f"rest #{k}", "clientMessageId": cmid},
                ) as response:
                    if response.status != 201:
                        return  # the server is going away (503, or a closed connection)
                    self.acknowledged.append(cmid)
            except (aiohttp.ClientError, OSError):
                return
            k += 1

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def unfinished_request(port: int) -> asyncio.StreamWriter:
    """A REST request that sends its head and part of its body, then nothing."""
    _, writer = await asyncio.open_connection(LOCALHOST, port)
    writer.write(
        f"POST /api/chat-rooms HTTP/1.1\r\nHost: {LOCALHOST}\r\n"
        f"Authorization: Bearer {tokens.mint('lingerer')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\": ".encode()
    )
    await writer.drain()
    return writer


async def stored_client_message_ids(database_url: str) -> set[str]:
    engine = build_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT client_message_id FROM messages"))).all()
    finally:
        await engine.dispose()
    return {row[0] for row in rows if row[0] is not None}


@pytest.fixture
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file of the test's own, or the session PostgreSQL's emptied database."""
    database, _ = request.param
    if database == "sqlite":
        return f"sqlite:///{tmp_path / 'chat.db'}"
    url: str = await request.getfixturevalue("postgres_databases").empty_shared()
    return url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # Closed connections are not reused: the server goes away in the middle of a request.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.mark.parametrize(
    "database_url", CASES, indirect=True, ids=[f"{db}-{run}" for db, run in CASES]
)
@pytest.mark.parametrize("way", list(WAYS))
async def test_stop_under_load_is_clean_and_keeps_every_acknowledged_message(
    tmp_path: Path, http: aiohttp.ClientSession, clients: ClientFactory, way: str,
    database_url: str,
) -> None:
    env = worker_env(database_url, None, shutdown_grace_s=GRACE_S)
    worker = Worker("server", tmp_path, env)
    signals = WAYS[way]
    lingering: asyncio.StreamWriter | None = None
    try:
        worker.start()
        if len(signals) > 1:
            lingering = await unfinished_request(worker.port)
        users = [f"sender{i}" for i in range(SENDERS)]
        room = await create_group_room(http, worker.url, users[0], users[1:])
        chat_clients = [clients(user, worker.ws_url) for user in users]
        await asyncio.gather(*(client.connect() for client in chat_clients))
        senders = [Sender(client, room) for client in chat_clients]
        poster = RestPoster(http, worker.url, room, users[0])
        for sender in senders:
            sender.start()
        poster.start()

        def acknowledged() -> int:
            return sum(len(s.receipted) for s in senders) + len(poster.acknowledged)

        await eventually(lambda: acknowledged() >= RECEIPTS_BEFORE_SIGNAL, 20,
                         "messages acknowledged under load", worker.output)
        worker.signal(signals[0])
        if len(signals) > 1:
            # The second signal once shutdown is under way (the server has begun to close
            # sockets with GOING_AWAY), while it waits for the unfinished request.
            await eventually(lambda: any(not c.connected for c in chat_clients), 10,
                             "a connection closed by the shutdown", worker.output)
            worker.signal(signals[1])
        code = await worker.wait_exit(EXIT_TIMEOUT_S)
        await asyncio.gather(*(s.done(EXIT_TIMEOUT_S) for s in senders))
        await poster.stop()
    finally:
        if lingering is not None:
            lingering.close()
        worker.stop()

    output = worker.log_path.read_text(errors="replace")
    assert code == 0, output
    assert "Traceback" not in output, output
    assert "CancelledError" not in output, output
    if len(signals) > 1:
        assert "SIGTERM again: already shutting down" in output, output
    receipted = {cmid for s in senders for cmid in s.receipted} | set(poster.acknowledged)
    assert len(receipted) >= RECEIPTS_BEFORE_SIGNAL
    missing = receipted - await stored_client_message_ids(database_url)
    assert not missing, f"acknowledged but not stored: {sorted(missing)[:10]}\n{output}"
