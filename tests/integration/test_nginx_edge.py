"""What the shipped nginx config refuses itself, and what it passes on for the worker to refuse."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import Worker, worker_env
from tests.services import NginxServer


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxServer]:
    worker = Worker("worker", tmp_path, worker_env(f"sqlite:///{tmp_path}/chat.db", None))
    server = NginxServer(tmp_path, [worker.port])
    try:
        worker.start()
        server.start()
        yield server
    finally:
        server.stop()
        worker.stop()


async def test_a_body_on_the_websocket_location_is_refused_at_the_edge(
    nginx: NginxServer,
) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        f"{nginx.url}/ws", data=b"x" * 4096, headers={"Upgrade": "websocket"}
    ) as response:
        assert response.status == 413


async def test_a_compressed_body_passes_nginx_and_is_refused_by_the_worker(
    nginx: NginxServer,
) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        f"{nginx.url}/api/chat-rooms", data=gzip.compress(b'{"participantId": "bob"}'),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 415
        assert (await response.json())["error"]["code"] == "unsupported_media_type"
