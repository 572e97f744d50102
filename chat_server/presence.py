"""Presence: who is online in each room a worker watches, its own connections merged with what
the other workers announce. Sans-I/O: no asyncio, no broker; the time is passed in.

A member is online in a room while at least one of their connections, on any worker, is
subscribed to the room or to its events. Each worker counts its own connections per (room, user)
and announces the set of its users per room; another worker's announcement holds until the same
worker announces again, says goodbye, or falls silent (see `Presence.expire`).
"""

from __future__ import annotations

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


class Presence:
    """This worker's view of who is online in the rooms it watches."""

    def __init__(self, worker_id: str, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("the presence TTL must be positive")
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self._watched: set[RoomId] = set()
        #: This worker's connections per room and user (subscriptions to the room or its
        #: events; a user is counted while above zero).
        self._local: dict[RoomId, Counter[UserId]] = {}
        #: Rooms in which each user has local connections, for the online-users gauge.
        self._local_rooms: Counter[UserId] = Counter()
        self._remote: dict[RoomId, dict[str, _Announced]] = {}
        #: Other workers, by when they were last heard from.
        self._workers: dict[str, float] = {}
        #: What each watched room's subscribers were last told.
        self._online: dict[RoomId, frozenset[UserId]] = {}

    # --- rooms --------------------------------------------------------------------------------

    def watch(self, room_id: RoomId) -> None:
        """Track the room (its other workers' announcements are kept from now on)."""
        self._watched.add(room_id)
        self._online.setdefault(room_id, self._compute(room_id))

    def unwatch(self, room_id: RoomId) -> None:
        """Stop tracking the room: nobody here watches it any more (no changes to report)."""
        self._watched.discard(room_id)
        self._remote.pop(room_id, None)
        self._online.pop(room_id, None)

    def watched(self, room_id: RoomId) -> bool:
        return room_id in self._watched

    def online(self, room_id: RoomId) -> frozenset[UserId]:
        return self._online.get(room_id, frozenset())

    # --- this worker's connections --------------------------------------------------------------

    def enter(self, room_id: RoomId, user: UserId) -> list[PresenceChange]:
        """One more local connection of `user` is in the room."""
        counts = self._local.setdefault(room_id, Counter())
        counts[user] += 1
        if counts[user] == 1:
            self._local_rooms[user] += 1
        return self._update(room_id)

    def leave(self, room_id: RoomId, user: UserId) -> list[PresenceChange]:
        """One local connection of `user` left the room (unsubscribed, or closed)."""
        counts = self._local.get(room_id)
        if counts is None or counts[user] <= 0:
            return []
        counts[user] -= 1
        if counts[user] == 0:
            del counts[user]
            self._local_rooms[user] -= 1
            if self._local_rooms[user] <= 0:
                del self._local_rooms[user]
            if not counts:
                del self._local[room_id]
        return self._update(room_id)

    def local_users(self, room_id: RoomId) -> frozenset[UserId]:
        """What this worker announces for the room."""
        return frozenset(self._local.get(room_id, ()))

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
        if room_id not in self._watched:
            return []
        entries = self._remote.setdefault(room_id, {})
        previous = entries.get(worker)
        if previous is not None and number < previous.number:
            return []  # overtaken by a newer announcement
        members = frozenset(users)
        if members:
            entries[worker] = _Announced(members, number, now)
        else:
            entries.pop(worker, None)
            if not entries:
                del self._remote[room_id]
        return self._update(room_id)

    def worker_gone(self, worker: str) -> list[PresenceChange]:
        """`worker` stopped (it said goodbye, or fell silent): its users leave its rooms."""
        self._workers.pop(worker, None)
        changes: list[PresenceChange] = []
        for room_id in [room for room, entries in self._remote.items() if worker in entries]:
            entries = self._remote[room_id]
            del entries[worker]
            if not entries:
                del self._remote[room_id]
            changes += self._update(room_id)
        return changes

    def expire(self, now: float) -> list[PresenceChange]:
        """Forget workers silent for longer than their share of the TTL, and announcements
        nobody repeated for several TTLs; their users leave."""
        changes: list[PresenceChange] = []
        silence = SILENCE_SHARE * self.ttl_s
        for worker in [w for w, heard in self._workers.items() if now - heard > silence]:
            changes += self.worker_gone(worker)
        stale = STALE_TTLS * self.ttl_s
        for room_id in list(self._remote):
            entries = self._remote[room_id]
            old = [w for w, entry in entries.items() if now - entry.heard_at > stale]
            for worker in old:
                del entries[worker]
            if not entries:
                del self._remote[room_id]
            if old:
                changes += self._update(room_id)
        return changes

    def live_workers(self) -> frozenset[str]:
        """The other workers heard from lately (as of the last `expire`)."""
        return frozenset(self._workers)

    def shared_rooms(self) -> list[RoomId]:
        """Watched rooms in which other workers have users as well as this one."""
        return [room for room in self._remote if room in self._local]

    # --- the merged view ----------------------------------------------------------------------

    def _compute(self, room_id: RoomId) -> frozenset[UserId]:
        online = set(self._local.get(room_id, ()))
        for entry in self._remote.get(room_id, {}).values():
            online |= entry.users
        return frozenset(online)

    def _update(self, room_id: RoomId) -> list[PresenceChange]:
        if room_id not in self._watched:
            return []
        before = self._online.get(room_id, frozenset())
        after = self._compute(room_id)
        if after == before:
            return []
        self._online[room_id] = after
        # Leaves first, then joins, each by user id: the same order on every worker.
        return [PresenceChange(room_id, user, False) for user in sorted(before - after)] + [
            PresenceChange(room_id, user, True) for user in sorted(after - before)
        ]
