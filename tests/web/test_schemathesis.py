"""schemathesis, every check and the stateful phase, against a real server: the OpenAPI document
states every rule the server enforces and every status it answers (issue 17).

The run is the one `schemathesis.toml` describes (deterministic, a few examples per operation),
made by the `st` command line in a subprocess while this test's event loop serves the app on a
free port. It must find nothing; and, so that it is known to be able to fail, a document with
one rule or one status taken out must make it fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.web.app import create_app
from tests.conftest import SECRET, ChatTestServer

CONFIG = Path(__file__).resolve().parents[2] / "schemathesis.toml"
CALLER = "schemathesis-caller"
#: Far above a run's few seconds of CPU; only a hung run ever meets it.
RUN_TIMEOUT_S = 300.0

Document = dict[str, Any]


@pytest.fixture
def settings(database_url: str) -> Settings:
    # No REST rate limit: schemathesis calls faster than a person would; 429 is still stated.
    return Settings(database_url=database_url, jwt_secret=SECRET, frames_per_s=0,
                    rest_requests_per_s=0)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TestServer]:
    server = ChatTestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def schemathesis(location: str, tmp_path: Path, *options: str,
                       config: Path = CONFIG) -> tuple[int, str]:
    """`st run --checks all LOCATION OPTIONS...` with the project's config; exit code and
    output."""
    token = TokenAuthority(SECRET).mint(CALLER, ttl_s=3600)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        "--checks", "all", "--no-color", location, *options,
        cwd=tmp_path,  # whatever it leaves behind stays out of the checkout
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CHAT_SCHEMATHESIS_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode("utf-8", "replace")


def document_url(server: TestServer) -> str:
    return str(server.make_url("/api/openapi.json"))


async def test_schemathesis_finds_nothing(server: TestServer, tmp_path: Path) -> None:
    code, output = await schemathesis(document_url(server), tmp_path)
    assert code == 0, output
    # It did test: every phase ran, and the stateful one followed every link of the document.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output
    links = re.search(r"API Links: +(\d+) covered / \d+ selected / (\d+) total", output)
    assert links is not None, output
    assert int(links[1]) == int(links[2]) > 0, output


async def fetched_document(server: TestServer) -> Document:
    async with aiohttp.ClientSession() as session, session.get(document_url(server)) as answer:
        assert answer.status == 200
        document: Document = await answer.json()
    return document


# Each takes one statement out of the document, and names the operation it touched and the
# failure schemathesis must then report for it.
Weakening = tuple[str, str, str]  # method, path, failure


def without_user_id_pattern(document: Document) -> Weakening:
    del document["components"]["schemas"]["Member"]["properties"]["userId"]["pattern"]
    return "POST", "/api/chat-rooms/{roomId}/members", "Schema-valid request rejected"


def without_room_exists(document: Document) -> Weakening:
    del document["paths"]["/api/chat-rooms"]["post"]["responses"]["409"]
    return "POST", "/api/chat-rooms", "Undocumented status code"


def without_limit_range(document: Document) -> Weakening:
    operation = document["paths"]["/api/chat-rooms/{roomId}/messages"]["get"]
    (limit,) = [p for p in operation["parameters"] if p["name"] == "limit"]
    del limit["schema"]["maximum"]
    return "GET", "/api/chat-rooms/{roomId}/messages", "Schema-valid request rejected"


def failures_by_operation(output: str) -> dict[str, str]:
    """The FAILURES section of a run's output, by operation (`POST /api/chat-rooms`)."""
    _, _, failures = output.partition(" FAILURES ")
    failures, _, _ = failures.partition(" SUMMARY ")
    sections = re.split(r"^_+ (\S+ \S+) _+$", failures, flags=re.M)
    return dict(zip(sections[1::2], sections[2::2], strict=True))


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the document is the point, not the store
async def test_schemathesis_fails_when_the_document_says_less(
    server: TestServer, tmp_path: Path
) -> None:
    document = copy.deepcopy(await fetched_document(server))
    expected: dict[str, str] = {}
    operation_ids: list[str] = []
    for weaken in (without_user_id_pattern, without_room_exists, without_limit_range):
        method, path, failure = weaken(document)
        expected[f"{method} {path}"] = failure
        operation_ids += ["--include-operation-id",
                          document["paths"][path][method.lower()]["operationId"]]
    weakened = tmp_path / "openapi.json"
    weakened.write_text(json.dumps(document), encoding="utf-8")
    # Values seen in answers (user ids that are valid, say) would crowd out the generated
    # ones that find the gap; off for this run only.
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text(encoding="utf-8") + (
        "\n[phases.fuzzing.extra-data-sources]\nresponses = false\n"
    ), encoding="utf-8")
    code, output = await schemathesis(
        str(weakened), tmp_path, "--url", str(server.make_url("/")), *operation_ids,
        "--phases", "examples,coverage,fuzzing",  # the stateful phase needs every operation
        "--max-examples", "50",  # a finding should not hang on one lucky example
        config=config,
    )
    assert code != 0, output
    assert "Errors:" not in output, output  # findings, not a run that broke
    found = failures_by_operation(output)
    assert set(found) == set(expected), output
    for operation, failure in expected.items():
        assert failure in found[operation], output
