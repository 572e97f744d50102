"""Typing, sans-I/O: the one-per-second throttle where SENDs arrive, and the TTL every worker
applies."""

from __future__ import annotations

import itertools

from chat_server.models import RoomId, UserId
from chat_server.typing_state import Offer, TypingThrottle, Typists

ROOM = RoomId(1)
BOB, CAROL = UserId("bob"), UserId("carol")


def test_a_flood_of_true_is_one_signal_per_interval() -> None:
    throttle = TypingThrottle(1.0)
    offers = [throttle.offer(ROOM, BOB, True, now=n / 100) for n in range(250)]  # 100 a second
    assert [n for n, offer in enumerate(offers) if offer is Offer.RELAY] == [0, 100, 200]
    assert set(offers) == {Offer.RELAY, Offer.ABSORB}
    assert throttle.due(now=10.0) == []


def test_a_change_inside_the_interval_goes_when_it_ends() -> None:
    throttle = TypingThrottle(1.0)
    assert throttle.offer(ROOM, BOB, True, now=0.0) is Offer.RELAY
    assert throttle.offer(ROOM, BOB, False, now=0.3) is Offer.DEFER
    assert throttle.next_due() == 1.0
    assert throttle.due(now=0.99) == []
    assert throttle.due(now=1.0) == [(ROOM, BOB, False)]
    assert throttle.due(now=5.0) == []


def test_a_change_undone_inside_the_interval_sends_nothing() -> None:
    throttle = TypingThrottle(1.0)
    throttle.offer(ROOM, BOB, True, now=0.0)
    assert throttle.offer(ROOM, BOB, False, now=0.2) is Offer.DEFER
    assert throttle.offer(ROOM, BOB, True, now=0.4) is Offer.ABSORB
    assert throttle.due(now=2.0) == []


def test_alternating_signals_leave_at_most_one_per_interval() -> None:
    throttle = TypingThrottle(1.0)
    sent_at: list[float] = []
    for n in range(300):  # true, false, true, ... every 10 ms for 3 s
        now = n / 100
        sent_at += [now for _ in throttle.due(now)]
        if throttle.offer(ROOM, BOB, n % 2 == 0, now) is Offer.RELAY:
            sent_at.append(now)
    assert len(sent_at) <= 4
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(sent_at))


def test_users_and_rooms_are_throttled_apart() -> None:
    throttle = TypingThrottle(1.0)
    assert throttle.offer(ROOM, BOB, True, now=0.0) is Offer.RELAY
    assert throttle.offer(ROOM, CAROL, True, now=0.0) is Offer.RELAY
    assert throttle.offer(RoomId(2), BOB, True, now=0.0) is Offer.RELAY


def test_a_server_stop_makes_the_next_true_a_change_and_drops_what_was_deferred() -> None:
    throttle = TypingThrottle(1.0)
    throttle.offer(ROOM, BOB, True, now=0.0)
    throttle.offer(ROOM, BOB, False, now=0.1)
    assert throttle.was_typing(ROOM, BOB)
    throttle.stopped(ROOM, BOB)
    assert not throttle.was_typing(ROOM, BOB)
    assert throttle.due(now=1.5) == []
    assert throttle.offer(ROOM, BOB, True, now=0.5) is Offer.DEFER


def test_sweep_forgets_quiet_users() -> None:
    throttle = TypingThrottle(1.0)
    throttle.offer(ROOM, BOB, True, now=0.0)
    throttle.offer(ROOM, CAROL, True, now=0.9)
    throttle.sweep(now=1.5)
    assert len(throttle) == 1


def test_typing_lasts_until_false_or_the_ttl_and_refreshes_are_silent() -> None:
    typists = Typists(5.0)
    assert typists.started(ROOM, BOB, now=0.0)
    assert not typists.started(ROOM, BOB, now=3.0)  # refresh: nobody is told
    assert typists.expire(now=7.9) == []
    assert typists.typing(ROOM) == [BOB]
    assert typists.expire(now=8.0) == [(ROOM, BOB)]
    assert typists.typing(ROOM) == []
    assert typists.started(ROOM, BOB, now=9.0)
    assert typists.stopped(ROOM, BOB)
    assert not typists.stopped(ROOM, BOB)
    assert typists.expire(now=100.0) == []


def test_forgetting_a_room_drops_its_typists() -> None:
    typists = Typists(5.0)
    typists.started(ROOM, BOB, now=0.0)
    typists.started(RoomId(2), CAROL, now=0.0)
    typists.forget_room(ROOM)
    assert not typists.is_typing(ROOM, BOB)
    assert typists.expire(now=10.0) == [(RoomId(2), CAROL)]
