"""SendPipeline: SENDs are stored as they are read, answered in order, and nothing is stored
behind a failure that closes the connection. Driven by frames, with a real SQLite store."""

from __future__ import annotations

import json

import pytest

from chat_server.chat import ChatService
from chat_server.errors import ValidationFailed
from chat_server.fanout import Fanout
from chat_server.inbound import SendReader
from chat_server.metrics import Metrics
from chat_server.models import RoomId
from chat_server.outlet import Outlet
from chat_server.send_pipeline import SendPipeline
from chat_server.stomp.errors import StompProtocolError
from chat_server.stomp.frames import Command, Frame
from chat_server.store.sql import SqlStore
from chat_server.subscriptions import SubscriptionRegistry
from tests.session.conftest import ALICE, BOB, MALLORY, frame, written


@pytest.fixture
def registry(
    outlet: Outlet, chat: ChatService, fanout: Fanout, metrics: Metrics
) -> SubscriptionRegistry:
    return SubscriptionRegistry(
        outlet.conn, outlet, fanout, chat.may_read, metrics, chat.room_state
    )


def pipeline_of(
    chat: ChatService, outlet: Outlet, registry: SubscriptionRegistry, metrics: Metrics,
    max_pipelined: int = 32,
) -> SendPipeline:
    return SendPipeline(
        chat=chat, reader=SendReader(16384, 8, 1024), outlet=outlet, subscriptions=registry,
        metrics=metrics, max_pipelined=max_pipelined,
    )


@pytest.fixture
def pipeline(
    chat: ChatService, outlet: Outlet, registry: SubscriptionRegistry, metrics: Metrics
) -> SendPipeline:
    return pipeline_of(chat, outlet, registry, metrics)


def send(room: RoomId, content: str, receipt: str, *extra: tuple[str, str]) -> Frame:
    return frame(
        Command.SEND, ("destination", "/app/message"), ("content-type", "application/json"),
        ("receipt", receipt), *extra,
        body=json.dumps({"chatRoomId": room, "content": content}).encode(),
    )


async def contents(store: SqlStore, room: RoomId) -> list[str]:
    return [m.content for m in await store.messages(room, after=0, limit=100)]


@pytest.fixture
async def foreign(store: SqlStore) -> RoomId:
    return (await store.create_direct_room(BOB, MALLORY)).id


async def test_a_burst_is_stored_in_one_commit_and_receipted_in_order(
    pipeline: SendPipeline, outlet: Outlet, store: SqlStore, room: RoomId, metrics: Metrics
) -> None:
    for n in range(3):
        await pipeline.send(send(room, f"m{n}", f"r{n}"), ALICE)
    assert not pipeline.idle  # nothing waited for a commit while reading
    await pipeline.settle()
    assert [f.get("receipt-id") for f in written(outlet.outbox)] == ["r0", "r1", "r2"]
    assert await contents(store, room) == ["m0", "m1", "m2"]
    assert metrics.value("chat_append_batch_size_count") == 1


async def test_a_refusal_closes_the_connection_and_nothing_behind_it_is_stored(
    pipeline: SendPipeline, outlet: Outlet, store: SqlStore, room: RoomId, foreign: RoomId
) -> None:
    await pipeline.send(send(room, "one", "r1"), ALICE)
    await pipeline.send(send(foreign, "nope", "r2"), ALICE)
    await pipeline.send(send(room, "behind it", "r3"), ALICE)
    await pipeline.settle()
    frames = written(outlet.outbox)
    assert [(f.command, f.get("receipt-id")) for f in frames] == [
        (Command.RECEIPT, "r1"), (Command.ERROR, "r2")]
    assert frames[1].get("message") == "not a member of this room"
    assert outlet.conn.closing
    assert await contents(store, room) == ["one"]


