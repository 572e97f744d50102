"""W15 through the shipped nginx config: per-address limits see the client's address, not
nginx's, once nginx is a trusted proxy; a client's own X-Forwarded-For changes nothing.

Two client addresses on one machine: Linux routes all of 127.0.0.0/8 to loopback, so a client
socket bound to 127.0.0.2 reaches nginx (on 127.0.0.1) as 127.0.0.2, and nginx reaches the
worker from 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from chat_server.stomp.frames import Command
from tests.hardening.conftest import connect_bytes
from tests.integration.conftest import Worker, tokens, worker_env
from tests.services import NginxServer
from tests.stomp_client import StompClient

ALICE_HOST, BOB_HOST = "127.0.0.2", "127.0.0.3"
FAILURES = 2


@pytest.fixture
def behind_nginx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NginxServer]:
    trusted: str = request.param
    env = worker_env(f"sqlite:///{tmp_path}/chat.db", None, auth_failures_per_min=FAILURES)
    if trusted:
        env["CHAT_TRUSTED_PROXIES"] = trusted
    worker = Worker("worker", tmp_path, env)
    nginx = NginxServer(tmp_path, [worker.port])
    try:
        worker.start()
        nginx.start()
        yield nginx
    finally:
        nginx.stop()
        worker.stop()


@pytest.fixture
async def from_host() -> AsyncIterator[dict[str, aiohttp.ClientSession]]:
    sessions = {
        host: aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(host, 0)))
        for host in (ALICE_HOST, BOB_HOST)
    }
    yield sessions
    for session in sessions.values():
        await session.close()


async def failed_connect(http: aiohttp.ClientSession, url: str, **headers: str) -> None:
    async with http.ws_connect(url, protocols=("v12.stomp",), headers=headers) as ws:
        stomp = StompClient(ws)
        await stomp.send_raw(connect_bytes("not-a-token"))
        error = await stomp.receive()
        assert error.command is Command.ERROR and error.get("message") == "authentication failed"


async def upgrade(http: aiohttp.ClientSession, url: str, user: str) -> int:
    """101 and a served CONNECT, or the HTTP status the upgrade was refused with."""
    try:
        async with http.ws_connect(url, protocols=("v12.stomp",)) as ws:
            connected = await StompClient(ws).connect(tokens.mint(user))
            assert connected.get("user-name") == user
            return 101
    except aiohttp.WSServerHandshakeError as refused:
        return refused.status


@pytest.mark.parametrize("behind_nginx", ["127.0.0.1"], indirect=True, ids=["trusted"])
async def test_bad_connects_from_one_client_do_not_lock_out_another(
    behind_nginx: NginxServer, from_host: dict[str, aiohttp.ClientSession],
) -> None:
    url = behind_nginx.ws_url
    for _ in range(FAILURES):
        # The forged header names Bob: nginx appends Alice's real address after it.
        await failed_connect(from_host[ALICE_HOST], url, **{"X-Forwarded-For": BOB_HOST})
    assert await upgrade(from_host[ALICE_HOST], url, "alice") == 429
    assert await upgrade(from_host[BOB_HOST], url, "bob") == 101


@pytest.mark.parametrize("behind_nginx", [""], indirect=True, ids=["untrusted"])
async def test_without_trusted_proxies_every_client_behind_nginx_is_one_address(
    behind_nginx: NginxServer, from_host: dict[str, aiohttp.ClientSession],
) -> None:
    """The default is safe for direct exposure, and blind behind a proxy: documented."""
    url = behind_nginx.ws_url
    for _ in range(FAILURES):
        await failed_connect(from_host[ALICE_HOST], url)
    assert await upgrade(from_host[BOB_HOST], url, "bob") == 429
