"""REST for room state: read markers, reads, presence, and the unread fields of every room."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from chat_server.stomp.frames import Command
from tests.conftest import StompFactory
from tests.web.test_rest import assert_error, create_group, json_object, post_message

Client = TestClient[Any, Any]
Auth = Callable[[str], dict[str, str]]


def unread(room: dict[str, Any]) -> tuple[int, int, int]:
    return room["lastSeq"], room["lastReadSeq"], room["unreadCount"]


async def test_read_moves_the_marker_forward_only(client: Client, auth: Auth) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    for n in range(3):
        await post_message(client, auth, "alice", room, f"m{n}")
    path = f"/api/chat-rooms/{room}/read"
    answer = await client.post(path, json={"seq": 2}, headers=auth("bob"))
    assert await json_object(answer, 200) == {"roomId": room, "seq": 2}
    lower = await client.post(path, json={"seq": 1}, headers=auth("bob"))
    assert await json_object(lower, 200) == {"roomId": room, "seq": 2}
    reads = await client.get(f"/api/chat-rooms/{room}/reads", headers=auth("alice"))
    assert await json_object(reads, 200) == {"reads": {"alice": 3, "bob": 2}}


async def test_read_refusals(client: Client, auth: Auth) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    await post_message(client, auth, "alice", room, "only one")
    path = f"/api/chat-rooms/{room}/read"
    past = await client.post(path, json={"seq": 2}, headers=auth("bob"))
    error = await assert_error(past, 422, "invalid_seq")
    assert error["details"] == {"seq": 2, "lastSeq": 1}
    for body in ({"seq": -1}, {"seq": "1"}, {"seq": 1.5}, {"seq": True}, {}):
        await assert_error(await client.post(path, json=body, headers=auth("bob")), 422,
                           "validation_failed")
    # Someone else's room and no room at all: the same 404.
    await assert_error(await client.post(path, json={"seq": 1}, headers=auth("mallory")), 404,
                       "room_not_found")
    await assert_error(await client.post("/api/chat-rooms/999/read", json={"seq": 0},
                                         headers=auth("bob")), 404, "room_not_found")
    await assert_error(await client.post(path, data=b"seq=1", headers=auth("bob")), 415)
    await assert_error(await client.post(path, json={"seq": 1}), 401)


async def test_reads_and_presence_are_for_members_only(client: Client, auth: Auth) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    for path in (f"/api/chat-rooms/{room}/reads", f"/api/chat-rooms/{room}/presence"):
        await assert_error(await client.get(path, headers=auth("mallory")), 404, "room_not_found")
        await assert_error(await client.get(path), 401)
    assert await json_object(await client.get(f"/api/chat-rooms/{room}/presence",
                                              headers=auth("bob")), 200) == {"online": []}


async def test_presence_names_members_with_a_subscription(
    client: Client, auth: Auth, stomp: StompFactory
) -> None:
    room = (await create_group(client, auth, "alice", ["bob", "carol"]))["id"]
    bob = await stomp("bob")
    await bob.receipted(Command.SUBSCRIBE, {"destination": f"/queue/chat-rooms/{room}",
                                            "id": "1"})
    carol = await stomp("carol")  # connected, but watching nothing: not online in the room
    await carol.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                              "id": "1"})
    answer = await client.get(f"/api/chat-rooms/{room}/presence", headers=auth("alice"))
    assert await json_object(answer, 200) == {"online": ["bob"]}


async def test_every_room_answer_carries_the_callers_unread_fields(
    client: Client, auth: Auth
) -> None:
    created = await create_group(client, auth, "alice", ["bob"])
    assert unread(created) == (0, 0, 0)
    room = created["id"]
    await post_message(client, auth, "alice", room, "a1")
    await post_message(client, auth, "bob", room, "b1")
    await post_message(client, auth, "alice", room, "a2")
    for user, expected in (("alice", (3, 3, 0)), ("bob", (3, 2, 1))):
        listed = await json_object(await client.get("/api/chat-rooms", headers=auth(user)), 200)
        assert [unread(r) for r in listed["rooms"]] == [expected]
        one = await json_object(await client.get(f"/api/chat-rooms/{room}", headers=auth(user)),
                                200)
        assert unread(one) == expected
    added = await client.post(f"/api/chat-rooms/{room}/members", json={"userId": "carol"},
                              headers=auth("bob"))
    assert unread(await json_object(added, 200)) == (3, 2, 1)  # as bob sees it
    carols = await json_object(await client.get(f"/api/chat-rooms/{room}", headers=auth("carol")),
                               200)
    assert unread(carols) == (3, 0, 3)


async def test_a_rest_read_reaches_the_users_connections(
    client: Client, auth: Auth, stomp: StompFactory
) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    await post_message(client, auth, "alice", room, "hi")
    phone = await stomp("bob")
    await phone.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                              "id": "n"})
    await json_object(await client.post(f"/api/chat-rooms/{room}/read", json={"seq": 1},
                                        headers=auth("bob")), 200)
    frame, body = await phone.receive_message()
    assert frame.get("destination") == "/user/queue/notifications"
    assert body == {"type": "read", "roomId": room, "seq": 1}


async def test_the_added_members_notification_shows_the_room_as_they_see_it(
    client: Client, auth: Auth, stomp: StompFactory
) -> None:
    room = (await create_group(client, auth, "alice", ["bob"]))["id"]
    await post_message(client, auth, "alice", room, "before carol")
    carol = await stomp("carol")
    await carol.receipted(Command.SUBSCRIBE, {"destination": "/user/queue/notifications",
                                              "id": "n"})
    await client.post(f"/api/chat-rooms/{room}/members", json={"userId": "carol"},
                      headers=auth("alice"))
    _, body = await carol.receive_message()
    assert body["type"] == "room_added"
    assert unread(body["room"]) == (1, 0, 1)


@pytest.mark.parametrize("path", ["read", "reads", "presence"])
async def test_room_ids_in_the_new_paths_follow_the_one_rule(
    client: Client, auth: Auth, path: str
) -> None:
    method = client.post if path == "read" else client.get
    for bad in ("07", "٧", "0", "1" * 20):
        response = await method(f"/api/chat-rooms/{bad}/{path}", headers=auth("alice"))
        await assert_error(response, 404)


async def test_openapi_describes_the_room_state_routes_and_fields(client: Client) -> None:
    document = await (await client.get("/api/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert {"lastSeq", "lastReadSeq", "unreadCount"} <= set(schemas["Room"]["required"])
    assert schemas["ReadIn"]["required"] == ["seq"]
    assert schemas["ReadIn"]["properties"]["seq"]["minimum"] == 0
    assert schemas["Presence"]["properties"]["online"]["type"] == "array"
    paths = document["paths"]
    assert "422" in paths["/api/chat-rooms/{roomId}/read"]["post"]["responses"]
    assert set(paths["/api/chat-rooms/{roomId}/reads"]) == {"get"}
    assert set(paths["/api/chat-rooms/{roomId}/presence"]) == {"get"}
