"""SubscriptionRegistry: subscriptions are added, refused and ended in one place, and the
protocol's view and the fan-out's stay in step. Driven by frames, with a real store."""

from __future__ import annotations

import pytest

from chat_server.chat import ChatService
from chat_server.fanout import Fanout
from chat_server.metrics import Metrics
from chat_server.models import MessageDraft, RoomId
from chat_server.outlet import Outlet
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Command, Frame
from chat_server.subscriptions import SubscriptionRegistry
from tests.session.conftest import ALICE, MALLORY, frame, written


@pytest.fixture
def registry(
    outlet: Outlet, chat: ChatService, fanout: Fanout, metrics: Metrics
) -> SubscriptionRegistry:
    return SubscriptionRegistry(
        outlet.conn, outlet, fanout, chat.may_read, metrics, chat.room_state
    )


def subscribe_frame(destination: str, sub_id: str, *extra: tuple[str, str]) -> Frame:
    return frame(Command.SUBSCRIBE, ("destination", destination), ("id", sub_id), *extra)


def gauge(metrics: Metrics) -> float:
    return metrics.value("chat_subscriptions")


async def test_a_member_subscribes_and_receives_the_rooms_new_messages(
    registry: SubscriptionRegistry, outlet: Outlet, chat: ChatService, room: RoomId,
    metrics: Metrics,
) -> None:
    await registry.subscribe(subscribe_frame(f"/queue/chat-rooms/{room}", "r"), ALICE)
    await chat.post(ALICE, MessageDraft(room, "hello"))
    (message,) = written(outlet.outbox)
    assert message.get("subscription") == "r"
    assert b'"content":"hello"' in message.body
    assert len(registry) == 1 and gauge(metrics) == 1


async def test_a_non_member_is_refused_and_nothing_is_left_behind(
    registry: SubscriptionRegistry, fanout: Fanout, room: RoomId, metrics: Metrics
) -> None:
    with pytest.raises(StompProtocolError) as refused:
        await registry.subscribe(subscribe_frame(f"/queue/chat-rooms/{room}", "r"), MALLORY)
    assert refused.value.message == "forbidden"
    assert refused.value.close_code is CloseCode.POLICY_VIOLATION
    assert len(registry) == 0 and gauge(metrics) == 0
    assert fanout.rooms_watched == 0


@pytest.mark.parametrize("destination", ["/topic/x", "/queue/chat-rooms/01", "/app/message"])
async def test_an_unknown_destination_is_refused(
    registry: SubscriptionRegistry, destination: str
) -> None:
    with pytest.raises(StompProtocolError, match="Unknown destination"):
        await registry.subscribe(subscribe_frame(destination, "x"), ALICE)
    assert len(registry) == 0


async def test_user_queues_are_found_by_their_destination(
    registry: SubscriptionRegistry,
) -> None:
    assert registry.errors is None and registry.notifications is None
    await registry.subscribe(subscribe_frame("/user/queue/errors", "e"), ALICE)
    await registry.subscribe(subscribe_frame("/user/queue/notifications", "n"), ALICE)
    assert registry.errors is not None and registry.errors.id == "e"
    assert registry.notifications is not None and registry.notifications.id == "n"
    registry.unsubscribe(frame(Command.UNSUBSCRIBE, ("id", "e")))
    assert registry.errors is None


async def test_removal_ends_the_rooms_subscriptions_and_a_later_unsubscribe_is_no_error(
    registry: SubscriptionRegistry, outlet: Outlet, fanout: Fanout, room: RoomId,
    metrics: Metrics,
) -> None:
    await registry.subscribe(subscribe_frame(f"/queue/chat-rooms/{room}", "r"), ALICE)
    await registry.subscribe(subscribe_frame("/user/queue/errors", "e"), ALICE)
    registry.room_removed(room)
    assert fanout.rooms_watched == 0
    assert len(registry) == 1 and gauge(metrics) == 1
    assert "r" not in outlet.conn.subscriptions
    registry.unsubscribe(frame(Command.UNSUBSCRIBE, ("id", "r")))  # BAD_INPUTS P25: no raise
    with pytest.raises(StompProtocolError, match="unknown subscription"):
        registry.unsubscribe(frame(Command.UNSUBSCRIBE, ("id", "r")))  # only once


async def test_release_stops_every_feed(
    registry: SubscriptionRegistry, fanout: Fanout, room: RoomId, metrics: Metrics
) -> None:
    await registry.subscribe(subscribe_frame(f"/queue/chat-rooms/{room}", "a"), ALICE)
    await registry.subscribe(subscribe_frame(f"/queue/chat-rooms/{room}", "b"), ALICE)
    registry.release()
    assert fanout.rooms_watched == 0 and len(registry) == 0 and gauge(metrics) == 0


async def test_a_bad_resume_position_is_refused_before_anything_is_added(
    registry: SubscriptionRegistry, room: RoomId
) -> None:
    with pytest.raises(StompProtocolError, match="invalid x-resume-after"):
        await registry.subscribe(
            subscribe_frame(f"/queue/chat-rooms/{room}", "r", ("x-resume-after", "-1")), ALICE
        )
    assert len(registry) == 0
