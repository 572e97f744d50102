"""The REST API under /api, /healthz and /readyz, call by call: successes and every refusal.

Choices the code makes where the contract leaves room (asserted below, so a change is visible):

- Rooms the caller is not in answer 404 `room_not_found`, with the same body as a room that does
  not exist, on every call (read, history, post, members).
- Room ids in the path are ASCII digits, 1 to 2**63-1, without a leading zero (as the STOMP
  destinations); anything else (`07`, `٧`, `７`, `+7`, `1 OR 1=1`, `0`, 20 digits) is 404.
- Invalid fields and query parameters are 422 `validation_failed` (with `details`); bodies that
  are not a JSON object (malformed, array, duplicate keys, NaN, too deep) are 400.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jwt
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from chat_server.auth import TokenAuthority
from chat_server.config import Settings
from chat_server.web.app import create_app
from tests.conftest import SECRET, AiohttpClient, create_direct_room

Client = TestClient[Any, Any]
Auth = Callable[[str], dict[str, str]]

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ROOM_KEYS = {"id", "kind", "name", "memberIds", "createdAt"}
MESSAGE_KEYS = {"id", "chatRoomId", "seq", "senderId", "content", "createdAt"}
#: A second secret, long enough that PyJWT does not warn about it.
OTHER_SECRET = "another-secret-that-is-also-long-enough-for-hs256"


# --- helpers ---------------------------------------------------------------------------------


async def json_object(response: ClientResponse, status: int) -> dict[str, Any]:
    """The body of a successful answer: the status, application/json, and a JSON object."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    body = json.loads(text)
    assert isinstance(body, dict), f"bare {type(body).__name__} body"
    return body


