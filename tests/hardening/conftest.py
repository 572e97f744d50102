"""Hardening fixtures: a server with chosen limits, its raw and STOMP clients, and rooms."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.stomp.frames import Command, Frame
from chat_server.web.app import create_app
from chat_server.web.services import SERVICES, Services
from tests.conftest import AiohttpClient, ChatTestServer
from tests.stomp_client import RawWebSocket, StompClient

# Re-exported: a few hardening tests still import the byte builders from here.
from tests.stomp_client import connect_bytes as connect_bytes
from tests.stomp_client import frame as frame
from tests.stomp_client import send_body as send_body


@dataclass
class Server:
    client: TestClient[Any, Any]
    app: web.Application
    tokens: TokenAuthority
    settings: Settings
    opened: list[StompClient] = field(default_factory=list)
    raws: list[RawWebSocket] = field(default_factory=list)

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    @property
    def port(self) -> int:
        port = self.client.server.port
        assert port is not None
        return port

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.mint(user)}"}

    async def ws(self, user: str | None, **headers: str) -> StompClient:
        """A CONNECTed client for `user`, or a raw socket (None)."""
        ws = await self.client.ws_connect("/ws", protocols=("v12.stomp",))
        stomp = StompClient(ws)
        self.opened.append(stomp)
        if user is not None:
            await stomp.connect(self.tokens.mint(user), **headers)
        return stomp

    async def raw(self, **kwargs: Any) -> RawWebSocket:
        raw = await RawWebSocket.open("127.0.0.1", self.port, **kwargs)
        self.raws.append(raw)
        return raw

    async def room(self, creator: str, *members: str, name: str = "team") -> int:
        if len(members) == 1:
            body: dict[str, Any] = {"participantId": members[0]}
        else:
            body = {"name": name, "memberIds": list(members)}
        response = await self.client.post("/api/chat-rooms", json=body, headers=self.auth(creator))
        assert response.status == 201, await response.text()
        room_id: int = (await response.json())["id"]
        return room_id

    async def history(self, user: str, room: int) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/api/chat-rooms/{room}/messages", params={"limit": "100", "after": "0"},
            headers=self.auth(user),
        )
        assert response.status == 200, await response.text()
        messages: list[dict[str, Any]] = (await response.json())["messages"]
        return messages

    async def subscribed(self, user: str, room: int, sub_id: str = "0") -> StompClient:
        stomp = await self.ws(user)
        await stomp.subscribe(f"/queue/chat-rooms/{room}", sub_id, receipt="sub")
        assert (await stomp.receive()).command is Command.RECEIPT
        return stomp

    async def say(self, stomp: StompClient, room: int, content: str) -> None:
        """SEND and wait for its RECEIPT (the message is stored)."""
        await stomp.receipted(
            Command.SEND,
            {"destination": "/app/message", "content-type": "application/json"},
            send_body(room, content), receipt=f"say-{content}",
        )


ServerFactory = Callable[..., Awaitable[Server]]
#: Called with the app and its Services once they exist; returns Services to use instead.
Compose = Callable[[web.Application, Services], Services]


@pytest.fixture
async def make_server(
    aiohttp_client: AiohttpClient, settings: Settings, tokens: TokenAuthority
) -> AsyncIterator[ServerFactory]:
    """`await make_server(max_frame_bytes=4096, compose=...)`: a server with those settings;
    `compose` swaps parts of the app's Services (a failing store, a slow check) at startup."""
    servers: list[Server] = []

    async def make(compose: Compose | None = None, **overrides: Any) -> Server:
        chosen = replace(settings, **overrides)
        app = create_app(chosen)
        if compose is not None:
            async def swap(app: web.Application) -> AsyncIterator[None]:
                app[SERVICES] = compose(app, app[SERVICES])
                yield

            app.cleanup_ctx.append(swap)
        server = Server(await aiohttp_client(ChatTestServer(app)), app, tokens, chosen)
        servers.append(server)
        return server

    yield make
    for server in servers:
        for raw in server.raws:
            raw.close()
        for stomp in server.opened:
            await stomp.ws.close()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


async def expect_fatal(stomp: StompClient, message: str, code: int) -> Frame:
    """The connection's next frame is ERROR `message`, then the socket closes with `code`."""
    error = await stomp.receive()
    assert error.command is Command.ERROR, error
    assert error.get("message") == message, error
    assert error.get("content-type") == "text/plain"
    assert error.get("content-length") == str(len(error.body))
    assert b"Traceback" not in error.body
    assert await stomp.expect_close() == code
    return error
