"""Typing: the rate limit where a typing SEND arrives, and every worker's view of who is typing
with its timeout. Sans-I/O: no asyncio, no broker; the time is passed in.

A typing SEND is never stored. On the worker that receives it, `TypingThrottle` lets at most one
typing signal per (room, user) go to the broker per interval (one second); a change of mind
inside the interval (`false` after `true`) is not lost but sent when the interval ends, and a
repeat of what was sent last is absorbed. Every worker that watches the room keeps `Typists`: a
user is typing from the first `true` until a `false`, or until the TTL (5 s) passes without a
`true` to refresh it. Clients are told of changes only, so a flood of `true` shows as one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum

from chat_server.models import RoomId, UserId

Key = tuple[RoomId, UserId]


class Offer(Enum):
    """What became of a typing SEND."""

    #: Published now.
    RELAY = "relayed"
    #: Inside the interval, and a change: published when the interval ends (if still wanted).
    DEFER = "deferred"
    #: Inside the interval, and what was published last: nothing to publish.
    ABSORB = "absorbed"


@dataclass(slots=True)
class _Sent:
    typing: bool
    at: float
    #: A change waiting for the interval to end.
    pending: bool | None = None


class TypingThrottle:
    """At most one typing signal per (room, user) and interval leaves this worker."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sent: dict[Key, _Sent] = {}
        #: (when it is due, key) for deferred changes; entries may be outdated (checked).
        self._due: list[tuple[float, Key]] = []

    def offer(self, room_id: RoomId, user: UserId, typing: bool, now: float) -> Offer:
        key = (room_id, user)
        sent = self._sent.get(key)
        if sent is None or now - sent.at >= self.interval_s:
            self._sent[key] = _Sent(typing, now)
            return Offer.RELAY
        if typing == sent.typing:
            sent.pending = None  # a change of mind undone: nothing left to send
            return Offer.ABSORB
        if sent.pending is None:
            heapq.heappush(self._due, (sent.at + self.interval_s, key))
        sent.pending = typing
        return Offer.DEFER

    def due(self, now: float) -> list[tuple[RoomId, UserId, bool]]:
        """Deferred changes whose interval ended: to publish now."""
        ready: list[tuple[RoomId, UserId, bool]] = []
        while self._due and self._due[0][0] <= now:
            _, key = heapq.heappop(self._due)
            sent = self._sent.get(key)
            if sent is None or sent.pending is None or now - sent.at < self.interval_s:
                continue
            ready.append((*key, sent.pending))
            self._sent[key] = _Sent(sent.pending, now)
        return ready

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def stopped(self, room_id: RoomId, user: UserId) -> None:
        """The server ended the user's typing (their message was stored, or they left): the
        next `true` is a change again, and nothing deferred is sent any more."""
        sent = self._sent.get((room_id, user))
        if sent is not None:
            sent.typing = False
            sent.pending = None

    def was_typing(self, room_id: RoomId, user: UserId) -> bool:
        sent = self._sent.get((room_id, user))
        return sent is not None and (sent.typing or bool(sent.pending))

    def sweep(self, now: float) -> None:
        """Forget users whose interval ended with nothing deferred (memory follows activity)."""
        for key in [k for k, s in self._sent.items()
                    if s.pending is None and now - s.at >= self.interval_s]:
            del self._sent[key]

    def __len__(self) -> int:
        return len(self._sent)


class Typists:
    """Who is typing in the rooms a worker watches, each until a `false` or the TTL."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._until: dict[RoomId, dict[UserId, float]] = {}
        self._expiries: list[tuple[float, RoomId, UserId]] = []

    def started(self, room_id: RoomId, user: UserId, now: float) -> bool:
        """A `true`: True if the user was not typing (subscribers are told), False for a
        refresh (the timeout restarts, nobody is told)."""
        typists = self._until.setdefault(room_id, {})
        fresh = user not in typists
        until = typists[user] = now + self.ttl_s
        heapq.heappush(self._expiries, (until, room_id, user))
        return fresh

    def stopped(self, room_id: RoomId, user: UserId) -> bool:
        """A `false` (sent, or made by the server): True if the user was typing."""
        typists = self._until.get(room_id)
        if typists is None or typists.pop(user, None) is None:
            return False
        if not typists:
            del self._until[room_id]
        return True

    def expire(self, now: float) -> list[Key]:
        """Users whose TTL passed without a refresh; they are no longer typing."""
        gone: list[Key] = []
        while self._expiries and self._expiries[0][0] <= now:
            until, room_id, user = heapq.heappop(self._expiries)
            if self._until.get(room_id, {}).get(user) == until:
                self.stopped(room_id, user)
                gone.append((room_id, user))
        return gone

    def next_expiry(self) -> float | None:
        # Outdated heap entries make this early at worst: the caller wakes, finds nothing.
        return self._expiries[0][0] if self._expiries else None

    def typing(self, room_id: RoomId) -> list[UserId]:
        return sorted(self._until.get(room_id, ()))

    def is_typing(self, room_id: RoomId, user: UserId) -> bool:
        typists = self._until.get(room_id)
        return typists is not None and user in typists

    def forget_room(self, room_id: RoomId) -> None:
        self._until.pop(room_id, None)
