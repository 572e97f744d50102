"""The STOMP connection state machine, without an event loop or a socket."""

from __future__ import annotations

import pytest

from chat_server.stomp.connection import (
    ALLOWED,
    AckMode,
    Close,
    Limits,
    State,
    StompConnection,
)
from chat_server.stomp.errors import CloseCode, StompProtocolError
from chat_server.stomp.frames import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    Command,
    Frame,
    Version,
    encode,
)
from chat_server.stomp.negotiation import (
    HeartBeats,
    negotiate_heart_beats,
    negotiate_version,
    parse_heart_beat,
)
from chat_server.stomp.parser import FrameParser

# A frame of each command carrying the headers that command requires.
VALID_FRAMES: dict[Command, Frame] = {
    Command.CONNECT: Frame(Command.CONNECT, (("accept-version", "1.2"),)),
    Command.STOMP: Frame(Command.STOMP, (("accept-version", "1.2"),)),
    Command.SEND: Frame(Command.SEND, (("destination", "/app/message"),), b"{}"),
    Command.SUBSCRIBE: Frame(Command.SUBSCRIBE, (("destination", "/d"), ("id", "1"))),
    Command.UNSUBSCRIBE: Frame(Command.UNSUBSCRIBE, (("id", "1"),)),
    Command.ACK: Frame(Command.ACK, (("id", "1"),)),
    Command.NACK: Frame(Command.NACK, (("id", "1"),)),
    Command.BEGIN: Frame(Command.BEGIN, (("transaction", "t"),)),
    Command.COMMIT: Frame(Command.COMMIT, (("transaction", "t"),)),
    Command.ABORT: Frame(Command.ABORT, (("transaction", "t"),)),
    Command.DISCONNECT: Frame(Command.DISCONNECT),
    Command.CONNECTED: Frame(Command.CONNECTED, (("version", "1.2"),)),
    Command.MESSAGE: Frame(Command.MESSAGE, (("destination", "/d"),)),
    Command.RECEIPT: Frame(Command.RECEIPT, (("receipt-id", "1"),)),
    Command.ERROR: Frame(Command.ERROR, (("message", "x"),)),
}


def feed(conn: StompConnection, *frames: Frame) -> list[Frame]:
    conn.receive_data(b"".join(encode(f, conn.version) for f in frames), now=1.0)
    return list(conn.events_received())


def connected(
    version: Version = Version.V1_2, *, max_subscriptions: int = 50, max_unacked: int = 1000
) -> StompConnection:
    conn = StompConnection(
        Limits(max_subscriptions=max_subscriptions, max_unacked=max_unacked)
    )
    [frame] = feed(conn, Frame(Command.CONNECT, (("accept-version", version.value),)))
    conn.accept(frame, "alice")
    return conn


def parse_one(data: bytes) -> Frame:
    parser = FrameParser()
    parser.feed(data)
    [frame] = list(parser.frames())
    return frame


@pytest.mark.parametrize("command", list(Command))
def test_every_command_before_connect(command: Command) -> None:
    conn = StompConnection()
    if command in (Command.CONNECT, Command.STOMP):
        assert feed(conn, VALID_FRAMES[command]) == [VALID_FRAMES[command]]
        return
    with pytest.raises(StompProtocolError) as raised:
        feed(conn, VALID_FRAMES[command])
    expected = "Bad command" if command in SERVER_COMMANDS else "not connected"
    assert raised.value.message == expected


@pytest.mark.parametrize("command", list(Command))
def test_every_command_once_connected(command: Command) -> None:
    conn = connected()
    frame = VALID_FRAMES[command]
    if command in ALLOWED[State.CONNECTED]:
        assert feed(conn, frame) == [frame]
        return
    with pytest.raises(StompProtocolError) as raised:
        feed(conn, frame)
    expected = "Bad command" if command in SERVER_COMMANDS else "already connected"
    assert raised.value.message == expected


