"""The `chat-server` command as a user runs it: serve, token, migrate, in real processes."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chat_server.__main__ import main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CHAT_JWT_SECRET"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/data/chat.db"
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_server", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    env = cli_env(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "chat_server", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for_port(port, process)
        yield port, env
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        assert "garbage collector tuned" in output  # gctune.py, in server processes only


def _wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port another process opens: no event to await
    raise AssertionError("the server did not start listening within 30 s")


async def test_served_process_accepts_tokens_from_the_token_command(
    server: tuple[int, dict[str, str]], tmp_path: Path,
) -> None:
    port, env = server
    minted = run_cli(env, "token", "alice")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert minted.stdout.count("\n") == 1 and token.count(".") == 2

    secret_file = tmp_path / "data" / "chat.db.jwt-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600

    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        health = await http.get("/healthz")
        assert health.status == 200
        created = await http.post("/api/chat-rooms", json={"participantId": "bob"},
                                  headers={"Authorization": f"Bearer {token}"})
        assert created.status == 201
        assert (await created.json())["memberIds"] == ["alice", "bob"]


def test_token_command_honours_the_configured_secret(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "CHAT_JWT_SECRET": "configured-secret-configured-secret"}
    minted = run_cli(env, "token", "bob", "--ttl", "60")
    assert minted.returncode == 0
    from chat_server.auth import TokenAuthority

    identity = TokenAuthority("configured-secret-configured-secret").verify(minted.stdout.strip())
    assert identity.user_id == "bob"
    assert identity.expires_at is not None and identity.expires_at - time.time() < 120
    assert not (tmp_path / "data" / "chat.db.jwt-secret").exists()


def test_token_command_requires_a_secret_for_postgresql(tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "DATABASE_URL": "postgres://u@localhost/db"}
    result = run_cli(env, "token", "bob")
    assert result.returncode == 2
    assert "CHAT_JWT_SECRET" in result.stderr
    assert result.stdout == ""


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli(cli_env(tmp_path), "migrate")
    assert result.returncode == 0, result.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "chat.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"rooms", "room_members", "messages"} <= tables


def test_migrate_logs_the_upgrades_it_runs_and_nothing_on_every_start(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    first, again = run_cli(env, "migrate"), run_cli(env, "migrate")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert "Running upgrade  -> 0001" in first.stderr
    # Alembic's dialect line and its "Will assume non-transactional DDL" (the upgrade does
    # run in one transaction) were two lines on every start, saying nothing to an operator.
    assert again.stderr == ""


def test_migrate_without_a_reachable_database_says_so_and_fails(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = run_cli(cli_env(tmp_path), "migrate", "--database-url",
                   f"postgresql://chat:secret@127.0.0.1:{port}/chat")
    assert done.returncode == 1
    assert "cannot migrate: database unavailable" in done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr


def test_bad_setting_is_reported_not_raised(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_MAX_FRAME_BYTES", "lots")
    assert main(["token", "alice"]) == 2
    assert "CHAT_MAX_FRAME_BYTES: 'lots' is not a valid value" in capsys.readouterr().err


def _one_line_refusal(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The single `chat-server: …` line of a refused start (no traceback, no log noise)."""
    assert done.returncode == status, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat-server: "), done.stderr
    assert done.stdout == ""
    return lines[0]


