"""The SQLite database, its -wal/-shm files and a directory the server creates for them are as
private as the generated secret beside them (0600 / 0700), whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from chat_server.config import Settings
from chat_server.web.app import create_app
from tests.conftest import AiohttpClient

REPO_ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default: files 0644, directories 0755
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.parametrize("secret", [None, "configured-secret-configured-secret"],
                         ids=["generated-secret", "configured-secret"])
async def test_new_database_files_and_directory_are_private(
    aiohttp_client: AiohttpClient, settings: Settings, tmp_path: Path, open_umask: None,
    secret: str | None,
) -> None:
    directory = tmp_path / "data" / "chat"
    database = directory / "chat.db"
    app = create_app(replace(settings, database_url=f"sqlite:///{database}", jwt_secret=secret))
    client = await aiohttp_client(app)
    assert (await client.get("/readyz")).status == 200
    assert mode(directory) == 0o700
    assert mode(database) == 0o600
    for suffix in ("-wal", "-shm"):
        side = database.with_name(database.name + suffix)
        assert side.exists(), f"{side} is not there while the store is open"
        assert mode(side) == 0o600, side
    if secret is None:
        assert mode(database.with_name("chat.db.jwt-secret")) == 0o600


async def test_an_existing_database_keeps_the_mode_its_owner_gave_it(
    aiohttp_client: AiohttpClient, settings: Settings, tmp_path: Path, open_umask: None,
) -> None:
    database = tmp_path / "chat.db"
    first = await aiohttp_client(create_app(replace(settings, database_url=f"sqlite:///{database}")))
    assert (await first.get("/readyz")).status == 200
    await first.close()
    database.chmod(0o640)  # e.g. readable by a backup group, on purpose
    second = await aiohttp_client(create_app(replace(settings,
                                                     database_url=f"sqlite:///{database}")))
    assert (await second.get("/readyz")).status == 200
    assert mode(database) == 0o640


def test_migrate_creates_a_private_directory_and_database(tmp_path: Path) -> None:
    database = tmp_path / "new" / "chat.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
    env["DATABASE_URL"] = f"sqlite:///{database}"
    result = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0o022); from chat_server.__main__ "
         "import main; sys.exit(main(['migrate']))"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert mode(database.parent) == 0o700
    assert mode(database) == 0o600
