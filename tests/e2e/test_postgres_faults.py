"""PostgreSQL failing under a running app (FAULTS.md, "PostgreSQL restart or failover").

A private server of this module's own (it is stopped, restarted and killed), never the session's
shared one. What must hold: REST answers 503 with Retry-After (never a 500) while the database is
down; a STOMP SEND that was not durably stored gets ERROR, never a RECEIPT; the pool recovers by
itself and the app serves again within 10 s of the database accepting connections; no receipted
message is lost, and a retried clientMessageId is one row.

Each test prints the recovery time it measured (run with `-s` to see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.stomp.frames import Command
from chat_server.store.engine import build_engine
from chat_server.store.schema import messages
from chat_server.web.app import create_app
from tests.conftest import SECRET, AiohttpClient
from tests.postgres import PostgresDatabases
from tests.services import LOCALHOST, PostgresServer, free_port
from tests.stomp_client import Closed, StompClient
from tests.waiting import eventually

#: FAULTS.md: serving again at most this long after the database accepts connections.
RECOVERY_TARGET_S = 10.0

Auth = Callable[[str], dict[str, str]]


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    root = tempfile.mkdtemp(prefix="chat-test-pgfault-")
    server = PostgresServer(root)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def pg_url(pg: PostgresServer) -> str:
    if not pg.running:  # a failed test may have left it down
        await asyncio.to_thread(pg.start)
    return await PostgresDatabases(pg).empty_shared()


def fault_settings(database_url: str) -> Settings:
    # From a mapping, so rate limits this version may not have are simply not mentioned.
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_FRAMES_PER_S": "0",
            "CHAT_REST_REQUESTS_PER_S": "0",
            "CHAT_RECONCILE_INTERVAL_S": "1",
        }
    )


@pytest.fixture
async def app(aiohttp_client: AiohttpClient, pg_url: str) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(fault_settings(pg_url)))


async def rows_by_client_id(database_url: str) -> list[tuple[int, str | None]]:
    """(seq, clientMessageId) of every stored message, over a connection of our own."""
    engine = build_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                select(messages.c.seq, messages.c.client_message_id).order_by(messages.c.seq)
            )
            return [(int(seq), cid) for seq, cid in result]
    finally:
        await engine.dispose()


async def direct_room(client: TestClient[Any, Any], auth: Auth) -> int:
    response = await client.post(
        "/api/chat-rooms", json={"participantId": "bob"}, headers=auth("alice")
    )
    assert response.status == 201, await response.text()
    room: int = (await response.json())["id"]
    return room


@dataclass
class RestLog:
    """Every REST answer seen; a 503 must carry Retry-After and the `unavailable` code."""

    statuses: Counter[int] = field(default_factory=Counter)
    unavailable_without_retry_after: int = 0

    async def call(self, client: TestClient[Any, Any], method: str, path: str,
                   headers: dict[str, str], json: Any = None) -> tuple[int, Any]:
        async with client.request(method, path, json=json, headers=headers) as response:
            body = await response.json()
            self.statuses[response.status] += 1
            if response.status == 503 and (
                not response.headers.get("Retry-After")
                or body.get("error", {}).get("code") != "unavailable"
            ):
                self.unavailable_without_retry_after += 1
            return response.status, body


def report(figures: str) -> None:
    print(f"\n[postgres fault] {figures}")


# --- REST while the database is down -----------------------------------------------------------


@pytest.mark.parametrize("how", ["stop-fast", "kill"])
async def test_rest_is_503_with_retry_after_while_postgres_is_down_then_serves_again(
    app: TestClient[Any, Any], auth: Auth, pg: PostgresServer, pg_url: str, how: str
) -> None:
    log = RestLog()
    room = await direct_room(app, auth)
    path = f"/api/chat-rooms/{room}/messages"
    for n in range(3):
        status, _ = await log.call(app, "POST", path, auth("alice"), {"content": f"m{n}"})
        assert status == 201

    await asyncio.to_thread(pg.kill if how == "kill" else pg.stop)
    down = [
        ("POST", path, {"content": "while down", "clientMessageId": "down-1"}),
        ("GET", path, None),
        ("GET", "/api/chat-rooms", None),
        ("GET", f"/api/chat-rooms/{room}", None),
        ("POST", "/api/chat-rooms", {"participantId": "carol"}),
    ]
    for method, target, body in down * 3:
        status, answer = await log.call(app, method, target, auth("alice"), body)
        assert status == 503, (method, target, answer)
    async with app.get("/readyz") as ready:
        assert ready.status == 503

    await asyncio.to_thread(pg.start)
    answers: list[Any] = []

    async def retry_succeeds() -> bool:  # the client's retry, same clientMessageId
        status, answer = await log.call(app, *down[0][:2], auth("alice"), down[0][2])
        answers.append(answer)
        return status in (200, 201)

    recovery = await eventually(retry_succeeds, RECOVERY_TARGET_S, f"REST serving after {how}",
                                lambda: f"last answer: {answers[-1:]}", interval=0.05)
    report(f"REST after {how}: {dict(log.statuses)}; serving {recovery:.3f} s after the "
           "database accepted connections")
    assert recovery <= RECOVERY_TARGET_S
    assert 500 not in log.statuses
    assert log.unavailable_without_retry_after == 0
    assert await rows_by_client_id(pg_url) == [(1, None), (2, None), (3, None), (4, "down-1")]


async def test_rest_writers_through_a_fast_restart_lose_nothing_and_never_see_500(
    app: TestClient[Any, Any], auth: Auth, pg: PostgresServer, pg_url: str
) -> None:
    log = RestLog()
    room = await direct_room(app, auth)
    path = f"/api/chat-rooms/{room}/messages"
    writers, per_writer = 3, 25
    stored: Counter[str] = Counter()
    restart_began: list[float] = []
    outage_seen: list[bool] = []
    first_success_after: list[float] = []

    async def writer(w: int) -> None:
        user = "alice" if w % 2 else "bob"
        for n in range(per_writer):
            cid = f"w{w}-{n}"
            while True:  # retry the same clientMessageId until it is stored
                status, _ = await log.call(
                    app, "POST", path, auth(user), {"content": cid, "clientMessageId": cid}
                )
                if status in (200, 201):
                    stored[cid] += 1
                    if outage_seen and not first_success_after:
                        first_success_after.append(time.monotonic())
                    break
                if restart_began:
                    outage_seen.append(True)
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(writer(w)) for w in range(writers)]
    await eventually(lambda: sum(stored.values()) >= 15, 30.0, "15 messages stored before the "
                     "restart", lambda: f"statuses: {dict(log.statuses)}")
    # Timed from the restart's start, not its return: pg_ctl returns a poll interval after the
    # server accepts connections, and the writers may well have finished by then.
    restart_began.append(time.monotonic())
    await asyncio.to_thread(pg.restart, "fast")
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    rows = await rows_by_client_id(pg_url)
    total = writers * per_writer
    recovery = first_success_after[0] - restart_began[0] if first_success_after else float("nan")
    report(f"REST writers through restart -m fast: {dict(log.statuses)}; {len(rows)} rows for "
           f"{total} ids; first 2xx after the outage {recovery:.3f} s after the restart began")
    assert 500 not in log.statuses
    assert set(log.statuses) <= {200, 201, 503}
    assert log.unavailable_without_retry_after == 0
    assert len(rows) == total
    assert Counter(cid for _, cid in rows) == Counter({f"w{w}-{n}": 1 for w in range(writers)
                                                      for n in range(per_writer)})
    assert [seq for seq, _ in rows] == list(range(1, total + 1))
    assert recovery <= RECOVERY_TARGET_S


# --- STOMP while the database is killed --------------------------------------------------------


async def open_stomp(client: TestClient[Any, Any], tokens: TokenAuthority,
                     user: str) -> StompClient:
    ws = await client.ws_connect("/ws", protocols=("v12.stomp",))
    stomp = StompClient(ws)
    await stomp.connect(tokens.mint(user))
    return stomp


async def test_stomp_senders_through_a_kill_get_error_not_receipt_and_lose_nothing(
    app: TestClient[Any, Any], auth: Auth, tokens: TokenAuthority, pg: PostgresServer,
    pg_url: str,
) -> None:
    room = await direct_room(app, auth)
    bob = await open_stomp(app, tokens, "bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "r"})
    total = 40
    receipted: list[str] = []
    errors: list[str] = []
    came_back: list[float] = []
    first_receipt_after: list[float] = []

    async def sender() -> None:
        alice: StompClient | None = None
        for n in range(total):
            cid = f"s-{n}"
            while True:
                try:
                    if alice is None:
                        alice = await open_stomp(app, tokens, "alice")
                    await alice.send_message(room, cid, client_message_id=cid, receipt=cid)
                    frame = await alice.receive()
                except (Closed, ConnectionError, AssertionError):
                    alice = None  # CONNECT refused or the socket dropped: reconnect
                    await asyncio.sleep(0.05)
                    continue
                if frame.command is Command.RECEIPT:
                    assert frame.get("receipt-id") == cid
                    receipted.append(cid)
                    if came_back and not first_receipt_after:
                        first_receipt_after.append(time.monotonic())
                    break
                assert frame.command is Command.ERROR, frame
                assert frame.get("receipt-id") == cid
                assert frame.get("message") == "message not stored: try again", frame
                errors.append(cid)
                with contextlib.suppress(Closed, TimeoutError):
                    await alice.expect_close()
                alice = None
                await asyncio.sleep(0.05)
        if alice is not None:
            await alice.ws.close()

    task = asyncio.create_task(sender())
    await eventually(lambda: len(receipted) >= 10, 30.0, "10 receipts before the kill",
                     lambda: f"errors: {errors}")
    await asyncio.to_thread(pg.kill)
    await asyncio.sleep(1.0)
    errors_while_down = len(errors)
    # Timed from the start command, not its return: pg_ctl returns a poll interval after the
    # server accepts connections, and the sender may well have finished by then.
    came_back.append(time.monotonic())
    await asyncio.to_thread(pg.start)
    await asyncio.wait_for(task, 60)

    seen = [(await bob.receive_message(timeout=RECOVERY_TARGET_S))[1]["seq"]
            for _ in range(total)]
    rows = await rows_by_client_id(pg_url)
    recovery = first_receipt_after[0] - came_back[0]
    report(f"STOMP through kill -9: {len(receipted)} RECEIPTs, {len(errors)} ERRORs "
           f"({errors_while_down} while down); {len(rows)} rows; first RECEIPT {recovery:.3f} s "
           "after the database's start began")
    assert errors_while_down >= 1
    assert sorted(receipted) == sorted(f"s-{n}" for n in range(total))
    assert Counter(cid for _, cid in rows) == Counter({f"s-{n}": 1 for n in range(total)})
    assert [seq for seq, _ in rows] == list(range(1, total + 1))
    assert seen == list(range(1, total + 1))  # each once, in order, none missing
    assert recovery <= RECOVERY_TARGET_S


# --- a commit whose answer never arrives -------------------------------------------------------


class CommitCutter:
    """A TCP proxy to PostgreSQL that, once armed, forwards the next COMMIT and then cuts the
    connection before the server's answer reaches the client: the commit happened, the client
    cannot know it (the "outcome unknown" case of FAULTS.md)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.armed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ids = itertools.count()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOCALHOST, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(LOCALHOST, self.target_port)
        self._writers |= {client_writer, server_writer}
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                server_writer.write(data)
                await server_writer.drain()
                if self.armed and b"COMMIT" in data:
                    self.armed = False
                    self.cuts += 1
                    cut.set()  # nothing more goes back to the client
                    await asyncio.sleep(0.3)  # the server commits and answers into the void
                    break

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if cut.is_set():
                    break
                client_writer.write(data)
                await client_writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        with contextlib.suppress(OSError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (client_writer, server_writer):
            writer.transport.abort()
            self._writers.discard(writer)


@pytest.fixture
async def cutter(pg: PostgresServer, pg_url: str) -> AsyncIterator[CommitCutter]:
    proxy = CommitCutter(pg.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_send_whose_commit_answer_is_lost_gets_error_and_its_retry_is_one_row(
    aiohttp_client: AiohttpClient, auth: Auth, tokens: TokenAuthority, pg: PostgresServer,
    pg_url: str, cutter: CommitCutter,
) -> None:
    through_proxy = pg_url.replace(f":{pg.port}/", f":{cutter.port}/")
    app = await aiohttp_client(create_app(fault_settings(through_proxy)))
    room = await direct_room(app, auth)
    bob = await open_stomp(app, tokens, "bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}", "id": "r"})
    alice = await open_stomp(app, tokens, "alice")
    await alice.send_message(room, "before", client_message_id="c-0", receipt="0")
    assert (await alice.receive()).get("receipt-id") == "0"

    cutter.armed = True
    await alice.send_message(room, "lost answer", client_message_id="c-1", receipt="1")
    error = await alice.expect_error()
    assert cutter.cuts == 1
    assert error.get("receipt-id") == "1"
    assert error.get("message") == "message not stored: try again"
    # It was committed all the same: exactly the case where only the retry can tell.
    assert await rows_by_client_id(pg_url) == [(1, "c-0"), (2, "c-1")]

    alice = await open_stomp(app, tokens, "alice")
    started = time.monotonic()
    await alice.send_message(room, "lost answer", client_message_id="c-1", receipt="1b")
    receipt = await alice.receive()
    assert receipt.command is Command.RECEIPT, receipt
    recovery = time.monotonic() - started
    assert await rows_by_client_id(pg_url) == [(1, "c-0"), (2, "c-1")]
    # The commit nobody published still reaches the subscriber (reconciliation), once.
    seen = [(await bob.receive_message(timeout=RECOVERY_TARGET_S))[1]["seq"] for _ in range(2)]
    assert seen == [1, 2]
    await bob.expect_silence(0.3)
    report(f"commit answer lost: ERROR, not RECEIPT; the retry was receipted in "
           f"{recovery:.3f} s with 1 row for its clientMessageId")