async def test_with_an_errors_queue_a_refusal_is_reported_and_the_rest_go_on(
    pipeline: SendPipeline, registry: SubscriptionRegistry, outlet: Outlet, store: SqlStore,
    room: RoomId, foreign: RoomId,
) -> None:
    await registry.subscribe(
        frame(Command.SUBSCRIBE, ("destination", "/user/queue/errors"), ("id", "e")), ALICE
    )
    await pipeline.send(send(room, "one", "r1"), ALICE)
    await pipeline.send(send(foreign, "nope", "r2"), ALICE)
    await pipeline.send(send(room, "two", "r3"), ALICE)
    await pipeline.settle()
    receipt, refusal, last = written(outlet.outbox)
    assert receipt.get("receipt-id") == "r1" and last.get("receipt-id") == "r3"
    assert refusal.command is Command.MESSAGE
    assert refusal.get("destination") == "/user/queue/errors"
    body = json.loads(refusal.body)
    assert body["error"]["code"] == "not_a_member" and body["receiptId"] == "r2"
    assert not outlet.conn.closing
    assert await contents(store, room) == ["one", "two"]


async def test_an_invalid_body_is_refused_after_the_earlier_sends_are_answered(
    pipeline: SendPipeline, outlet: Outlet, room: RoomId
) -> None:
    await pipeline.send(send(room, "fine", "r1"), ALICE)
    bad = frame(Command.SEND, ("destination", "/app/message"), ("receipt", "r2"),
                body=b'{"chatRoomId": "x"}')
    with pytest.raises(StompProtocolError) as refused:
        await pipeline.send(bad, ALICE)
    assert refused.value.receipt_id == "r2"
    assert [f.get("receipt-id") for f in written(outlet.outbox)] == ["r1"]


async def test_a_send_to_an_unknown_destination_is_a_protocol_error(
    pipeline: SendPipeline,
) -> None:
    nowhere = frame(Command.SEND, ("destination", "/app/nowhere"), body=b"{}")
    with pytest.raises(StompProtocolError, match="Unknown destination"):
        await pipeline.send(nowhere, ALICE)


async def test_at_the_limit_reading_waits_for_the_queue_to_be_answered(
    chat: ChatService, outlet: Outlet, registry: SubscriptionRegistry, metrics: Metrics,
    room: RoomId,
) -> None:
    pipeline = pipeline_of(chat, outlet, registry, metrics, max_pipelined=2)
    for n in range(3):
        await pipeline.send(send(room, f"m{n}", f"r{n}"), ALICE)
    # The third SEND was read only once the two before it were answered.
    assert [f.get("receipt-id") for f in written(outlet.outbox)] == ["r0", "r1"]
    await pipeline.settle()
    assert [f.get("receipt-id") for f in written(outlet.outbox)] == ["r2"]


async def test_a_send_in_a_transaction_is_held_until_commit(
    pipeline: SendPipeline, outlet: Outlet, store: SqlStore, room: RoomId
) -> None:
    outlet.conn.begin(frame(Command.BEGIN, ("transaction", "t")))
    held = send(room, "held", "r1", ("transaction", "t"))
    await pipeline.send(held, ALICE)
    assert [f.get("receipt-id") for f in written(outlet.outbox)] == ["r1"]
    assert await contents(store, room) == []
    for frame_held in outlet.conn.commit(frame(Command.COMMIT, ("transaction", "t"))):
        await pipeline.commit_held(frame_held, ALICE)
    assert await contents(store, room) == ["held"]


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        (None, True),
        ("", True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        (" application/json ;x=y", True),
        ("text/plain", False),
        ("application/jsonx", False),
    ],
)
def test_a_send_body_must_be_declared_json_or_undeclared(
    content_type: str | None, accepted: bool
) -> None:
    headers = [("destination", "/app/message")]
    if content_type is not None:
        headers.append(("content-type", content_type))
    body = json.dumps({"chatRoomId": 1, "content": "hi"}).encode()
    sent = Frame(Command.SEND, tuple(headers), body)
    reader = SendReader(16384, 8, 1024)
    if accepted:
        draft, _ = reader.read(sent)
        assert draft.content == "hi"
    else:
        with pytest.raises(ValidationFailed, match="content-type"):
            reader.read(sent)