def test_serve_on_a_port_in_use_says_so_before_migrating(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(cli_env(tmp_path), "serve", "--port", str(port))
    line = _one_line_refusal(done, 2)
    assert f"127.0.0.1:{port}" in line and "address already in use" in line
    assert not (tmp_path / "data" / "chat.db").exists()  # nothing migrated


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("mysql://chat:hunter2@db/chat", "unsupported DATABASE_URL scheme 'mysql'"),
        ("sqlite://", "must name a file"),
        ("postgresql://chat:hunter2@127.0.0.1/chat?sslmode=bogus", "sslmode='bogus'"),
        ("postgresql://chat:hunter2@127.0.0.1/chat?nonsense=1", "option(s) nonsense"),
    ],
)
def test_serve_refuses_a_bad_database_url_in_one_line(
    tmp_path: Path, database_url: str, expected: str
) -> None:
    env = {**cli_env(tmp_path), "CHAT_JWT_SECRET": "configured-secret-configured-secret"}
    done = run_cli(env, "serve", "--port", str(free_port()), "--database-url", database_url)
    line = _one_line_refusal(done, 2)
    assert expected in line and "hunter2" not in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # socket.bind would take 70000 modulo 65536 and listen on 4464 instead
        (["--port", "70000"], "cannot listen on 127.0.0.1:70000: a port is 0-65535"),
        (["--port", "abc"], "PORT: 'abc' is not a valid value"),  # not argparse's usage text
    ],
)
def test_serve_refuses_a_port_it_cannot_use_in_one_line(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    done = run_cli(cli_env(tmp_path), "serve", *flags)
    assert _one_line_refusal(done, 2) == f"chat-server: {expected}"
    assert not (tmp_path / "data" / "chat.db").exists()


def test_serve_refuses_a_redis_url_that_is_not_redis(tmp_path: Path) -> None:
    done = run_cli(cli_env(tmp_path), "serve", "--port", str(free_port()),
                   "--redis-url", "http://127.0.0.1:6379")
    assert "REDIS_URL" in _one_line_refusal(done, 2)


def test_serve_without_a_reachable_postgresql_names_host_and_port(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {**cli_env(tmp_path), "CHAT_JWT_SECRET": "configured-secret-configured-secret"}
    done = run_cli(env, "serve", "--port", str(free_port()), "--database-url",
                   f"postgresql://chat:hunter2@127.0.0.1:{port}/chat")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"chat-server: cannot start: database unavailable (ConnectionRefusedError) "
                    f"at 127.0.0.1:{port}")
    assert "alembic.runtime.plugins" not in done.stderr


def test_serve_with_redis_unreachable_names_it_and_serves(tmp_path: Path) -> None:
    redis_port = free_port()  # nothing listens there
    port = free_port()
    log_path = tmp_path / "serve.log"
    expected = f"cannot reach Redis at 127.0.0.1:{redis_port} (ConnectionError)"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chat_server", "serve", "--port", str(port),
             "--redis-url", f"redis://:hunter2@127.0.0.1:{redis_port}/0"],
            env=cli_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    try:
        deadline = time.monotonic() + 30
        while expected not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)  # a line another process logs: no event to await
        # The README: a worker serves while Redis is away.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as health:
            assert health.status == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert "hunter2" not in log_path.read_text()


def test_token_refuses_to_create_a_secret_no_server_uses(tmp_path: Path) -> None:
    done = run_cli(cli_env(tmp_path), "token", "alice")
    line = _one_line_refusal(done, 2)
    assert "where `chat-server serve` runs" in line and "CHAT_JWT_SECRET" in line
    assert not (tmp_path / "data" / "chat.db.jwt-secret").exists()


@pytest.mark.parametrize("ttl", ["0", "-5", "abc", "1.5"])
def test_token_refuses_a_lifetime_that_is_not_positive(tmp_path: Path, ttl: str) -> None:
    env = {**cli_env(tmp_path), "CHAT_JWT_SECRET": "configured-secret-configured-secret"}
    done = run_cli(env, "token", "alice", "--ttl", ttl)
    assert "--ttl must be a positive" in _one_line_refusal(done, 2)


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from chat_server import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"chat-server {__version__}\n"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_start_that_hangs_on_its_database(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """A PostgreSQL that accepts connections and never answers holds the start (asyncpg's own
    timeout is a minute); SIGTERM or Ctrl-C still ends it, cleanly."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes connections; nobody reads or writes
        database_url = f"postgresql://chat@127.0.0.1:{silent.getsockname()[1]}/chat"
        env = {**cli_env(tmp_path), "CHAT_JWT_SECRET": "configured-secret-configured-secret"}
        log_path = tmp_path / "serve.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "chat_server", "serve", "--port", str(free_port()),
                 "--database-url", database_url],
                env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
            )
        try:
            # The server's first connection to the silent "database": the start is held.
            ready, _, _ = select.select([silent], [], [], 30)
            assert ready and process.poll() is None, log_path.read_text()
            process.send_signal(stop)
            code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "Traceback" not in output and "stopped while starting" in output, output