@pytest.mark.parametrize("command", list(Command))
def test_every_command_after_disconnect_is_ignored(command: Command) -> None:
    conn = connected()
    conn.disconnect()
    assert feed(conn, VALID_FRAMES[command]) == []


def test_allowed_table_covers_exactly_the_client_commands() -> None:
    assert ALLOWED[State.AWAITING_CONNECT] | ALLOWED[State.CONNECTED] == CLIENT_COMMANDS
    assert ALLOWED[State.CLOSED] == frozenset()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame(Command.SEND), "Missing destination"),
        (Frame(Command.SEND, (("destination", ""),)), "Missing destination"),
        (Frame(Command.SUBSCRIBE, (("id", "1"),)), "Missing destination"),
        (Frame(Command.SUBSCRIBE, (("destination", "/d"),)), "Missing id"),
        (Frame(Command.UNSUBSCRIBE), "Missing id"),
        (Frame(Command.BEGIN), "Missing transaction"),
        (Frame(Command.COMMIT), "Missing transaction"),
        (Frame(Command.ABORT), "Missing transaction"),
    ],
)
def test_missing_required_header_is_refused(frame: Frame, message: str) -> None:
    with pytest.raises(StompProtocolError) as raised:
        feed(connected(), frame)
    assert raised.value.message == message


def test_refusal_carries_the_frames_receipt_id() -> None:
    with pytest.raises(StompProtocolError) as raised:
        feed(connected(), Frame(Command.SEND, (("receipt", "r-7"),)))
    assert raised.value.receipt_id == "r-7"


def test_stomp_1_0_subscribe_may_omit_id() -> None:
    conn = connected(Version.V1_0)
    [frame] = feed(conn, Frame(Command.SUBSCRIBE, (("destination", "/d"),)))
    assert conn.add_subscription(frame).id == "/d"


# --- negotiation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "client", "expected"),
    [
        (10000, (0, 0), HeartBeats(0, 0)),
        (10000, (5000, 0), HeartBeats(0, 10000)),
        (10000, (0, 5000), HeartBeats(10000, 0)),
        (10000, (20000, 30000), HeartBeats(30000, 20000)),
        (10000, (1, 1), HeartBeats(10000, 10000)),  # P7: the server's floor wins
        (0, (1000, 1000), HeartBeats(0, 0)),
    ],
)
def test_heart_beat_negotiation_table(
    server: int, client: tuple[int, int], expected: HeartBeats
) -> None:
    assert negotiate_heart_beats(server, client) == expected


@pytest.mark.parametrize("value", ["abc", "1", "-1,0", "1,2,3", " 1,1", "1, 1", "١,١", ""])
def test_invalid_heart_beat_is_refused(value: str) -> None:
    with pytest.raises(StompProtocolError, match="invalid heart-beat"):
        parse_heart_beat(value)


def test_huge_heart_beat_is_clamped_not_overflowed() -> None:
    send, receive = parse_heart_beat("99999999999999999999,99999999999999999999")
    assert send == receive == 2**31 - 1


@pytest.mark.parametrize(
    ("accept", "subprotocol", "expected"),
    [
        ("1.0,1.1,1.2", None, Version.V1_2),
        ("1.1", None, Version.V1_1),
        ("1.0", None, Version.V1_0),
        (None, None, Version.V1_0),  # a STOMP 1.0 client sends no accept-version
        ("1.0,1.1,1.2", Version.V1_1, Version.V1_1),
        ("1.2,9.9", None, Version.V1_2),
    ],
)
def test_version_negotiation(accept: str | None, subprotocol: Version | None,
                             expected: Version) -> None:
    assert negotiate_version(accept, subprotocol) == expected


def test_unsupported_version_is_refused_and_error_lists_supported_ones() -> None:
    conn = StompConnection()
    [frame] = feed(conn, Frame(Command.CONNECT, (("accept-version", "2.0"),)))
    with pytest.raises(StompProtocolError) as raised:
        conn.accept(frame, "alice")
    error = parse_one(conn.error(raised.value))
    assert error.get("message") == "unsupported version"
    assert error.get("version") == "1.0,1.1,1.2"


