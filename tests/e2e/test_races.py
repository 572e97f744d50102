"""Races over REST, on both databases: two users opening the same 1:1 room at the same moment
get one 201 and one 409 naming that room; a retried clientMessageId is one message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from chat_server.config import Settings

Auth = Callable[[str], dict[str, str]]


async def test_simultaneous_creates_of_one_direct_room_give_one_201_and_one_409(
    client: TestClient[Any, Any], auth: Auth, settings: Settings
) -> None:
    attempts = 25

    async def create(user: str, other: str) -> tuple[int, Any]:
        response = await client.post(
            "/api/chat-rooms", json={"participantId": other}, headers=auth(user)
        )
        return response.status, await response.json()

    statuses: list[int] = []
    for n in range(attempts):
        one, other = f"u{n}", f"v{n}"
        answers = await asyncio.gather(create(one, other), create(other, one))
        statuses += [status for status, _ in answers]
        by_status = {status: body for status, body in answers}
        assert sorted(by_status) == [201, 409], answers
        assert by_status[409]["error"]["code"] == "room_exists"
        assert by_status[409]["error"]["details"]["roomId"] == by_status[201]["id"]
    backend = settings.database_url.split(":", 1)[0]
    print(
        f"\n[race {backend} REST] {attempts} simultaneous pairs of POST /api/chat-rooms: "
        f"{statuses.count(201)} x 201, {statuses.count(409)} x 409, "
        f"{len(statuses) - statuses.count(201) - statuses.count(409)} other"
    )


async def test_simultaneous_posts_of_one_client_message_id_store_one_message(
    client: TestClient[Any, Any], auth: Auth
) -> None:
    created = await client.post(
        "/api/chat-rooms", json={"participantId": "bob"}, headers=auth("alice")
    )
    room = (await created.json())["id"]

    async def post() -> tuple[int, Any]:
        response = await client.post(
            f"/api/chat-rooms/{room}/messages",
            json={"content": "once", "clientMessageId": "same"},
            headers=auth("alice"),
        )
        return response.status, await response.json()

    answers = await asyncio.gather(*(post() for _ in range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    assert len({body["id"] for _, body in answers}) == 1
    history = await client.get(f"/api/chat-rooms/{room}/messages", headers=auth("bob"))
    assert [m["seq"] for m in (await history.json())["messages"]] == [1]
