"""One connection's subscriptions: what each one delivers, and the rules for adding and ending
them (membership, the server ending them when a member is removed).

A subscription to a room, or to its events, also makes its user present in the room
(`RoomState.enter`) until it ends."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from chat_server.destinations import (
    ERRORS_DESTINATION,
    NOTIFICATIONS_DESTINATION,
    USER_QUEUES,
    room_events_of,
    room_of,
)
from chat_server.fanout import Fanout, Tap
from chat_server.metrics import Metrics
from chat_server.models import RoomId, UserId
from chat_server.outlet import Outlet
from chat_server.room_state import EventTap, RoomState
from chat_server.stomp.connection import StompConnection, Subscription
from chat_server.stomp.errors import CloseCode
from chat_server.stomp.frames import Frame

_SEQ = re.compile(r"0|[1-9][0-9]{0,17}", re.ASCII)

MayRead = Callable[[UserId, RoomId], Awaitable[bool]]


@dataclass(slots=True, eq=False)
class _Entry:
    subscription: Subscription
    #: The room it concerns (its messages or its events); None for a user queue.
    room_id: RoomId | None = None
    #: The room feed it reads, for a room's messages.
    tap: Tap | None = None
    #: The room's events it reads, for `/queue/chat-rooms/{id}/events`.
    events: EventTap | None = None
    #: Counted in the room's presence (as this user), from the membership check to its end.
    present_as: UserId | None = None


class SubscriptionRegistry:
    """Every subscription of one connection, in the order they were made.

    The STOMP connection keeps the protocol's side of each (its id, its ack mode, unacked
    messages); this keeps where it delivers. Both change together, only here.
    """

    __slots__ = (
        "_conn",
        "_ended",
        "_entries",
        "_fanout",
        "_gauge",
        "_may_read",
        "_outlet",
        "_removals",
        "_room_state",
    )

    def __init__(
        self,
        conn: StompConnection,
        outlet: Outlet,
        fanout: Fanout,
        may_read: MayRead,
        metrics: Metrics,
        room_state: RoomState,
    ) -> None:
        self._conn = conn
        self._outlet = outlet
        self._fanout = fanout
        self._room_state = room_state
        self._may_read = may_read
        self._gauge = metrics.subscriptions
        self._entries: dict[str, _Entry] = {}
        # The two below are made on a member's first removal: most connections never see one,
        # and an idle connection should weigh little.
        #: Ids the server ended (member removed), oldest first: the client's UNSUBSCRIBE of one
        #: is answered, not refused (BAD_INPUTS P25). Bounded like the subscriptions themselves.
        self._ended: dict[str, None] | None = None
        #: ROOM_REMOVED events seen per room, so a SUBSCRIBE whose membership check raced a
        #: removal notices it (BAD_INPUTS A1/A8).
        self._removals: dict[RoomId, int] | None = None

    def _first(self, destination: str) -> Subscription | None:
        for entry in self._entries.values():
            if entry.subscription.destination == destination:
                return entry.subscription
        return None

    @property
    def errors(self) -> Subscription | None:
        """Where this connection's refused SENDs are reported, if it asked (Spring's way)."""
        return self._first(ERRORS_DESTINATION)

    @property
    def notifications(self) -> Subscription | None:
        return self._first(NOTIFICATIONS_DESTINATION)

    def __len__(self) -> int:
        return len(self._entries)

    def watches(self, room_id: RoomId) -> bool:
        """A subscription of this connection to the room or its events passed the membership
        check and has not ended (the server ends them when the user is removed)."""
        return any(
            entry.room_id == room_id and entry.present_as is not None
            for entry in self._entries.values()
        )

    # --- the client's frames ------------------------------------------------------------------

    async def subscribe(self, frame: Frame, user: UserId) -> None:
        destination = frame.get("destination") or ""
        room_id = room_of(destination)
        events_of = room_events_of(destination) if room_id is None else None
        if room_id is None and events_of is None and destination not in USER_QUEUES:
            raise self._conn.refuse(frame, "Unknown destination")
        resume_after = self._resume_after(frame)
        entry = self._add(self._conn.add_subscription(frame))
        entry.room_id = room_id or events_of
        if entry.room_id is None:
            return
        removals = self._removal_count(entry.room_id)
        # Nothing of the room reaches this connection before the check: the tap attaches after.
        allowed = await self._may_read(user, entry.room_id)
        if not allowed or self._removal_count(entry.room_id) != removals:
            self._remove(entry)
            raise self._conn.refuse(frame, "forbidden", CloseCode.POLICY_VIOLATION)
        self._room_state.enter(entry.room_id, user)
        entry.present_as = user
        if events_of is not None:
            entry.events = EventTap(
                events_of, sink=partial(self._outlet.push, entry.subscription, destination)
            )
            await self._room_state.attach(entry.events)
            return
        assert room_id is not None
        entry.tap = Tap(
            room_id,
            sink=partial(self._outlet.deliver, entry.subscription),  # lighter than a closure
            drain=self._outlet.outbox.wait_drained,
        )
        await self._fanout.attach(entry.tap, resume_after)

    def unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id") or frame.get("destination") or ""
        if sub_id not in self._entries and self._ended is not None and sub_id in self._ended:
            del self._ended[sub_id]
            return  # the server ended it already: nothing to undo, nothing to refuse
        subscription = self._conn.remove_subscription(frame)
        entry = self._entries.get(subscription.id)
        if entry is not None:
            self._remove(entry)

    def _resume_after(self, frame: Frame) -> int | None:
        raw = frame.get("x-resume-after")
        if raw is None:
            return None
        if not _SEQ.fullmatch(raw):
            raise self._conn.refuse(frame, "invalid x-resume-after")
        return int(raw)

    # --- the server's side --------------------------------------------------------------------

    def _removal_count(self, room_id: RoomId) -> int:
        return 0 if self._removals is None else self._removals.get(room_id, 0)

    def room_removed(self, room_id: RoomId) -> None:
        """The user left the room or was removed: end this connection's subscriptions to it."""
        removals = self._removals = self._removals or {}
        removals[room_id] = removals.get(room_id, 0) + 1
        ended = self._ended = self._ended or {}
        for entry in list(self._entries.values()):
            if entry.room_id == room_id:
                self._remove(entry)
                ended[entry.subscription.id] = None
                while len(ended) > self._conn.limits.max_subscriptions:
                    del ended[next(iter(ended))]

    def release(self) -> None:
        """The connection is gone: stop every feed."""
        for entry in list(self._entries.values()):
            self._remove(entry)

    def _add(self, subscription: Subscription) -> _Entry:
        if self._ended is not None:
            self._ended.pop(subscription.id, None)
        entry = self._entries[subscription.id] = _Entry(subscription)
        self._gauge.inc()
        return entry

    def _remove(self, entry: _Entry) -> None:
        if self._entries.get(entry.subscription.id) is not entry:
            return
        del self._entries[entry.subscription.id]
        self._gauge.dec()
        if entry.tap is not None:
            self._fanout.detach(entry.tap)
        if entry.events is not None:
            self._room_state.detach(entry.events)
        if entry.present_as is not None and entry.room_id is not None:
            self._room_state.exit(entry.room_id, entry.present_as)
            entry.present_as = None
        self._conn.drop_subscription(entry.subscription)