def test_connected_frame_reports_the_negotiation() -> None:
    conn = StompConnection(server_heartbeat_ms=4000)
    [frame] = feed(conn, Frame(Command.CONNECT, (("accept-version", "1.1,1.2"),
                                                 ("heart-beat", "0,8000"))))
    answer = parse_one(conn.accept(frame, "alice"))
    assert answer.command is Command.CONNECTED
    assert answer.get("version") == "1.2"
    assert answer.get("heart-beat") == "4000,4000"
    assert answer.get("user-name") == "alice"
    assert answer.get("session") == conn.session_id
    assert conn.heart_beats == HeartBeats(send_ms=8000, receive_ms=0)
    assert conn.state is State.CONNECTED


def test_silent_peer_deadline_is_twice_its_interval() -> None:
    conn = StompConnection(server_heartbeat_ms=1000)
    conn.receive_data(encode(Frame(Command.CONNECT, (("accept-version", "1.2"),
                                                     ("heart-beat", "3000,0"))), Version.V1_2),
                      now=100.0)
    [frame] = list(conn.events_received())
    assert conn.peer_deadline(connect_timeout_s=10, started=99.0) == 109.0  # before CONNECT
    conn.accept(frame, "alice")
    assert conn.peer_deadline(connect_timeout_s=10, started=99.0) == 106.0


def test_an_incomplete_frame_is_timed_from_when_the_server_first_waits_for_it() -> None:
    """BAD_INPUTS F1: the clock of a frame left incomplete starts the first time it is asked
    about (when the server is ready for more), keeps running while more of the same frame
    arrives, starts anew for the next frame, and stops between frames."""
    conn = connected()
    assert conn.incomplete_frame_since(5.0) is None
    conn.receive_data(b"SEND\ndestination:/d\n", now=6.0)
    assert list(conn.events_received()) == []
    assert conn.incomplete_frame_since(7.0) == 7.0
    conn.receive_data(b"\nhal", now=8.0)  # more of the same frame: the same clock
    assert list(conn.events_received()) == []
    assert conn.incomplete_frame_since(9.0) == 7.0
    conn.receive_data(b"f\0SEND\n", now=10.0)  # that frame done, the next one begun
    assert [frame.body for frame in conn.events_received()] == [b"half"]
    assert conn.incomplete_frame_since(11.0) == 11.0
    conn.receive_data(b"destination:/d\n\n\0\n\n", now=12.0)  # complete, then heart-beats
    assert len(list(conn.events_received())) == 1
    assert conn.incomplete_frame_since(13.0) is None


# --- subscriptions and acknowledgements ----------------------------------------------------------


def subscribe(conn: StompConnection, sub_id: str, ack: str = "auto") -> None:
    [frame] = feed(conn, Frame(Command.SUBSCRIBE, (("destination", "/d"), ("id", sub_id),
                                                   ("ack", ack))))
    conn.add_subscription(frame)


def test_duplicate_subscription_id_is_refused() -> None:
    conn = connected()
    subscribe(conn, "a")
    with pytest.raises(StompProtocolError, match="Duplicated subscription identifier"):
        subscribe(conn, "a")


def test_subscription_limit_is_enforced_at_one_past_the_limit() -> None:
    conn = connected(max_subscriptions=3)
    for n in range(3):
        subscribe(conn, str(n))
    with pytest.raises(StompProtocolError) as raised:
        subscribe(conn, "3")
    assert raised.value.message == "too many subscriptions"
    assert raised.value.close_code is CloseCode.POLICY_VIOLATION


def test_unknown_ack_mode_is_refused() -> None:
    with pytest.raises(StompProtocolError, match="unsupported ack mode"):
        subscribe(connected(), "a", ack="sometimes")


