"""Deployment files stay true: the Procfile's commands, and the nginx configs against nginx."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from tests.services import render_nginx_template, require_binary

ROOT = Path(__file__).resolve().parent.parent


def procfile(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_runs_gunicorn_workers_on_port_and_migrates_on_release() -> None:
    processes = procfile("Procfile")
    web = processes["web"]
    assert web.startswith("gunicorn 'chat_server.web.app:create_app()'")
    assert "--bind 0.0.0.0:$PORT" in web
    assert "--worker-class aiohttp.GunicornUVLoopWebWorker" in web
    assert "--workers ${WEB_CONCURRENCY:-1}" in web
    assert processes["release"] == "chat-server migrate"


def test_dev_procfile_starts_redis_three_workers_and_nginx() -> None:
    processes = procfile("Procfile.dev")
    assert set(processes) == {"redis", "web1", "web2", "web3", "nginx"}
    env = dict(
        line.split("=", 1) for line in (ROOT / "dev.env").read_text().splitlines() if line
    )
    assert env["REDIS_URL"].endswith(":6390/0")
    assert "--port 6390" in processes["redis"]
    # nginx starts once every worker is ready, so the cluster never answers 502 while starting.
    nginx = processes["nginx"]
    assert "for port in 8001 8002 8003" in nginx and "/readyz" in nginx
    assert nginx.index("/readyz") < nginx.index("exec nginx")


def test_dev_nginx_conf_holds_the_rendered_template_and_passes_nginx_check(
    tmp_path: Path,
) -> None:
    dev = (ROOT / "nginx" / "dev.conf").read_text()
    begin = dev.index("\n", dev.index("# ---- BEGIN")) + 1
    embedded = dev[begin : dev.index("    # ---- END")]
    rendered = render_nginx_template(
        (ROOT / "nginx" / "chat_server.conf.template").read_text(),
        [8001, 8002, 8003], "127.0.0.1:8080",
    )
    assert textwrap.dedent(embedded) == rendered

    nginx = require_binary("nginx")
    (tmp_path / "temp").mkdir()
    check = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(ROOT / "nginx" / "dev.conf")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert check.returncode == 0, check.stderr
