"""Outlet: what is written to one client, and that nothing follows the close the connection
decided. No socket and no event loop: the outbox is read back as frames."""

from __future__ import annotations

from chat_server.fanout import Delivery
from chat_server.metrics import Metrics
from chat_server.models import ChatMessage, MessageId, RoomId, UserId
from chat_server.outbox import Outbox
from chat_server.outlet import Outlet
from chat_server.stomp.connection import Limits, State
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import Command
from tests.session.conftest import connected, frame, written

MESSAGE = ChatMessage(MessageId(1), RoomId(7), 1, UserId("bob"), "hi", 1_700_000_000_000)


def subscribe(outlet: Outlet, sub_id: str = "s", ack: str = "auto") -> None:
    outlet.conn.add_subscription(
        frame(Command.SUBSCRIBE, ("id", sub_id), ("destination", "/queue/chat-rooms/7"),
              ("ack", ack))
    )


def test_a_receipt_answers_the_frame_that_asked_for_it(outlet: Outlet) -> None:
    outlet.receipt(frame(Command.SUBSCRIBE, ("receipt", "r-1")))
    outlet.receipt(frame(Command.SUBSCRIBE))  # asked for none
    assert [(f.command, f.get("receipt-id")) for f in written(outlet.outbox)] == [
        (Command.RECEIPT, "r-1")
    ]


def test_the_error_is_the_last_frame_and_decides_the_close(outlet: Outlet) -> None:
    outlet.receipt(frame(Command.SUBSCRIBE, ("receipt", "before")))
    outlet.fail(StompProtocolError("Bad thing", close_code=CloseCode.POLICY_VIOLATION))
    outlet.receipt(frame(Command.SUBSCRIBE, ("receipt", "after")))
    outlet.fail(StompProtocolError("a second cause"))
    frames = written(outlet.outbox)
    assert [f.command for f in frames] == [Command.RECEIPT, Command.ERROR]
    assert frames[1].get("message") == "Bad thing"
    close = outlet.conn.close
    assert close is not None and close.code is CloseCode.POLICY_VIOLATION and close.error
    assert outlet.conn.state is State.CLOSED


def test_the_error_goes_out_even_when_the_outbox_is_full(metrics: Metrics) -> None:
    outlet = Outlet(connected(), Outbox(16), metrics)
    outlet.put(b"x" * 16)
    outlet.fail(StompProtocolError("late"))
    assert outlet.outbox.take().endswith(b"\0")  # the ERROR, past the limit: it is small


def test_a_deliveries_headers_are_encoded_once_for_every_subscriber(outlet: Outlet) -> None:
    subscribe(outlet, "one")
    subscribe(outlet, "two")
    delivery = Delivery(MESSAGE)
    for sub_id in ("one", "two"):
        outlet.deliver(outlet.conn.subscriptions[sub_id], delivery)
    frames = written(outlet.outbox)
    assert [f.get("subscription") for f in frames] == ["one", "two"]
    assert {f.get("destination") for f in frames} == {"/queue/chat-rooms/7"}
    assert len({f.get("message-id") for f in frames}) == 2
    assert list(delivery.encoded) == [outlet.conn.version]  # one encoding, reused


def test_an_overflowing_delivery_cuts_a_slow_consumer_and_keeps_only_the_error(
    metrics: Metrics,
) -> None:
    outlet = Outlet(connected(), Outbox(600), metrics)
    subscribe(outlet)
    for _ in range(20):
        outlet.deliver(outlet.conn.subscriptions["s"], Delivery(MESSAGE))
    frames = written(outlet.outbox)
    assert [f.command for f in frames] == [Command.ERROR]
    assert frames[0].get("message") == "slow consumer"
    assert outlet.conn.close is not None
    assert outlet.conn.close.code is CloseCode.POLICY_VIOLATION


def test_too_many_unacknowledged_messages_fail_the_connection(metrics: Metrics) -> None:
    outlet = Outlet(connected(Limits(max_unacked=2)), Outbox(64 * 1024), metrics)
    subscribe(outlet, ack="client")
    for _ in range(3):
        outlet.deliver(outlet.conn.subscriptions["s"], Delivery(MESSAGE))
    frames = written(outlet.outbox)
    assert [f.command for f in frames] == [Command.MESSAGE, Command.MESSAGE, Command.ERROR]
    assert frames[-1].get("message") == "too many unacknowledged messages"


def test_a_normal_close_queues_nothing_more_and_wakes_the_writer(outlet: Outlet) -> None:
    woken: list[bool] = []
    outlet.outbox.on_ready = lambda: woken.append(True)
    outlet.close(CloseCode.NORMAL, "disconnect")
    outlet.receipt(frame(Command.DISCONNECT, ("receipt", "late")))
    assert woken and not outlet.outbox.pending
    assert outlet.conn.close is not None and not outlet.conn.close.error


def test_a_lost_peer_drops_what_was_queued(outlet: Outlet) -> None:
    outlet.receipt(frame(Command.SUBSCRIBE, ("receipt", "never read")))
    outlet.lost()
    assert not outlet.outbox.pending
    assert outlet.conn.closing


def test_only_the_put_into_an_empty_outbox_wakes_the_writer() -> None:
    outbox = Outbox(64 * 1024)
    woken: list[bool] = []
    outbox.on_ready = lambda: woken.append(True)
    for data in (b"a", b"b", b"c"):
        outbox.put(data)
    assert len(woken) == 1  # the writer takes all three at once
    assert outbox.take() == b"abc"
    outbox.put(b"d")
    assert len(woken) == 2
