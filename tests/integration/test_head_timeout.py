"""W16 in both ways the server runs: `chat-server serve` and the Procfile's gunicorn workers
hold a slow request head for CHAT_REQUEST_HEAD_TIMEOUT_S, not for their keep-alive time."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.hardening.test_http_server import trickle_head
from tests.integration.conftest import Worker, worker_env
from tests.services import free_port

HEAD_TIMEOUT_S = 1.0


def command(kind: str, port: int) -> list[str]:
    if kind == "serve":
        return [sys.executable, "-m", "chat_server", "serve", "--port", str(port)]
    return [  # the Procfile's web: line, with a keep-alive far above the head timeout
        sys.executable, "-m", "gunicorn", "chat_server.web.app:create_app()",
        "--config", "python:chat_server.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
        "--worker-class", "aiohttp.GunicornUVLoopWebWorker", "--workers", "1",
        "--keep-alive", "30", "--graceful-timeout", "5",
    ]


@pytest.mark.parametrize("kind", ["serve", "gunicorn"])
async def test_a_slow_head_is_closed_at_the_head_timeout(tmp_path: Path, kind: str) -> None:
    env = worker_env(f"sqlite:///{tmp_path}/chat.db", None,
                     request_head_timeout_s=HEAD_TIMEOUT_S)
    port = free_port()
    worker = Worker(kind, tmp_path, env, port=port, command=command(kind, port))
    try:
        worker.start()
        held = await trickle_head(port, gap_s=0.3, limit_s=6.0)
    finally:
        worker.stop()
    assert held < HEAD_TIMEOUT_S + 1.0, worker.output()
