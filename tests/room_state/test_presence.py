"""Presence, sans-I/O: local connections, other workers' announcements, silence and the TTL."""

from __future__ import annotations

import pytest

from chat_server.models import RoomId, UserId
from chat_server.presence import SILENCE_SHARE, STALE_TTLS, Presence, PresenceChange

ROOM, OTHER_ROOM = RoomId(1), RoomId(2)
ALICE, BOB, CAROL = UserId("alice"), UserId("bob"), UserId("carol")
TTL = 15.0


def join(user: UserId, room: RoomId = ROOM) -> PresenceChange:
    return PresenceChange(room, user, True)


def leave(user: UserId, room: RoomId = ROOM) -> PresenceChange:
    return PresenceChange(room, user, False)


@pytest.fixture
def presence() -> Presence:
    view = Presence("here", ttl_s=TTL)
    view.watch(ROOM)
    return view


def test_first_connection_joins_and_last_one_leaves(presence: Presence) -> None:
    assert presence.enter(ROOM, ALICE) == [join(ALICE)]
    assert presence.enter(ROOM, ALICE) == []  # a second device
    assert presence.leave(ROOM, ALICE) == []
    assert presence.online(ROOM) == {ALICE}
    assert presence.leave(ROOM, ALICE) == [leave(ALICE)]
    assert presence.online(ROOM) == set()
    assert presence.leave(ROOM, ALICE) == []  # more leaves than entries change nothing


def test_a_user_on_two_workers_leaves_only_when_both_let_go(presence: Presence) -> None:
    presence.enter(ROOM, ALICE)
    assert presence.announced(ROOM, "w2", 1, [ALICE], now=0.0) == []
    assert presence.leave(ROOM, ALICE) == []
    assert presence.announced(ROOM, "w2", 2, [], now=1.0) == [leave(ALICE)]


def test_announcements_replace_the_workers_set_and_late_ones_are_ignored(
    presence: Presence,
) -> None:
    assert presence.announced(ROOM, "w2", 1, [ALICE, BOB], now=0.0) == [join(ALICE), join(BOB)]
    assert presence.announced(ROOM, "w2", 3, [BOB, CAROL], now=0.1) == [leave(ALICE), join(CAROL)]
    assert presence.announced(ROOM, "w2", 2, [ALICE], now=0.2) == []  # overtaken
    assert presence.online(ROOM) == {BOB, CAROL}


def test_own_echo_and_unwatched_rooms_change_nothing(presence: Presence) -> None:
    assert presence.announced(ROOM, "here", 1, [ALICE], now=0.0) == []
    assert presence.announced(OTHER_ROOM, "w2", 1, [ALICE], now=0.0) == []
    assert presence.online(OTHER_ROOM) == set()
    assert presence.live_workers() == {"w2"}  # it spoke, so it lives


def test_a_silent_worker_is_gone_within_the_ttl(presence: Presence) -> None:
    presence.watch(OTHER_ROOM)
    presence.announced(ROOM, "w2", 1, [ALICE], now=0.0)
    presence.announced(OTHER_ROOM, "w2", 2, [BOB], now=0.0)
    presence.heard_from("w3", now=0.0)
    presence.announced(ROOM, "w3", 1, [CAROL], now=0.0)
    presence.heard_from("w3", now=SILENCE_SHARE * TTL)  # w3's heart-beat; w2 is silent
    assert presence.expire(SILENCE_SHARE * TTL) == []
    gone = presence.expire(SILENCE_SHARE * TTL + 0.01)
    assert gone == [leave(ALICE), leave(BOB, OTHER_ROOM)]
    assert presence.live_workers() == {"w3"}
    assert presence.online(ROOM) == {CAROL}


def test_goodbye_removes_a_worker_at_once(presence: Presence) -> None:
    presence.announced(ROOM, "w2", 1, [ALICE], now=0.0)
    assert presence.worker_gone("w2") == [leave(ALICE)]
    assert presence.live_workers() == set()


def test_an_announcement_not_repeated_for_several_ttls_is_dropped(presence: Presence) -> None:
    presence.announced(ROOM, "w2", 1, [ALICE], now=0.0)
    late = STALE_TTLS * TTL + 1
    presence.heard_from("w2", now=late)  # alive, but never repeated its set
    assert presence.expire(late) == [leave(ALICE)]


def test_shared_rooms_are_those_with_users_here_and_elsewhere(presence: Presence) -> None:
    presence.watch(OTHER_ROOM)
    presence.enter(ROOM, ALICE)
    presence.enter(OTHER_ROOM, ALICE)
    presence.announced(ROOM, "w2", 1, [BOB], now=0.0)
    assert presence.shared_rooms() == [ROOM]


def test_unwatching_forgets_the_room(presence: Presence) -> None:
    presence.announced(ROOM, "w2", 1, [ALICE], now=0.0)
    presence.unwatch(ROOM)
    assert not presence.watched(ROOM)
    assert presence.online(ROOM) == set()
    presence.watch(ROOM)
    assert presence.online(ROOM) == set()  # w2 must announce again (it is asked to)


def test_local_user_count_counts_people_not_rooms(presence: Presence) -> None:
    presence.watch(OTHER_ROOM)
    presence.enter(ROOM, ALICE)
    presence.enter(OTHER_ROOM, ALICE)
    presence.enter(ROOM, BOB)
    assert presence.local_user_count == 2
    presence.leave(ROOM, ALICE)
    assert presence.local_user_count == 2
    presence.leave(OTHER_ROOM, ALICE)
    assert presence.local_user_count == 1
    assert presence.local_users(ROOM) == (BOB,)


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Presence("w", ttl_s=0)


def test_many_connections_of_many_users_are_counted_each(presence: Presence) -> None:
    users = [UserId(f"user{n:03d}") for n in range(300)]
    joins = [change for user in users * 2 for change in presence.enter(ROOM, user)]
    assert joins == [join(user) for user in users]  # the first connection of each joins
    assert presence.local_users(ROOM) == tuple(users)
    assert presence.local_user_count == 300
    leaves = [change for user in reversed(users * 2) for change in presence.leave(ROOM, user)]
    assert leaves == [leave(user) for user in reversed(users)]  # the last one of each leaves
    assert presence.online(ROOM) == set() and presence.local_user_count == 0
