"""The text rules as REST applies them (charsets.py): what the OpenAPI document now states, at
the edges where it changed or where no pattern can speak (lone surrogates, bytes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from tests.conftest import create_direct_room
from tests.web.test_rest import assert_error, create_group, history, json_object, post_raw

Client = TestClient[Any, Any]
Auth = Callable[[str], dict[str, str]]


@pytest.mark.parametrize(
    "user_id", ["bob smith", "bob  jr", "bob😀", "\U0001f600" * 128, "auth0|5f7c2e"], ids=ascii
)
async def test_user_ids_may_hold_inner_spaces_and_astral_characters(
    client: Client, auth: Auth, user_id: str
) -> None:
    answer = await client.post("/api/chat-rooms", json={"participantId": user_id},
                               headers=auth("alice"))
    room = await json_object(answer, 201)
    assert sorted(room["memberIds"]) == sorted(["alice", user_id])


@pytest.mark.parametrize(
    "user_id", [" bob", "bob ", "bo\u00a0b", "bo\u2028b", "bo\u2066b", "bo\ue000b", "bo\x85b"],
    ids=ascii,
)
async def test_member_ids_refuse_outer_spaces_and_other_spaces_breaks_and_invisibles(
    client: Client, auth: Auth, user_id: str
) -> None:
    answer = await client.post("/api/chat-rooms", json={"name": "team", "memberIds": [user_id]},
                               headers=auth("alice"))
    error = await assert_error(answer, 422, "validation_failed")
    assert "memberIds" in error["details"]


@pytest.mark.parametrize(
    "raw", [b'{"content": "hi", "clientMessageId": "\\udc00x"}',
            b'{"content": "hi \\ud83d"}'],
    ids=["client-message-id", "content"],
)
async def test_a_lone_surrogate_is_refused_where_no_pattern_can_say_so(
    client: Client, auth: Auth, tokens: TokenAuthority, raw: bytes
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    answer = await post_raw(client, auth, f"/api/chat-rooms/{room}/messages", raw)
    error = await assert_error(answer, 422, "validation_failed")
    assert "lone surrogate" in str(error["details"])
    assert await history(client, auth, "alice", room) == []


async def test_a_client_message_id_may_hold_inner_spaces(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    answer = await client.post(f"/api/chat-rooms/{room}/messages",
                               json={"content": "hi", "clientMessageId": "draft 7"},
                               headers=auth("alice"))
    assert (await json_object(answer, 201))["clientMessageId"] == "draft 7"


@pytest.mark.parametrize("content", ["\u3000", "\x85\u00a0 ", "\u2028\u2029"], ids=ascii)
async def test_content_of_unicode_whitespace_only_is_blank(
    client: Client, auth: Auth, tokens: TokenAuthority, content: str
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    answer = await client.post(f"/api/chat-rooms/{room}/messages", json={"content": content},
                               headers=auth("alice"))
    error = await assert_error(answer, 422, "validation_failed")
    assert "content" in error["details"]


async def test_a_room_name_is_measured_as_sent(client: Client, auth: Auth) -> None:
    """maxLength counts what the client sends: 100 characters and a space is too long, though
    the stored name (trimmed) would be 100."""
    answer = await client.post("/api/chat-rooms", json={"name": "n" * 100 + " ", "memberIds": []},
                               headers=auth("alice"))
    error = await assert_error(answer, 422, "validation_failed")
    assert "name" in error["details"]
    room = await create_group(client, auth, "alice", [], name=" " + "n" * 98 + " ")
    assert room["name"] == "n" * 98


async def test_a_user_id_in_the_path_follows_the_same_rule(client: Client, auth: Auth) -> None:
    room = await create_group(client, auth, "alice", ["bob"])
    answer = await client.delete(f"/api/chat-rooms/{room['id']}/members/%20bob",
                                 headers=auth("alice"))
    error = await assert_error(answer, 422, "validation_failed")
    assert "userId" in error["details"]


async def test_history_cursors_start_at_zero(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    answer = await client.get(f"/api/chat-rooms/{room}/messages?after=0&before=0",
                              headers=auth("alice"))
    assert await json_object(answer, 200) == {"messages": []}