async def assert_error(
    response: ClientResponse, status: int, code: str | None = None
) -> dict[str, Any]:
    """Every error: the status, application/json, `{"error": {"code", "message"[, "details"]}}`."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json", text
    assert "Traceback" not in text
    body = json.loads(text)
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict)
    assert {"code", "message"} <= set(error) <= {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if "details" in error:
        assert isinstance(error["details"], dict)
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_room_shape(room: dict[str, Any]) -> None:
    assert set(room) >= ROOM_KEYS, room
    assert isinstance(room["id"], int) and room["id"] > 0
    assert room["kind"] in {"direct", "group"}
    assert room["name"] is None or isinstance(room["name"], str)
    assert isinstance(room["memberIds"], list)
    assert all(isinstance(member, str) for member in room["memberIds"])
    assert TIMESTAMP.fullmatch(room["createdAt"])


def assert_message_shape(message: dict[str, Any]) -> None:
    assert MESSAGE_KEYS <= set(message) <= MESSAGE_KEYS | {"clientMessageId"}, message
    assert isinstance(message["id"], int)
    assert isinstance(message["seq"], int) and message["seq"] >= 1
    assert TIMESTAMP.fullmatch(message["createdAt"])


async def create_group(
    client: Client, auth: Auth, user: str, members: list[str], name: str = "team"
) -> dict[str, Any]:
    response = await client.post(
        "/api/chat-rooms", json={"name": name, "memberIds": members}, headers=auth(user)
    )
    return await json_object(response, 201)


async def post_message(
    client: Client, auth: Auth, user: str, room_id: int, content: str,
    client_message_id: str | None = None, status: int = 201,
) -> dict[str, Any]:
    body: dict[str, Any] = {"content": content}
    if client_message_id is not None:
        body["clientMessageId"] = client_message_id
    response = await client.post(
        f"/api/chat-rooms/{room_id}/messages", json=body, headers=auth(user)
    )
    return await json_object(response, status)


async def post_raw(
    client: Client, auth: Auth, path: str, data: bytes,
    content_type: str | None = "application/json", user: str = "alice", **headers: str,
) -> ClientResponse:
    all_headers = {**auth(user), **headers}
    if content_type is None:
        return await client.post(
            path, data=data, headers=all_headers, skip_auto_headers=["Content-Type"]
        )
    all_headers["Content-Type"] = content_type
    return await client.post(path, data=data, headers=all_headers)


async def history(
    client: Client, auth: Auth, user: str, room_id: int, **query: str | int
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/api/chat-rooms/{room_id}/messages",
        params={name: str(value) for name, value in query.items()}, headers=auth(user),
    )
    body = await json_object(response, 200)
    assert set(body) == {"messages"}
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def room_ids_of(client: Client, auth: Auth, user: str) -> list[int]:
    body = await json_object(await client.get("/api/chat-rooms", headers=auth(user)), 200)
    return [room["id"] for room in body["rooms"]]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], secret: str | None) -> str:
    """A JWT built byte by byte: `secret=None` leaves the signature empty (`alg: none`)."""
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    digest = hashlib.sha512 if header.get("alg") == "HS512" else hashlib.sha256
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64url(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- health ----------------------------------------------------------------------------------


async def test_healthz_answers_ok(client: Client) -> None:
    assert await json_object(await client.get("/healthz"), 200) == {"status": "ok"}


async def test_readyz_reports_database_and_broker_ok(client: Client) -> None:
    body = await json_object(await client.get("/readyz"), 200)
    assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


# --- POST /api/chat-rooms: direct rooms ------------------------------------------------------


async def test_create_direct_room_returns_201_and_the_room(client: Client, auth: Auth) -> None:
    response = await client.post(
        "/api/chat-rooms", json={"participantId": "bob"}, headers=auth("alice")
    )
    room = await json_object(response, 201)
    assert_room_shape(room)
    assert room["kind"] == "direct"
    assert room["name"] is None
    assert sorted(room["memberIds"]) == ["alice", "bob"]


@pytest.mark.parametrize(("first", "second"), [("alice", "bob"), ("bob", "alice")])
async def test_create_direct_room_twice_is_409_room_exists_in_either_order(
    client: Client, auth: Auth, tokens: TokenAuthority, first: str, second: str
) -> None:
    room_id = await create_direct_room(client, tokens, "alice", "bob")
    response = await client.post(
        "/api/chat-rooms", json={"participantId": second}, headers=auth(first)
    )
    error = await assert_error(response, 409, "room_exists")
    assert error["details"] == {"roomId": room_id}
    assert await room_ids_of(client, auth, "alice") == [room_id]


async def test_create_direct_room_with_yourself_is_422(client: Client, auth: Auth) -> None:
    response = await client.post(
        "/api/chat-rooms", json={"participantId": "alice"}, headers=auth("alice")
    )
    await assert_error(response, 422, "validation_failed")
    assert await room_ids_of(client, auth, "alice") == []


async def test_create_direct_room_ignores_a_forged_creator(client: Client, auth: Auth) -> None:
    # R5: nobody creates a room on behalf of others; identity comes from the token only.
    response = await client.post(
        "/api/chat-rooms",
        json={"participantId": "bob", "creatorId": "carol", "senderId": "carol"},
        headers=auth("alice"),
    )
    room = await json_object(response, 201)
    assert sorted(room["memberIds"]) == ["alice", "bob"]
    assert await room_ids_of(client, auth, "carol") == []


BAD_USER_IDS: list[Any] = [
    "",
    " bob",
    "bob ",
    "bo\x00b",
    "bo\nb",
    "bo\x1bb",
    "bob\u202e",  # right-to-left override
    "bo\u200bb",  # zero-width space
    "b" * 129,
    "\ud800",
    5,
    True,
    None,
    ["bob"],
    {"id": "bob"},
]


@pytest.mark.parametrize("participant", BAD_USER_IDS, ids=repr)
async def test_create_direct_room_rejects_invalid_participant_id(
    client: Client, auth: Auth, participant: Any
) -> None:
    response = await client.post(
        "/api/chat-rooms", json={"participantId": participant}, headers=auth("alice")
    )
    await assert_error(response, 422, "validation_failed")
    assert await room_ids_of(client, auth, "alice") == []


async def test_create_direct_room_accepts_a_128_character_emoji_id(
    client: Client, auth: Auth
) -> None:
    other = "🦊" * 128
    response = await client.post(
        "/api/chat-rooms", json={"participantId": other}, headers=auth("alice")
    )
    room = await json_object(response, 201)
    assert other in room["memberIds"]


async def test_sql_in_a_user_id_is_stored_verbatim_and_harms_nothing(
    client: Client, auth: Auth
) -> None:
    other = "'; DROP TABLE rooms; --"
    response = await client.post(
        "/api/chat-rooms", json={"participantId": other}, headers=auth("alice")
    )
    room = await json_object(response, 201)
    assert other in room["memberIds"]
    assert await room_ids_of(client, auth, "alice") == [room["id"]]
    assert await room_ids_of(client, auth, other) == [room["id"]]


# --- POST /api/chat-rooms: group rooms -------------------------------------------------------


async def test_create_group_room_includes_the_caller_and_deduplicates_members(
    client: Client, auth: Auth
) -> None:
    room = await create_group(client, auth, "alice", ["bob", "carol", "bob", "alice", "carol"])
    assert_room_shape(room)
    assert room["kind"] == "group"
    assert room["name"] == "team"
    assert sorted(room["memberIds"]) == ["alice", "bob", "carol"]


async def test_create_group_room_with_no_other_members_holds_the_caller(
    client: Client, auth: Auth
) -> None:
    room = await create_group(client, auth, "alice", [])
    assert room["memberIds"] == ["alice"]


async def test_create_group_room_normalises_the_name_to_nfc_and_keeps_emoji(
    client: Client, auth: Auth
) -> None:
    room = await create_group(client, auth, "alice", ["bob"], name="  Cafe\u0301 🎉  ")
    assert room["name"] == "Caf\u00e9 🎉"
    assert unicodedata.is_normalized("NFC", room["name"])
    fetched = await json_object(
        await client.get(f"/api/chat-rooms/{room['id']}", headers=auth("bob")), 200
    )
    assert fetched["name"] == "Caf\u00e9 🎉"


@pytest.mark.parametrize(
    "name",
    ["", "   ", "a" * 101, "te\u202eam", "te\u200bam", "te\u2066am", "a\x00b", "a\x07b", "a\nb",
     "\ud800", 5, None, ["team"]],
    ids=repr,
)
async def test_create_group_room_rejects_invalid_name(
    client: Client, auth: Auth, name: Any
) -> None:
    response = await client.post(
        "/api/chat-rooms", json={"name": name, "memberIds": ["bob"]}, headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert "name" in error["details"]
    assert await room_ids_of(client, auth, "alice") == []


@pytest.mark.parametrize(
    "member_ids",
    [*([bad] for bad in BAD_USER_IDS), "bob", None, {"bob": 1}, [f"user{i}" for i in range(101)]],
    ids=repr,
)
async def test_create_group_room_rejects_invalid_member_ids(
    client: Client, auth: Auth, member_ids: Any
) -> None:
    response = await client.post(
        "/api/chat-rooms", json={"name": "team", "memberIds": member_ids}, headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert "memberIds" in error["details"]
    assert await room_ids_of(client, auth, "alice") == []


@pytest.mark.parametrize("body", [{}, {"name": "team"}, {"memberIds": ["bob"]}], ids=repr)
async def test_create_room_without_required_fields_is_422(
    client: Client, auth: Auth, body: dict[str, Any]
) -> None:
    response = await client.post("/api/chat-rooms", json=body, headers=auth("alice"))
    await assert_error(response, 422, "validation_failed")


# --- GET /api/chat-rooms ---------------------------------------------------------------------


async def test_list_rooms_returns_only_the_callers_rooms(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    direct = await create_direct_room(client, tokens, "alice", "bob")
    group = await create_group(client, auth, "carol", ["alice", "dave"])
    elsewhere = await create_direct_room(client, tokens, "carol", "dave")
    body = await json_object(await client.get("/api/chat-rooms", headers=auth("alice")), 200)
    assert set(body) == {"rooms"}
    for room in body["rooms"]:
        assert_room_shape(room)
        assert "alice" in room["memberIds"]
    assert sorted(room["id"] for room in body["rooms"]) == sorted([direct, group["id"]])
    assert elsewhere not in await room_ids_of(client, auth, "alice")
    assert await room_ids_of(client, auth, "nobody") == []


async def test_list_rooms_puts_the_most_recent_activity_first(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    oldest = await create_direct_room(client, tokens, "alice", "bob")
    middle = await create_direct_room(client, tokens, "alice", "carol")
    newest = await create_group(client, auth, "alice", ["dave"])
    assert await room_ids_of(client, auth, "alice") == [newest["id"], middle, oldest]
    await asyncio.sleep(0.01)  # activity is kept in milliseconds: no tie with the creation
    await post_message(client, auth, "bob", oldest, "wake up")
    assert await room_ids_of(client, auth, "alice") == [oldest, newest["id"], middle]


# --- GET /api/chat-rooms/{id} ----------------------------------------------------------------


async def test_get_room_returns_the_room_and_its_members(
    client: Client, auth: Auth
) -> None:
    created = await create_group(client, auth, "alice", ["bob"])
    for user in ("alice", "bob"):
        response = await client.get(f"/api/chat-rooms/{created['id']}", headers=auth(user))
        room = await json_object(response, 200)
        assert_room_shape(room)
        assert room["id"] == created["id"]
        assert sorted(room["memberIds"]) == ["alice", "bob"]


async def test_room_of_others_and_missing_room_answer_the_same_404(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    """R2: the answers for a room the caller is not in and for no room at all are identical."""
    room = await create_direct_room(client, tokens, "alice", "bob")
    group = (await create_group(client, auth, "alice", ["bob"]))["id"]
    missing = 999_999
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/chat-rooms/{}", None),
        ("GET", "/api/chat-rooms/{}/messages", None),
        ("POST", "/api/chat-rooms/{}/messages", {"content": "let me in"}),
        ("POST", "/api/chat-rooms/{}/members", {"userId": "mallory"}),
        ("DELETE", "/api/chat-rooms/{}/members/mallory", None),
    ]
    for method, template, body in calls:
        answers = []
        for target in (room, group, missing):
            response = await client.request(
                method, template.format(target), json=body, headers=auth("mallory")
            )
            error = await assert_error(response, 404, "room_not_found")
            answers.append({**error, "message": error["message"].replace(str(target), "ID")})
        assert answers[0] == answers[1] == answers[2], (method, template, answers)
    assert await history(client, auth, "alice", room) == []
    assert sorted((await json_object(
        await client.get(f"/api/chat-rooms/{group}", headers=auth("alice")), 200
    ))["memberIds"]) == ["alice", "bob"]


BAD_ROOM_IDS = [
    "\u0667",  # Arabic-Indic seven: int("\u0667") == 7
    "\uff17",  # full-width seven
    "7\u200b",
    "+7",
    "-7",
    " 7",
    "7 ",
    "7.0",
    "1e3",
    "0x7",
    "0",
    "-1",
    "1 OR 1=1",
    "7;--",
    "7' OR '1'='1",
    "9223372036854775808",  # 2**63
    "99999999999999999999",
    "9" * 1000,
    "null",
    "%00",
]


@pytest.mark.parametrize("raw_id", BAD_ROOM_IDS, ids=repr)
@pytest.mark.parametrize("suffix", ["", "/messages"])
async def test_room_ids_that_are_not_ascii_digits_in_range_are_404(
    client: Client, auth: Auth, tokens: TokenAuthority, raw_id: str, suffix: str
) -> None:
    # Seven rooms, so that a lenient parse of "٧" or "７" would find room 7 and answer 200.
    for other in range(7):
        await create_direct_room(client, tokens, "alice", f"user{other}")
    response = await client.get(f"/api/chat-rooms/{raw_id}{suffix}", headers=auth("alice"))
    await assert_error(response, 404)
    assert len(await room_ids_of(client, auth, "alice")) == 7


async def test_room_id_with_a_leading_zero_names_no_room(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    """Ids match exactly, as STOMP destinations do: `07` is not room 7."""
    for other in range(7):
        await create_direct_room(client, tokens, "alice", f"user{other}")
    await assert_error(await client.get("/api/chat-rooms/07", headers=auth("alice")), 404)
    assert (await client.get("/api/chat-rooms/7", headers=auth("alice"))).status == 200


# --- GET /api/chat-rooms/{id}/messages -------------------------------------------------------


async def _room_with_messages(
    client: Client, auth: Auth, tokens: TokenAuthority, count: int
) -> int:
    room = await create_direct_room(client, tokens, "alice", "bob")
    for number in range(1, count + 1):
        sender = "alice" if number % 2 else "bob"
        await post_message(client, auth, sender, room, f"message {number}")
    return room


async def test_history_walks_newest_first_with_before_visiting_each_seq_once(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await _room_with_messages(client, auth, tokens, 23)
    seen: list[int] = []
    page = await history(client, auth, "alice", room, limit=5)
    while page:
        assert len(page) <= 5
        for message in page:
            assert_message_shape(message)
            assert message["chatRoomId"] == room
            assert message["content"] == f"message {message['seq']}"
        seen.extend(message["seq"] for message in page)
        page = await history(client, auth, "bob", room, limit=5, before=page[-1]["seq"])
    assert seen == list(range(23, 0, -1))


async def test_history_walks_oldest_first_with_after_visiting_each_seq_once(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await _room_with_messages(client, auth, tokens, 23)
    seen: list[int] = []
    cursor = 0
    while page := await history(client, auth, "alice", room, limit=5, after=cursor):
        assert len(page) <= 5
        seen.extend(message["seq"] for message in page)
        cursor = page[-1]["seq"]
    assert seen == list(range(1, 24))


async def test_history_with_before_and_after_returns_the_window_oldest_first(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await _room_with_messages(client, auth, tokens, 10)
    page = await history(client, auth, "alice", room, after=3, before=8)
    assert [message["seq"] for message in page] == [4, 5, 6, 7]


async def test_history_default_limit_is_50_and_limit_100_is_allowed(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await _room_with_messages(client, auth, tokens, 51)
    default = await history(client, auth, "alice", room)
    assert [message["seq"] for message in default] == list(range(51, 1, -1))
    assert len(await history(client, auth, "alice", room, limit=100)) == 51
    assert [m["seq"] for m in await history(client, auth, "alice", room, limit=1)] == [51]


async def test_history_of_an_empty_room_is_an_empty_list(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    assert await history(client, auth, "alice", room) == []
    assert await history(client, auth, "alice", room, after=10**18) == []


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "1000000"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": ""},
        {"limit": "1.5"},
        {"limit": "1e1"},
        {"limit": "\uff15"},  # full-width five
        {"limit": "1;--"},
        {"limit": "99999999999999999999999"},
        {"before": "abc"},
        {"before": "-1"},
        {"before": "\u0663"},  # Arabic-Indic three
        {"before": "1 OR 1=1"},
        {"after": "9223372036854775808"},
        {"after": "9" * 1000},
        {"after": "-5"},
    ],
    ids=repr,
)
async def test_history_rejects_invalid_query_parameters(
    client: Client, auth: Auth, tokens: TokenAuthority, query: dict[str, str]
) -> None:
    room = await _room_with_messages(client, auth, tokens, 2)
    response = await client.get(
        f"/api/chat-rooms/{room}/messages", params=query, headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert set(error["details"]) == set(query)


async def test_history_rejects_limit_above_100(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await client.get(
        f"/api/chat-rooms/{room}/messages?limit=101", headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert "limit" in error["details"]


# --- POST /api/chat-rooms/{id}/messages ------------------------------------------------------


async def test_post_message_returns_201_and_numbers_messages_by_seq(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    first = await post_message(client, auth, "alice", room, "hi bob")
    second = await post_message(client, auth, "bob", room, "hi alice", client_message_id="b-1")
    for message in (first, second):
        assert_message_shape(message)
        assert message["chatRoomId"] == room
    assert (first["seq"], first["senderId"], first["content"]) == (1, "alice", "hi bob")
    assert "clientMessageId" not in first
    assert (second["seq"], second["senderId"], second["clientMessageId"]) == (2, "bob", "b-1")
    assert first["id"] != second["id"]
    assert await history(client, auth, "alice", room) == [second, first]


async def test_post_message_takes_the_sender_and_time_from_the_server(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await client.post(
        f"/api/chat-rooms/{room}/messages",
        json={"content": "hi", "senderId": "bob", "createdAt": "2000-01-01T00:00:00.000Z",
              "seq": 99, "id": 1234, "chatRoomId": room + 1},
        headers=auth("alice"),
    )
    message = await json_object(response, 201)
    assert message["senderId"] == "alice"
    assert message["seq"] == 1
    assert message["chatRoomId"] == room
    assert not message["createdAt"].startswith("2000")


async def test_retried_client_message_id_returns_200_and_the_stored_message(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    first = await post_message(client, auth, "alice", room, "once", client_message_id="c-1")
    retry = await post_message(
        client, auth, "alice", room, "once", client_message_id="c-1", status=200
    )
    assert retry == first
    following = await post_message(client, auth, "alice", room, "next")
    assert following["seq"] == first["seq"] + 1
    assert [m["seq"] for m in await history(client, auth, "bob", room)] == [2, 1]


async def test_same_client_message_id_from_another_sender_is_a_new_message(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    first = await post_message(client, auth, "alice", room, "mine", client_message_id="c-1")
    other = await post_message(client, auth, "bob", room, "mine too", client_message_id="c-1")
    assert (other["seq"], other["senderId"]) == (first["seq"] + 1, "bob")


async def test_html_content_is_stored_verbatim_and_returned_as_json(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    html = "<img src=x onerror=alert(1)><script>alert('x')</script> &amp; \"q\""
    message = await post_message(client, auth, "alice", room, html)
    assert message["content"] == html
    response = await client.get(f"/api/chat-rooms/{room}/messages", headers=auth("bob"))
    body = await json_object(response, 200)
    assert body["messages"][0]["content"] == html


@pytest.mark.parametrize(
    "content",
    ["🎉👨‍👩‍👧 ok", "tabs\tand\nnewlines", "'; DROP TABLE messages; --", "e\u0301"],
    ids=repr,
)
async def test_post_message_keeps_content_exactly(
    client: Client, auth: Auth, tokens: TokenAuthority, content: str
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    assert (await post_message(client, auth, "alice", room, content))["content"] == content
    assert (await history(client, auth, "bob", room))[0]["content"] == content


async def test_post_message_accepts_content_of_exactly_max_body_bytes(
    client: Client, auth: Auth, tokens: TokenAuthority, settings: Settings
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    content = "x" * settings.max_body_bytes
    assert (await post_message(client, auth, "alice", room, content))["content"] == content


BAD_CONTENT: list[Any] = [
    "",
    " ",
    "\n\t \n",
    "a\x00b",
    "a\x01b",
    "a\x7fb",
    "x" * 16385,  # settings.max_body_bytes + 1
    "é" * 8193,  # 8193 characters, 16386 bytes
    5,
    True,
    None,
    ["hi"],
    {"text": "hi"},
]


@pytest.mark.parametrize("content", BAD_CONTENT, ids=lambda value: repr(value)[:30])
async def test_post_message_rejects_invalid_content(
    client: Client, auth: Auth, tokens: TokenAuthority, settings: Settings, content: Any
) -> None:
    assert settings.max_body_bytes == 16384  # the sizes above are its neighbours
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await client.post(
        f"/api/chat-rooms/{room}/messages", json={"content": content}, headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert "content" in error["details"]
    assert await history(client, auth, "alice", room) == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"content": "\\ud800"}',
        b'{"content": "ok \\udfff"}',
        b'{"content": "hi", "clientMessageId": "\\ud800"}',
        b'{"content": "nul \\u0000 inside"}',
        b'{}',
        b'{"clientMessageId": "c-1"}',
        b'{"content": "hi", "clientMessageId": ""}',
        b'{"content": "hi", "clientMessageId": "a\\nb"}',
        b'{"content": "hi", "clientMessageId": 5}',
        b'{"content": "hi", "clientMessageId": "' + b"c" * 129 + b'"}',
    ],
    ids=lambda raw: raw.decode()[:40],
)
async def test_post_message_rejects_invalid_fields_in_raw_json(
    client: Client, auth: Auth, tokens: TokenAuthority, raw: bytes
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await post_raw(client, auth, f"/api/chat-rooms/{room}/messages", raw)
    await assert_error(response, 422, "validation_failed")
    assert await history(client, auth, "alice", room) == []


async def test_post_message_outside_your_rooms_stores_nothing(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await client.post(
        f"/api/chat-rooms/{room}/messages", json={"content": "hi"}, headers=auth("mallory")
    )
    await assert_error(response, 404, "room_not_found")
    assert await history(client, auth, "alice", room) == []


# --- members ---------------------------------------------------------------------------------


async def test_member_adds_someone_and_gets_200_and_the_room(
    client: Client, auth: Auth
) -> None:
    room = await create_group(client, auth, "alice", ["bob"])
    response = await client.post(
        f"/api/chat-rooms/{room['id']}/members", json={"userId": "dave"}, headers=auth("bob")
    )
    updated = await json_object(response, 200)
    assert_room_shape(updated)
    assert sorted(updated["memberIds"]) == ["alice", "bob", "dave"]
    assert await room_ids_of(client, auth, "dave") == [room["id"]]
    await post_message(client, auth, "dave", room["id"], "hello all")


async def test_adding_an_existing_member_changes_nothing(client: Client, auth: Auth) -> None:
    room = await create_group(client, auth, "alice", ["bob"])
    response = await client.post(
        f"/api/chat-rooms/{room['id']}/members", json={"userId": "bob"}, headers=auth("alice")
    )
    assert sorted((await json_object(response, 200))["memberIds"]) == ["alice", "bob"]


async def test_non_member_cannot_add_members(client: Client, auth: Auth) -> None:
    room = await create_group(client, auth, "alice", ["bob"])
    response = await client.post(
        f"/api/chat-rooms/{room['id']}/members", json={"userId": "mallory"},
        headers=auth("mallory"),
    )
    await assert_error(response, 404, "room_not_found")
    assert await room_ids_of(client, auth, "mallory") == []


async def test_adding_a_member_to_a_direct_room_is_403(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await client.post(
        f"/api/chat-rooms/{room}/members", json={"userId": "carol"}, headers=auth("alice")
    )
    await assert_error(response, 403, "forbidden")
    assert await room_ids_of(client, auth, "carol") == []


@pytest.mark.parametrize("user_id", BAD_USER_IDS, ids=repr)
async def test_add_member_rejects_invalid_user_id(
    client: Client, auth: Auth, user_id: Any
) -> None:
    room = await create_group(client, auth, "alice", ["bob"])
    response = await client.post(
        f"/api/chat-rooms/{room['id']}/members", json={"userId": user_id}, headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert "userId" in error["details"]


@pytest.mark.parametrize(
    "raw",
    [b'{"userId": 1e400}', b'{"userId": 1.0}', b'{"userId": -1}', b'{"userId": true}',
     b'{"userId": null}', b'{"userId": 1' + b"0" * 100 + b"}", b'{"user_id": "dave"}'],
    ids=lambda raw: raw.decode()[:30],
)
async def test_add_member_rejects_user_ids_that_are_not_strings(
    client: Client, auth: Auth, raw: bytes
) -> None:
    room = await create_group(client, auth, "alice", ["bob"])
    response = await post_raw(client, auth, f"/api/chat-rooms/{room['id']}/members", raw)
    error = await assert_error(response, 422, "validation_failed")
    assert "userId" in error["details"]


async def test_member_leaves_with_204_and_then_gets_404(client: Client, auth: Auth) -> None:
    room = (await create_group(client, auth, "alice", ["bob", "carol"]))["id"]
    response = await client.delete(f"/api/chat-rooms/{room}/members/bob", headers=auth("bob"))
    assert response.status == 204, await response.text()
    assert await response.read() == b""
    await assert_error(
        await client.get(f"/api/chat-rooms/{room}", headers=auth("bob")), 404, "room_not_found"
    )
    assert await room_ids_of(client, auth, "bob") == []
    remaining = await json_object(
        await client.get(f"/api/chat-rooms/{room}", headers=auth("alice")), 200
    )
    assert sorted(remaining["memberIds"]) == ["alice", "carol"]


async def test_creator_removes_a_member_who_then_gets_404_everywhere(
    client: Client, auth: Auth
) -> None:
    room = (await create_group(client, auth, "alice", ["bob", "carol"]))["id"]
    await post_message(client, auth, "bob", room, "before removal")
    response = await client.delete(f"/api/chat-rooms/{room}/members/bob", headers=auth("alice"))
    assert response.status == 204, await response.text()
    for method, path, body in [
        ("GET", f"/api/chat-rooms/{room}", None),
        ("GET", f"/api/chat-rooms/{room}/messages", None),
        ("POST", f"/api/chat-rooms/{room}/messages", {"content": "still here?"}),
        ("POST", f"/api/chat-rooms/{room}/members", {"userId": "bob"}),
    ]:
        answer = await client.request(method, path, json=body, headers=auth("bob"))
        await assert_error(answer, 404, "room_not_found")
    assert [m["content"] for m in await history(client, auth, "carol", room)] == [
        "before removal"
    ]


async def test_non_creator_cannot_remove_another_member(client: Client, auth: Auth) -> None:
    room = (await create_group(client, auth, "alice", ["bob", "carol"]))["id"]
    response = await client.delete(f"/api/chat-rooms/{room}/members/carol", headers=auth("bob"))
    await assert_error(response, 403, "forbidden")
    members = (await json_object(
        await client.get(f"/api/chat-rooms/{room}", headers=auth("carol")), 200
    ))["memberIds"]
    assert sorted(members) == ["alice", "bob", "carol"]


async def test_removing_someone_who_is_not_a_member_is_404(client: Client, auth: Auth) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    response = await client.delete(f"/api/chat-rooms/{room}/members/zed", headers=auth("alice"))
    await assert_error(response, 404, "room_not_found")


async def test_members_of_a_direct_room_cannot_leave_it(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    for path in ("alice", "bob"):
        response = await client.delete(
            f"/api/chat-rooms/{room}/members/{path}", headers=auth("alice")
        )
        await assert_error(response, 403, "forbidden")
    assert await room_ids_of(client, auth, "bob") == [room]


@pytest.mark.parametrize(
    "encoded", ["bob%E2%80%AE", "bo%E2%80%8Bb", "bo%00b", "bo%0Ab", "%20bob", "b" * 129],
    ids=repr,
)
async def test_remove_member_rejects_invalid_user_id_in_the_path(
    client: Client, auth: Auth, encoded: str
) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    response = await client.delete(
        f"/api/chat-rooms/{room}/members/{encoded}", headers=auth("alice")
    )
    error = await assert_error(response, 422, "validation_failed")
    assert "userId" in error["details"]


# --- authentication --------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/chat-rooms", None),
    ("POST", "/api/chat-rooms", {"participantId": "bob"}),
    ("POST", "/api/chat-rooms", {"name": "team", "memberIds": ["bob"]}),
    ("GET", "/api/chat-rooms/1", None),
    ("GET", "/api/chat-rooms/1/messages", None),
    ("POST", "/api/chat-rooms/1/messages", {"content": "hi"}),
    ("POST", "/api/chat-rooms/1/members", {"userId": "dave"}),
    ("DELETE", "/api/chat-rooms/1/members/bob", None),
]


def _bad_authorizations() -> list[tuple[str, dict[str, str]]]:
    now = int(time.time())
    good_claims = {"sub": "alice", "iat": now, "exp": now + 3600}
    hs256 = {"alg": "HS256", "typ": "JWT"}
    return [
        ("missing", {}),
        ("empty", {"Authorization": ""}),
        ("bearer-without-token", {"Authorization": "Bearer "}),
        ("basic-scheme", {"Authorization": "Basic YWxpY2U6cGFzc3dvcmQ="}),
        ("token-without-scheme", {"Authorization": jwt.encode(good_claims, SECRET)}),
        ("garbage", bearer("not.a.jwt")),
        ("bad-signature", bearer(jwt.encode(good_claims, OTHER_SECRET, algorithm="HS256"))),
        ("alg-none", bearer(hand_made_token({"alg": "none", "typ": "JWT"}, good_claims, None))),
        ("alg-none-signed", bearer(hand_made_token({"alg": "none"}, good_claims, SECRET))),
        ("hs512", bearer(hand_made_token({"alg": "HS512", "typ": "JWT"}, good_claims, SECRET))),
        ("expired", bearer(jwt.encode({"sub": "alice", "iat": now - 7200, "exp": now - 3600},
                                      SECRET, algorithm="HS256"))),
        ("not-yet-valid", bearer(jwt.encode({**good_claims, "nbf": now + 3600}, SECRET,
                                            algorithm="HS256"))),
        ("no-sub", bearer(jwt.encode({"iat": now, "exp": now + 3600}, SECRET,
                                     algorithm="HS256"))),
        ("empty-sub", bearer(hand_made_token(hs256, {**good_claims, "sub": ""}, SECRET))),
        ("integer-sub", bearer(hand_made_token(hs256, {**good_claims, "sub": 7}, SECRET))),
        ("control-char-sub", bearer(hand_made_token(hs256, {**good_claims, "sub": "a\nb"},
                                                    SECRET))),
        ("tampered-sub", bearer(_tampered(jwt.encode(good_claims, SECRET, algorithm="HS256")))),
    ]


def _tampered(token: str) -> str:
    """A valid token whose payload is swapped for another user's, keeping the signature."""
    header, _payload, signature = token.split(".")
    forged = _b64url(json.dumps({"sub": "mallory", "exp": int(time.time()) + 3600}).encode())
    return f"{header}.{forged}.{signature}"