def test_unsubscribe_of_unknown_id_is_refused_and_registry_is_intact() -> None:
    conn = connected()
    subscribe(conn, "a")
    [frame] = feed(conn, Frame(Command.UNSUBSCRIBE, (("id", "zzz"),)))
    with pytest.raises(StompProtocolError, match="unknown subscription"):
        conn.remove_subscription(frame)
    assert list(conn.subscriptions) == ["a"]


def deliver(conn: StompConnection, sub_id: str) -> str:
    prefix = conn.message_prefix(conn.subscriptions[sub_id])
    frame = parse_one(prefix + b"destination:/d\n\n\0")
    ack = frame.get("ack")
    assert ack is not None and ack == frame.get("message-id")
    return ack


def ack(conn: StompConnection, ack_id: str, command: Command = Command.ACK) -> None:
    [frame] = feed(conn, Frame(command, (("id", ack_id),)))
    conn.acknowledge(frame)


def test_client_ack_is_cumulative_for_its_subscription() -> None:
    conn = connected()
    subscribe(conn, "c", ack=AckMode.CLIENT.value)
    subscribe(conn, "i", ack=AckMode.CLIENT_INDIVIDUAL.value)
    first, _second, third = (deliver(conn, "c") for _ in range(3))
    other = deliver(conn, "i")
    ack(conn, _second)
    assert conn.unacked == 2  # `third` and the other subscription's message remain
    with pytest.raises(StompProtocolError, match="unknown message"):
        ack(conn, first)
    ack(conn, third, Command.NACK)
    ack(conn, other)
    assert conn.unacked == 0


def test_client_individual_ack_settles_one_message() -> None:
    conn = connected()
    subscribe(conn, "i", ack=AckMode.CLIENT_INDIVIDUAL.value)
    first, second = deliver(conn, "i"), deliver(conn, "i")
    ack(conn, second)
    assert conn.unacked == 1
    ack(conn, first)
    assert conn.unacked == 0


def test_auto_subscription_messages_need_no_ack_and_acking_them_is_refused() -> None:
    conn = connected()
    subscribe(conn, "a")
    frame = parse_one(conn.message_prefix(conn.subscriptions["a"]) + b"\n\0")
    assert frame.get("ack") is None
    with pytest.raises(StompProtocolError, match="unknown message"):
        ack(conn, frame.get("message-id") or "")


def test_too_many_unacked_messages_close_the_connection() -> None:
    conn = connected(max_unacked=2)
    subscribe(conn, "c", ack="client")
    deliver(conn, "c")
    deliver(conn, "c")
    with pytest.raises(StompProtocolError, match="too many unacknowledged"):
        deliver(conn, "c")


# --- transactions ------------------------------------------------------------------------------


def test_transaction_holds_frames_until_commit() -> None:
    conn = connected()
    [begin] = feed(conn, VALID_FRAMES[Command.BEGIN])
    conn.begin(begin)
    send = Frame(Command.SEND, (("destination", "/app/message"), ("transaction", "t")), b"{}")
    [held] = feed(conn, send)
    assert conn.enlist(held)
    [commit] = feed(conn, VALID_FRAMES[Command.COMMIT])
    assert conn.commit(commit) == [send]
    with pytest.raises(StompProtocolError, match="unknown transaction"):
        conn.commit(commit)


def test_abort_discards_and_unknown_transaction_is_refused() -> None:
    conn = connected()
    [begin] = feed(conn, VALID_FRAMES[Command.BEGIN])
    conn.begin(begin)
    with pytest.raises(StompProtocolError, match="transaction already begun"):
        conn.begin(begin)
    [abort] = feed(conn, VALID_FRAMES[Command.ABORT])
    conn.abort(abort)
    send = Frame(Command.SEND, (("destination", "/app/message"), ("transaction", "t")))
    [held] = feed(conn, send)
    with pytest.raises(StompProtocolError, match="unknown transaction"):
        conn.enlist(held)


