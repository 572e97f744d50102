"""Presence: who is online in each room a worker watches, its own connections merged with what
the other workers announce. Sans-I/O: no asyncio, no broker; the time is passed in.

A member is online in a room while at least one of their connections, on any worker, is
subscribed to the room or to its events. Each worker counts its own connections per (room, user)
and announces the set of its users per room; another worker's announcement holds until the same
worker announces again, says goodbye, or falls silent (see `Presence.expire`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from chat_server.models import RoomId, UserId

#: A worker silent for this share of the TTL is taken for dead. It announces itself every
#: `HEARTBEAT_SHARE` of the TTL, and silence is checked as often: a dead worker's users leave
#: within (SILENCE_SHARE + HEARTBEAT_SHARE) x TTL < TTL, and two lost heart-beats in a row
#: are tolerated.
HEARTBEAT_SHARE = 0.2
SILENCE_SHARE = 0.6
#: A room's announcement from a live worker is repeated every TTL in rooms shared with other
#: workers (it repairs one lost on the way); one not repeated for this many TTLs is dropped.
STALE_TTLS = 3.0


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A member came online in a room (`online`), or went offline."""

    room_id: RoomId
    user_id: UserId
    online: bool


@dataclass(slots=True)
class _Announced:
    users: frozenset[UserId]
    #: The announcing worker's counter: an older announcement arriving late changes nothing.
    number: int
    heard_at: float


class _Room:
    """One watched room; small on purpose: an idle worker holds one per room its sockets watch.
    Who is online is not stored: it is the local users and the announced ones, whose changes
    are worked out as they happen."""

    __slots__ = ("local", "remote")

    def __init__(self) -> None:
        #: This worker's connections (subscriptions to the room or its events): their users,
        #: sorted, once per connection. A tuple, not a dict of counts: most rooms have one or
        #: two here, and a tuple of one is a quarter of the smallest dict.
        self.local: tuple[UserId, ...] = ()
        #: Other workers' announced users (created at the first).
        self.remote: dict[str, _Announced] | None = None

    def count(self, user: UserId) -> int:
        """This worker's connections of `user` in the room."""
        at = bisect_left(self.local, user)
        return bisect_right(self.local, user, lo=at) - at

    def online(self) -> set[UserId]:
        online = set(self.local)
        for entry in (self.remote or {}).values():
            online |= entry.users
        return online

    def elsewhere(self, user: UserId) -> bool:
        """Another worker announced `user` here."""
        return any(user in entry.users for entry in (self.remote or {}).values())