BAD_AUTHORIZATIONS = _bad_authorizations()


@pytest.mark.parametrize(
    "headers", [headers for _, headers in BAD_AUTHORIZATIONS],
    ids=[name for name, _ in BAD_AUTHORIZATIONS],
)
@pytest.mark.parametrize(
    ("method", "path", "body"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS]
)
async def test_calls_without_a_valid_token_are_401(
    client: Client, auth: Auth, method: str, path: str, body: dict[str, Any] | None,
    headers: dict[str, str],
) -> None:
    response = await client.request(method, path, json=body, headers=headers)
    await assert_error(response, 401, "unauthorized")
    assert await room_ids_of(client, auth, "alice") == []


async def test_lowercase_bearer_scheme_is_accepted(client: Client, tokens: TokenAuthority) -> None:
    response = await client.get(
        "/api/chat-rooms", headers={"Authorization": f"bearer {tokens.mint('alice')}"}
    )
    assert await json_object(response, 200) == {"rooms": []}


# --- request bodies: content type, JSON, size ------------------------------------------------

POST_PATHS = [
    "/api/chat-rooms",
    "/api/chat-rooms/{room}/messages",
    "/api/chat-rooms/{room}/members",
]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/octet-stream", "application/jsonp", "text/json", None],
    ids=repr,
)
@pytest.mark.parametrize("template", POST_PATHS)
async def test_post_with_a_content_type_other_than_json_is_415(
    client: Client, auth: Auth, content_type: str | None, template: str
) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    response = await post_raw(
        client, auth, template.format(room=room), b'{"content": "hi", "userId": "dave"}',
        content_type=content_type,
    )
    await assert_error(response, 415, "unsupported_media_type")
    assert await history(client, auth, "alice", room) == []