def test_frames_without_transaction_are_not_enlisted() -> None:
    conn = connected()
    assert not conn.enlist(VALID_FRAMES[Command.SEND])


# --- ERROR and RECEIPT -------------------------------------------------------------------------


def test_error_frame_has_message_receipt_id_content_length_and_closes() -> None:
    conn = connected()
    data = conn.error(StompProtocolError("Bad command", receipt_id="r1", detail="no such"))
    frame = parse_one(data)
    assert frame.command is Command.ERROR
    assert frame.get("message") == "Bad command"
    assert frame.get("receipt-id") == "r1"
    assert frame.get("content-type") == "text/plain"
    assert frame.get("content-length") == str(len(frame.body))
    assert frame.body == b"no such"
    assert conn.state is State.CLOSED


def test_receipt_only_when_asked() -> None:
    conn = connected()
    assert conn.receipt(Frame(Command.SEND)) is None
    answer = conn.receipt(Frame(Command.SEND, (("receipt", "a:b"),)))
    assert answer is not None
    assert parse_one(answer).get("receipt-id") == "a:b"


# --- lifecycle: the connection decides the close, once ---------------------------------------


def test_the_first_cause_decides_the_close_and_a_second_error_sends_nothing() -> None:
    conn = connected()
    first = conn.error(StompProtocolError("too slow", close_code=CloseCode.POLICY_VIOLATION))
    assert parse_one(first).get("message") == "too slow"
    assert conn.error(StompProtocolError("and then this")) == b""
    conn.disconnect()  # a later DISCONNECT changes nothing either
    assert conn.close == Close(CloseCode.POLICY_VIOLATION, "too slow", error=True)
    assert conn.closing and conn.state is State.CLOSED


def test_after_a_disconnect_no_error_frame_is_made() -> None:
    conn = connected()
    conn.disconnect()
    assert conn.close == Close(CloseCode.NORMAL, "disconnect")
    assert conn.error(StompProtocolError("late")) == b""
    assert conn.close is not None and not conn.close.error


def test_while_stopping_frames_not_yet_started_are_dropped_unanswered() -> None:
    conn = connected()
    conn.stop()
    assert conn.state is State.STOPPING and not conn.closing
    assert feed(conn, VALID_FRAMES[Command.SEND], VALID_FRAMES[Command.SUBSCRIBE]) == []
    conn.disconnect(CloseCode.GOING_AWAY, "server shutting down")
    assert conn.close == Close(CloseCode.GOING_AWAY, "server shutting down")


@pytest.mark.parametrize("version", list(Version))
@pytest.mark.parametrize("receipt_id", ["7", "a:b", "x\\y", "é😀", "a\nb"])
def test_receipt_is_the_encoded_receipt_frame(version: Version, receipt_id: str) -> None:
    conn = StompConnection(subprotocol=version)
    frame = Frame(Command.SEND, (("destination", "/x"), ("receipt", receipt_id)))
    try:
        expected: bytes | type[ValueError] = encode(
            Frame(Command.RECEIPT, (("receipt-id", receipt_id),)), version
        )
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            conn.receipt(frame)
    else:
        assert conn.receipt(frame) == expected


@pytest.mark.parametrize("version", list(Version))
@pytest.mark.parametrize("mode", list(AckMode))
def test_message_frame_is_the_prefix_then_the_shared_tail(version: Version, mode: AckMode) -> None:
    made, expected = connected(version), connected(version)
    for conn in (made, expected):
        subscribe(conn, "s:1", ack=mode.value)
    tail = b"destination:/d\ncontent-length:2\n\n{}\0"
    for _ in range(3):  # ids advance the same way on both paths
        frame = made.message_frame(made.subscriptions["s:1"], tail)
        assert frame == expected.message_prefix(expected.subscriptions["s:1"]) + tail
    assert made.unacked == expected.unacked == (0 if mode is AckMode.AUTO else 3)
    assert parse_one(frame).get("message-id") == "3"