class Presence:
    """This worker's view of who is online in the rooms it watches."""

    def __init__(self, worker_id: str, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("the presence TTL must be positive")
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self._rooms: dict[RoomId, _Room] = {}
        #: Rooms in which each user has local connections, for the online-users gauge.
        self._local_rooms: Counter[UserId] = Counter()
        #: Other workers, by when they were last heard from.
        self._workers: dict[str, float] = {}

    # --- rooms --------------------------------------------------------------------------------

    def watch(self, room_id: RoomId) -> None:
        """Track the room (its other workers' announcements are kept from now on)."""
        self._rooms.setdefault(room_id, _Room())

    def unwatch(self, room_id: RoomId) -> None:
        """Stop tracking the room: nobody here watches it any more (no changes to report)."""
        room = self._rooms.pop(room_id, None)
        if room is None:
            return
        for user in set(room.local):
            self._local_rooms[user] -= 1
            if self._local_rooms[user] <= 0:
                del self._local_rooms[user]

    def watched(self, room_id: RoomId) -> bool:
        return room_id in self._rooms

    def online(self, room_id: RoomId) -> frozenset[UserId]:
        room = self._rooms.get(room_id)
        return frozenset(room.online()) if room is not None else frozenset()

    # --- this worker's connections --------------------------------------------------------------

    def enter(self, room_id: RoomId, user: UserId) -> list[PresenceChange]:
        """One more local connection of `user` is in the watched room."""
        room = self._rooms.get(room_id)
        if room is None:
            return []
        at = bisect_right(room.local, user)
        room.local = (*room.local[:at], user, *room.local[at:])
        if room.count(user) > 1:
            return []
        self._local_rooms[user] += 1
        return [] if room.elsewhere(user) else [PresenceChange(room_id, user, True)]

    def leave(self, room_id: RoomId, user: UserId) -> list[PresenceChange]:
        """One local connection of `user` left the room (unsubscribed, or closed)."""
        room = self._rooms.get(room_id)
        if room is None or room.count(user) == 0:
            return []
        at = bisect_left(room.local, user)
        room.local = room.local[:at] + room.local[at + 1 :]
        if room.count(user) > 0:
            return []
        self._local_rooms[user] -= 1
        if self._local_rooms[user] <= 0:
            del self._local_rooms[user]
        return [] if room.elsewhere(user) else [PresenceChange(room_id, user, False)]

    def is_local(self, room_id: RoomId, user: UserId) -> bool:
        """`user` has a connection here in the room."""
        room = self._rooms.get(room_id)
        return room is not None and room.count(user) > 0

    def local_users(self, room_id: RoomId) -> tuple[UserId, ...]:
        """What this worker announces for the room, sorted."""
        room = self._rooms.get(room_id)
        return tuple(dict.fromkeys(room.local)) if room is not None else ()

    @property
    def local_user_count(self) -> int:
        """Distinct users with a connection here in at least one room."""
        return len(self._local_rooms)

    # --- the other workers ----------------------------------------------------------------------

    def heard_from(self, worker: str, now: float) -> bool:
        """Any word from `worker` shows it alive; True if it was not known to be."""
        if worker == self.worker_id:
            return False
        known = worker in self._workers
        self._workers[worker] = now
        return not known

    def announced(
        self, room_id: RoomId, worker: str, number: int, users: Iterable[UserId], now: float
    ) -> list[PresenceChange]:
        """`worker` says these are its users in the room (all of them: the set replaces the
        one it announced before)."""
        if worker == self.worker_id:
            return []
        self.heard_from(worker, now)
        room = self._rooms.get(room_id)
        if room is None:
            return []
        entries = room.remote or {}
        previous = entries.get(worker)
        if previous is not None and number < previous.number:
            return []  # overtaken by a newer announcement
        before = room.online()
        members = frozenset(users)
        if members:
            entries[worker] = _Announced(members, number, now)
        else:
            entries.pop(worker, None)
        room.remote = entries or None
        return _changes(room_id, before, room.online())

    def worker_gone(self, worker: str) -> list[PresenceChange]:
        """`worker` stopped (it said goodbye, or fell silent): its users leave its rooms."""
        self._workers.pop(worker, None)
        changes: list[PresenceChange] = []
        for room_id, room in self._rooms.items():
            if room.remote is not None and worker in room.remote:
                before = room.online()
                del room.remote[worker]
                room.remote = room.remote or None
                changes += _changes(room_id, before, room.online())
        return changes

    def expire(self, now: float) -> list[PresenceChange]:
        """Forget workers silent for longer than their share of the TTL, and announcements
        nobody repeated for several TTLs; their users leave."""
        changes: list[PresenceChange] = []
        silence = SILENCE_SHARE * self.ttl_s
        for worker in [w for w, heard in self._workers.items() if now - heard > silence]:
            changes += self.worker_gone(worker)
        stale = STALE_TTLS * self.ttl_s
        for room_id, room in self._rooms.items():
            if room.remote is None:
                continue
            old = [w for w, entry in room.remote.items() if now - entry.heard_at > stale]
            if not old:
                continue
            before = room.online()
            for worker in old:
                del room.remote[worker]
            room.remote = room.remote or None
            changes += _changes(room_id, before, room.online())
        return changes

    def live_workers(self) -> frozenset[str]:
        """The other workers heard from lately (as of the last `expire`)."""
        return frozenset(self._workers)

    def shared_rooms(self) -> list[RoomId]:
        """Watched rooms in which other workers have users as well as this one."""
        return [room_id for room_id, room in self._rooms.items() if room.remote and room.local]


def _changes(room_id: RoomId, before: set[UserId], after: set[UserId]) -> list[PresenceChange]:
    """Leaves first, then joins, each by user id: the same order on every worker."""
    return [PresenceChange(room_id, user, False) for user in sorted(before - after)] + [
        PresenceChange(room_id, user, True) for user in sorted(after - before)
    ]