async def test_json_content_type_with_charset_is_accepted(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    response = await post_raw(
        client, auth, f"/api/chat-rooms/{room}/messages", b'{"content": "hi"}',
        content_type="application/json; charset=utf-8",
    )
    assert (await json_object(response, 201))["content"] == "hi"


MALFORMED_BODIES = [
    b"",
    b"{",
    b"not json",
    b'{"content": "hi"} trailing',
    b"[]",
    b'[{"content": "hi"}]',
    b'"hi"',
    b"42",
    b"null",
    b"true",
    b'{"content": "a", "content": "b"}',
    b'{"content": "hi", "x": {"k": 1, "k": 2}}',
    b'{"content": NaN}',
    b'{"content": "hi", "n": Infinity}',
    b'{"content": "hi", "n": -Infinity}',
    b"\xff\xfe{}",
    b'{"content": "\xc3\x28"}',
    b"{'content': 'hi'}",
    b"[" * 30000 + b"]" * 30000,  # deep, but within the 64 KiB body limit
    b'{"content": "hi", "n": 1' + b"0" * 5000 + b"}",  # past Python's 4300-digit int limit
]


@pytest.mark.parametrize("raw", MALFORMED_BODIES, ids=lambda raw: repr(raw[:30]))
@pytest.mark.parametrize("template", POST_PATHS)
async def test_post_with_malformed_json_is_400(
    client: Client, auth: Auth, raw: bytes, template: str
) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    response = await post_raw(client, auth, template.format(room=room), raw)
    await assert_error(response, 400, "malformed_request")
    assert await history(client, auth, "alice", room) == []


@pytest.fixture
async def roomy_client(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    """A server whose REST body limit lets 100,000-deep JSON reach the parser."""
    return await aiohttp_client(create_app(replace(settings, max_rest_body_bytes=1 << 20)))


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
     b'{"content": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["arrays", "objects", "inside-a-field"],
)
async def test_json_nested_100000_deep_is_400(
    roomy_client: Client, auth: Auth, raw: bytes
) -> None:
    response = await post_raw(roomy_client, auth, "/api/chat-rooms", raw)
    await assert_error(response, 400, "malformed_request")
    assert await json_object(await roomy_client.get("/healthz"), 200) == {"status": "ok"}


def _message_body_of_size(size: int) -> bytes:
    shell = b'{"content": "", "pad": ""}'
    body = b'{"content": "x", "pad": "' + b"p" * (size - len(shell) - 1) + b'"}'
    assert len(body) == size
    return body


async def test_body_over_max_rest_body_bytes_is_413(
    client: Client, auth: Auth, tokens: TokenAuthority, settings: Settings
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    path = f"/api/chat-rooms/{room}/messages"
    too_large = _message_body_of_size(settings.max_rest_body_bytes + 1)
    await assert_error(await post_raw(client, auth, path, too_large), 413, "request_too_large")
    assert await history(client, auth, "alice", room) == []
    at_limit = _message_body_of_size(settings.max_rest_body_bytes)
    assert (await json_object(await post_raw(client, auth, path, at_limit), 201))["seq"] == 1


async def test_gzip_bomb_is_refused_not_decompressed(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    """RFC 9110 15.5.16: an unsupported content coding is 415; no body is ever inflated
    (tests/hardening/test_compressed_bodies.py measures the CPU)."""
    room = await create_direct_room(client, tokens, "alice", "bob")
    bomb = gzip.compress(b'{"content": "' + b"a" * (16 << 20) + b'"}')
    assert len(bomb) < 65536
    response = await post_raw(
        client, auth, f"/api/chat-rooms/{room}/messages", bomb, **{"Content-Encoding": "gzip"}
    )
    await assert_error(response, 415, "unsupported_media_type")
    assert await history(client, auth, "alice", room) == []


# --- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/nope", "/api/chat-rooms/1/nope", "/api/chat-rooms/", "/api/chat-rooms/\u0667/x",
     "/api", "/", "/api/openapi.jsonx", "/api/chat-rooms/1/members/bob/extra"],
)
async def test_unknown_route_is_404_json(client: Client, auth: Auth, path: str) -> None:
    await assert_error(await client.get(path, headers=auth("alice")), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/chat-rooms"),
        ("DELETE", "/api/chat-rooms"),
        ("PATCH", "/api/chat-rooms/1"),
        ("POST", "/api/chat-rooms/1"),
        ("DELETE", "/api/chat-rooms/1/messages"),
        ("GET", "/api/chat-rooms/1/members/bob"),
        ("GET", "/api/chat-rooms/1/members"),
        ("POST", "/healthz"),
        ("DELETE", "/readyz"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(
    client: Client, auth: Auth, method: str, path: str
) -> None:
    response = await client.request(method, path, headers=auth("alice"))
    await assert_error(response, 405, "method_not_allowed")
    assert response.headers.get("Allow")


# --- every body is an object -----------------------------------------------------------------


async def test_every_successful_response_body_is_a_json_object(
    client: Client, auth: Auth, tokens: TokenAuthority
) -> None:
    room = await create_direct_room(client, tokens, "alice", "bob")
    await post_message(client, auth, "alice", room, "hi")
    group = (await create_group(client, auth, "alice", ["bob"]))["id"]
    for path in ["/healthz", "/readyz", "/api/chat-rooms", f"/api/chat-rooms/{room}",
                 f"/api/chat-rooms/{room}/messages", f"/api/chat-rooms/{room}/messages?after=0",
                 f"/api/chat-rooms/{group}", f"/api/chat-rooms/{group}/messages"]:
        await json_object(await client.get(path, headers=auth("alice")), 200)
