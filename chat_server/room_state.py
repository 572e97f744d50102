"""RoomState: presence, typing and read events of the rooms this worker's clients watch, shared
with every other worker over the broker's topics (no second data store; any engine).

What workers tell each other (JSON objects; `k` names the kind, `w` the sending worker):

`state:workers`, every worker, always subscribed:
  {"k": "alive", "w": W, "ttl": 15.0, "hello": false}
        every TTL/5: W lives. `hello: true` (at start, and after the broker reconnected) asks
        the others to say they live at once.
  {"k": "ask", "w": W, "rooms": [1, 2]}
        W began to watch these rooms: every live worker answers each with a `here`, an empty
        one if it has nobody there, so W knows when its first snapshot is complete.
  {"k": "bye", "w": W}
        W shuts down: its users leave at once rather than after the TTL.

`state:{roomId}`, the workers watching the room:
  {"k": "here", "w": W, "n": 17, "room": 1, "users": ["alice"], "typing": ["bob"]}
        all of W's users in the room (a set that replaces W's previous one; `n` orders them):
        on every change, in answer to an `ask` (then with who W knows to be typing there), and
        every TTL in rooms shared with other workers.
  {"k": "typing", "room": 1, "user": "bob", "typing": true}
        a typing signal that passed the one-per-second throttle of the worker it arrived at, or
        the server's `false` when bob's message was stored.
  {"k": "read", "room": 1, "user": "bob", "seq": 42}
        bob's read marker moved forward (stored first).

Every worker derives its subscribers' events from these alone, its own publications coming back
like everyone's, so all workers tell the same story. A worker that dies (SIGKILL) stops its
`alive`; the others drop its users after 3/5 of the TTL without a word from it, checked every
TTL/5: its users leave within the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from chat_server import codec
from chat_server.broker.base import Broker, BrokerState
from chat_server.metrics import Metrics
from chat_server.models import ReadMarker, RoomId, UserId
from chat_server.presence import HEARTBEAT_SHARE, Presence, PresenceChange
from chat_server.store.base import MessageStore
from chat_server.typing_state import Offer, TypingThrottle, Typists

log = logging.getLogger(__name__)

WORKERS_TOPIC = "state:workers"


def state_topic(room_id: RoomId) -> str:
    return f"state:{room_id}"


#: Takes the JSON body of one event for one subscription (never blocks).
EventSink = Callable[[bytes], None]


@dataclass(slots=True, eq=False)
class EventTap:
    """One local subscription to a room's events."""

    room_id: RoomId
    sink: EventSink
    #: False until its snapshot went out: changes before it are in the snapshot.
    live: bool = False
    #: Read markers that moved while its snapshot was read from the store (folded into it).
    reads: dict[UserId, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Opening:
    """A room until every live worker answered this worker's ask (or the wait ran out)."""

    #: Who has not answered yet.
    awaiting: set[str] = field(default_factory=set)
    #: What snapshots wait on (made only for them).
    waiters: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class _Room:
    """A room this worker watches; kept small (an idle worker holds one per watched room)."""

    room_id: RoomId
    #: Local reasons to watch: connections subscribed to the room or its events, REST probes.
    holders: int = 0
    opening: _Opening | None = field(default_factory=_Opening)
    taps: list[EventTap] | None = None
    #: The last announcement of this worker's users here named somebody.
    announced: bool = False
    closed: bool = False


def _settle(room: _Room) -> None:
    """The room's first state is complete (or will not be): release whoever waits for it."""
    opening, room.opening = room.opening, None
    if opening is None:
        return
    if opening.timer is not None:
        opening.timer.cancel()
    if opening.waiters is not None and not opening.waiters.done():
        opening.waiters.set_result(None)


async def _answered(room: _Room) -> None:
    opening = room.opening
    if opening is None:
        return
    if opening.waiters is None:
        opening.waiters = asyncio.get_running_loop().create_future()
    await asyncio.shield(opening.waiters)


# --- what subscribers receive ------------------------------------------------------------------


def _event(kind: str, room_id: RoomId, **fields: Any) -> bytes:
    return codec.dumps({"type": kind, "roomId": room_id, **fields})


def presence_event(change: PresenceChange) -> bytes:
    return _event("join" if change.online else "leave", change.room_id, userId=change.user_id)


def typing_event(room_id: RoomId, user: UserId, typing: bool) -> bytes:
    return _event("typing", room_id, userId=user, typing=typing)


def read_event(room_id: RoomId, user: UserId, seq: int) -> bytes:
    return _event("read", room_id, userId=user, seq=seq)


class RoomState:
    """This worker's side of every room's presence, typing and read events."""

    def __init__(
        self,
        broker: Broker,
        store: MessageStore,
        metrics: Metrics,
        *,
        presence_ttl_s: float = 15.0,
        typing_ttl_s: float = 5.0,
        typing_interval_s: float = 1.0,
        ask_timeout_s: float = 0.5,
        worker_id: str | None = None,
    ) -> None:
        self.worker_id = worker_id or secrets.token_hex(6)
        self._broker = broker
        self._store = store
        self._metrics = metrics
        self._ttl_s = presence_ttl_s
        self._ask_timeout_s = ask_timeout_s
        self._presence = Presence(self.worker_id, ttl_s=presence_ttl_s)
        self._typists = Typists(typing_ttl_s)
        self._throttle = TypingThrottle(typing_interval_s)
        self._rooms: dict[RoomId, _Room] = {}
        #: This worker's announcement counter (`n` of its `here`s).
        self._number = 0
        #: Rooms to announce on the next turn of the loop; True: even if unchanged (an answer).
        self._dirty: dict[RoomId, bool] = {}
        self._flush_handle: asyncio.Handle | None = None
        #: The typing timer and when it is due. The time is kept here, not asked of the handle:
        #: uvloop answers `call_at` for a time already due with a plain Handle, which has no
        #: `when()`.
        self._wake: asyncio.Handle | None = None
        self._wake_at = 0.0
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._publisher: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: The last subscribe/unsubscribe of each topic: the next one waits for it, so a room
        #: closed and opened again at once ends subscribed.
        self._topic_ops: dict[str, asyncio.Future[None]] = {}
        self._closing = False

    @property
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._broker.subscribe(WORKERS_TOPIC)
        self._send(WORKERS_TOPIC, self._alive(hello=True))
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def close(self, grace_s: float = 1.0) -> None:
        """Say goodbye (this worker's users leave at once elsewhere), then stop."""
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for handle in (self._wake, self._flush_handle):
            if handle is not None:
                handle.cancel()
        for room in self._rooms.values():
            _settle(room)
        self._send(WORKERS_TOPIC, codec.dumps({"k": "bye", "w": self.worker_id}))
        pending = [task for task in (self._publisher, *self._tasks) if task is not None]
        if pending:
            await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _alive(self, *, hello: bool) -> bytes:
        return codec.dumps({"k": "alive", "w": self.worker_id, "ttl": self._ttl_s, "hello": hello})

    async def _tick_forever(self) -> None:
        """Heart-beats; the silent workers' users leave; repeated sets in shared rooms."""
        period = self._ttl_s * HEARTBEAT_SHARE
        ticks = 0
        while True:
            # Jittered below the period: workers spread out, and never beat later than it.
            await asyncio.sleep(period * random.uniform(0.8, 1.0))
            ticks += 1
            self._send(WORKERS_TOPIC, self._alive(hello=False))
            self._apply(self._presence.expire(self._now))
            if ticks % round(1 / HEARTBEAT_SHARE) == 0:  # once per TTL
                for room_id in self._presence.shared_rooms():
                    self._announce(room_id, force=True)
            self._throttle.sweep(self._now)

    # --- BrokerListener (the fan-out passes `state:` topics on) -------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            message = codec.loads(payload)
            if not isinstance(message, dict):
                raise TypeError("not an object")
            self._receive(message)
        except (ValueError, KeyError, TypeError):
            log.warning("dropped an undecodable room-state payload on %s", topic, exc_info=True)
        except Exception:
            # Our bug, not the payload's: it costs this event, never the broker's reader, which
            # carries the chat messages too (raising there drops the broker connection).
            log.exception("room state failed on a payload of %s", topic)

    def on_state(self, state: BrokerState) -> None:
        """Nothing to do: readiness and the metric are the fan-out's."""

    def on_resync(self) -> None:
        """The broker reconnected: announcements may have been missed either way."""
        self._send(WORKERS_TOPIC, self._alive(hello=True))
        rooms = [room for room in self._rooms.values() if not room.closed]
        if rooms:
            self._send(WORKERS_TOPIC, self._ask(room.room_id for room in rooms))
        for room in rooms:
            self._announce(room.room_id, force=True)

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message["k"]
        now = self._now
        if kind == "here":
            self._on_here(message, now)
        elif kind == "typing":
            self._on_typing(
                RoomId(int(message["room"])), UserId(str(message["user"])),
                bool(message["typing"]), now,
            )
        elif kind == "read":
            self._on_read(RoomId(int(message["room"])), UserId(str(message["user"])),
                          int(message["seq"]))
        elif kind == "alive":
            worker = str(message["w"])
            self._presence.heard_from(worker, now)
            if message.get("hello") and worker != self.worker_id:
                self._send(WORKERS_TOPIC, self._alive(hello=False))
        elif kind == "ask":
            self._presence.heard_from(str(message["w"]), now)
            for room_id in message["rooms"]:
                self._announce(RoomId(int(room_id)), force=True)
        elif kind == "bye":
            worker = str(message["w"])
            if worker != self.worker_id:
                self._apply(self._presence.worker_gone(worker))

    def _on_here(self, message: dict[str, Any], now: float) -> None:
        room_id = RoomId(int(message["room"]))
        worker = str(message["w"])
        users = [UserId(str(user)) for user in message["users"]]
        changes = self._presence.announced(room_id, worker, int(message["n"]), users, now)
        room = self._rooms.get(room_id)
        opening = room.opening if room is not None else None
        if room is not None and opening is not None and worker in opening.awaiting:
            # An answer to this worker's ask: it also says who is typing there already.
            opening.awaiting.discard(worker)
            for typist in message.get("typing", ()):
                if self._typists.started(room_id, UserId(str(typist)), now):
                    self._emit(room_id, typing_event(room_id, UserId(str(typist)), True))
            self._arm()
            if not opening.awaiting:
                _settle(room)
        self._apply(changes)

    # --- presence -----------------------------------------------------------------------------

    def enter(self, room_id: RoomId, user: UserId) -> None:
        """A local connection of `user` subscribed to the room or its events (a member:
        the caller checked)."""
        self._hold(room_id)
        first_here = not self._presence.is_local(room_id, user)
        changes = self._presence.enter(room_id, user)
        if first_here:
            self._metrics.online_users.set(self._presence.local_user_count)
            self._announce(room_id)
        self._apply(changes)

    def exit(self, room_id: RoomId, user: UserId) -> None:
        """That subscription ended (unsubscribed, removed from the room, or disconnected)."""
        if room_id not in self._rooms:
            return
        changes = self._presence.leave(room_id, user)
        if not self._presence.is_local(room_id, user):
            self._metrics.online_users.set(self._presence.local_user_count)
            self._announce(room_id)
        self._apply(changes)
        self._release(room_id)

    async def online_in(self, room_id: RoomId) -> list[UserId]:
        """Who is online in the room now, asking the other workers if this one does not watch
        it (`GET /api/chat-rooms/{id}/presence`)."""
        room = self._hold(room_id)
        try:
            await _answered(room)
            return sorted(self._presence.online(room_id))
        finally:
            self._release(room_id)

    def _apply(self, changes: Iterable[PresenceChange]) -> None:
        for change in changes:
            room_id, user = change.room_id, change.user_id
            if not change.online and self._typists.stopped(room_id, user):
                # Leaving ends typing: subscribers hear `false` before the `leave`.
                self._throttle.stopped(room_id, user)
                self._emit(room_id, typing_event(room_id, user, False))
            self._emit(room_id, presence_event(change))

    def _hold(self, room_id: RoomId) -> _Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room(room_id)
            self._presence.watch(room_id)
            self._spawn(self._open(room))
        room.holders += 1
        return room

    def _release(self, room_id: RoomId) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            return
        room.holders -= 1
        if room.holders > 0:
            return
        room.closed = True
        del self._rooms[room_id]
        _settle(room)
        if room.announced:
            self._announce(room_id, force=True)  # the others hear that nobody here is left
        self._presence.unwatch(room_id)
        self._typists.forget_room(room_id)
        self._spawn(self._topic_op(state_topic(room_id), self._broker.unsubscribe))

    async def _open(self, room: _Room) -> None:
        """Subscribe to the room's topic, then ask every live worker who is there."""
        await self._topic_op(state_topic(room.room_id), self._broker.subscribe)
        if room.closed:
            return
        opening = room.opening
        if opening is None:
            return
        if self._broker.state is BrokerState.CONNECTED:
            opening.awaiting.update(self._presence.live_workers())
        self._send(WORKERS_TOPIC, self._ask([room.room_id]))
        if not opening.awaiting:
            _settle(room)
        else:
            loop = asyncio.get_running_loop()
            opening.timer = loop.call_later(self._ask_timeout_s, _settle, room)

    def _ask(self, rooms: Iterable[RoomId]) -> bytes:
        return codec.dumps({"k": "ask", "w": self.worker_id, "rooms": list(rooms)})

    def _announce(self, room_id: RoomId, *, force: bool = False) -> None:
        """Announce this worker's users in the room on the next turn of the loop (changes of
        one turn go out as one set); `force` also for a room it no longer watches (an answer
        to an ask, or the empty set of a room it let go)."""
        self._dirty[room_id] = force or self._dirty.get(room_id, False)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, {}
        for room_id, force in dirty.items():
            room = self._rooms.get(room_id)
            if room is None and not force:
                continue
            users = self._presence.local_users(room_id)
            if room is not None:
                room.announced = bool(users)
            self._number += 1
            here: dict[str, Any] = {
                "k": "here", "w": self.worker_id, "n": self._number, "room": room_id,
                "users": users,
            }
            if force:  # an answer: the asker learns who is typing there too
                here["typing"] = self._typists.typing(room_id)
            self._send(state_topic(room_id), codec.dumps(here))

    # --- events subscriptions -------------------------------------------------------------------

    async def attach(self, tap: EventTap) -> None:
        """Start a room's events for `tap`: the snapshot first, once every worker answered,
        then the changes. The tap's connection must have `enter`ed the room."""
        room = self._rooms.get(tap.room_id)
        if room is None:
            raise RuntimeError("attach() before enter()")
        if room.taps is None:
            room.taps = []
        room.taps.append(tap)
        await _answered(room)
        reads = await self._store.reads(tap.room_id)
        if room.closed or room.taps is None or tap not in room.taps:
            return  # unsubscribed meanwhile
        for user, seq in tap.reads.items():
            reads[user] = max(reads.get(user, 0), seq)
        tap.reads.clear()
        online = self._presence.online(tap.room_id)
        snapshot = _event(
            "state", tap.room_id, online=sorted(online),
            typing=self._typists.typing(tap.room_id), reads=dict(sorted(reads.items())),
        )
        # No await from reading the state to going live: nothing can slip in between.
        tap.sink(snapshot)
        tap.live = True

    def detach(self, tap: EventTap) -> None:
        room = self._rooms.get(tap.room_id)
        if room is not None and room.taps is not None and tap in room.taps:
            room.taps.remove(tap)
            room.taps = room.taps or None

    def _emit(self, room_id: RoomId, body: bytes) -> None:
        room = self._rooms.get(room_id)
        if room is None or room.taps is None:
            return
        for tap in list(room.taps):
            if not tap.live:
                continue
            try:
                tap.sink(body)
            except Exception:  # one subscriber's bug must not stop the others
                log.exception("a subscriber of room %s's events failed", room_id)

    # --- typing ---------------------------------------------------------------------------------

    def typing(self, room_id: RoomId, user: UserId, typing: bool) -> Offer:
        """A member's typing SEND: relayed, deferred to the end of its interval, or absorbed."""
        offer = self._throttle.offer(room_id, user, typing, self._now)
        if offer is Offer.RELAY:
            self._send(state_topic(room_id), self._typing(room_id, user, typing))
        elif offer is Offer.DEFER:
            self._arm()
        self._metrics.typing_events.labels(offer.value).inc()
        return offer

    def message_stored(self, room_id: RoomId, sender: UserId) -> None:
        """A message of `sender` was stored: they stopped typing in that room. Two lookups per
        message; a broker message only if they were typing."""
        if self._typists.is_typing(room_id, sender) or self._throttle.was_typing(room_id, sender):
            self._throttle.stopped(room_id, sender)
            self._send(state_topic(room_id), self._typing(room_id, sender, False))

    @staticmethod
    def _typing(room_id: RoomId, user: UserId, typing: bool) -> bytes:
        return codec.dumps({"k": "typing", "room": room_id, "user": user, "typing": typing})

    def _on_typing(self, room_id: RoomId, user: UserId, typing: bool, now: float) -> None:
        if room_id not in self._rooms:
            return
        if typing:
            if self._typists.started(room_id, user, now):
                self._emit(room_id, typing_event(room_id, user, True))
            self._arm()
        elif self._typists.stopped(room_id, user):
            self._emit(room_id, typing_event(room_id, user, False))

    def _arm(self) -> None:
        """One timer for the earliest typing timeout or deferred signal."""
        deadlines = [d for d in (self._typists.next_expiry(), self._throttle.next_due())
                     if d is not None]
        if not deadlines or self._closing:
            return
        when = min(deadlines)
        if self._wake is not None:
            if self._wake_at <= when:
                return
            self._wake.cancel()
        self._wake_at = when
        self._wake = asyncio.get_running_loop().call_at(when, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        now = self._now
        for room_id, user, typing in self._throttle.due(now):
            self._send(state_topic(room_id), self._typing(room_id, user, typing))
        for room_id, user in self._typists.expire(now):
            self._emit(room_id, typing_event(room_id, user, False))
        self._arm()

    # --- read markers -------------------------------------------------------------------------

    def read_moved(self, marker: ReadMarker) -> None:
        """A stored read marker moved: every worker tells the room's events subscribers."""
        body = {"k": "read", "room": marker.room_id, "user": marker.user_id, "seq": marker.seq}
        self._send(state_topic(marker.room_id), codec.dumps(body))

    def _on_read(self, room_id: RoomId, user: UserId, seq: int) -> None:
        room = self._rooms.get(room_id)
        if room is None or room.taps is None:
            return
        body = read_event(room_id, user, seq)
        for tap in list(room.taps):
            if not tap.live:
                tap.reads[user] = max(tap.reads.get(user, 0), seq)
            else:
                try:
                    tap.sink(body)
                except Exception:
                    log.exception("a subscriber of room %s's events failed", room_id)

    # --- to the broker, in order ----------------------------------------------------------------

    def _send(self, topic: str, payload: bytes) -> None:
        """Publish in call order, from one task (publishing never blocks the caller)."""
        self._outgoing.append((topic, payload))
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.get_running_loop().create_task(self._publish_queued())

    async def _publish_queued(self) -> None:
        while self._outgoing:
            topic, payload = self._outgoing.popleft()
            try:
                await self._broker.publish(topic, payload)
            except Exception:
                log.warning("publishing room state to %s failed", topic, exc_info=True)

    async def _topic_op(self, topic: str, op: Callable[[str], Awaitable[None]]) -> None:
        previous = self._topic_ops.get(topic)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._topic_ops[topic] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await op(topic)
        except Exception:
            log.warning("room-state topic %s: %s failed", topic, op.__name__, exc_info=True)
        finally:
            mine.set_result(None)
            if self._topic_ops.get(topic) is mine:
                del self._topic_ops[topic]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def rooms_watched(self) -> int:
        return len(self._rooms)
