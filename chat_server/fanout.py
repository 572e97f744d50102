"""Local fan-out: each watched room's feed, delivered in `seq` order to this worker's subscribers.

A room's messages come in two ways, into one sink (`deliver`): straight from this worker's
commits, and from the broker (every worker's, this one's echoes included). A feed keeps the
last `seq` it delivered and drops anything at or below it, so either way each is delivered once.

The broker may deliver a room's messages late, twice, out of order or not at all (Redis pub/sub
is at-most-once, and two workers may publish in a different order than they committed). The
store is the record: a feed tracks the last `seq` it delivered, holds early arrivals, and reads
what is missing from the store, so every subscriber sees 1, 2, 3, ... once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any

from chat_server.broker.base import (
    Broker,
    BrokerListener,
    BrokerState,
    room_topic,
    user_topic,
)
from chat_server.errors import StoreUnavailable
from chat_server.metrics import Metrics
from chat_server.models import (
    ChatMessage,
    RoomId,
    UserEvent,
    UserId,
    decode_envelope,
    decode_user_event,
)
from chat_server.store.base import MessageStore

log = logging.getLogger(__name__)

#: Messages read per store query while filling a gap or replaying history.
PAGE = 100
#: Early arrivals a room holds before it stops waiting and reads the store at once.
MAX_HELD = 1000


@dataclass(slots=True, eq=False)
class Delivery:
    """One stored message on its way to this worker's subscribers.

    `encoded` caches the subscriber-independent bytes (per protocol version), so a message is
    encoded once per worker however many sockets it goes to.
    """

    message: ChatMessage
    encoded: dict[Hashable, bytes] = field(default_factory=dict)


MessageSink = Callable[[Delivery], None]
EventSink = Callable[[UserEvent], None]


@dataclass(slots=True, eq=False)
class Tap:
    """One local subscription to a room: where it is in the room's `seq` and where it writes."""

    room_id: RoomId
    sink: MessageSink
    last_seq: int = 0
    #: False while replaying stored messages (`x-resume-after`); live deliveries skip it then.
    live: bool = False
    #: Awaited between replayed pages, so a long history never floods the subscriber's outbox.
    drain: Callable[[], Awaitable[None]] | None = None


@dataclass(slots=True, eq=False)
class _Feed:
    room_id: RoomId
    taps: list[Tap] = field(default_factory=list)
    #: Last seq delivered to the taps; None until read from the store after subscribing.
    last_seq: int | None = None
    held: dict[int, ChatMessage] = field(default_factory=dict)
    #: What subscribers arriving while it opens (`last_seq` still None) wait for; made only
    #: for them, dropped once it opened or failed to.
    ready: asyncio.Future[None] | None = None
    gap_timer: asyncio.TimerHandle | None = None
    filling: bool = False


def _opened(feed: _Feed) -> None:
    """Opening ended, well or not: release whoever waits for it."""
    if feed.ready is not None and not feed.ready.done():
        feed.ready.set_result(None)
    feed.ready = None


class Fanout:
    """The worker's single `BrokerListener`: room feeds and user-event sinks; `state:` topics
    (presence, typing, read events) go on to `room_state`."""

    def __init__(
        self,
        broker: Broker,
        store: MessageStore,
        *,
        gap_wait_s: float = 0.2,
        reconcile_interval_s: float = 5.0,
        metrics: Metrics,
        room_state: BrokerListener | None = None,
        max_concurrent_fills: int = 4,
    ) -> None:
        self._broker = broker
        # A resync schedules a fill for every watched room at once; unbounded, they took the
        # whole database pool and SUBSCRIBEs were refused meanwhile.
        self._fill_slots = asyncio.Semaphore(max_concurrent_fills)
        self._store = store
        self._gap_wait_s = gap_wait_s
        self._reconcile_interval_s = reconcile_interval_s
        self._feeds: dict[RoomId, _Feed] = {}
        self._users: dict[UserId, list[EventSink]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconciler: asyncio.Task[None] | None = None
        self._metrics = metrics
        self._room_state = room_state

    # --- rooms ------------------------------------------------------------------------------

    async def attach(self, tap: Tap, resume_after: int | None = None) -> None:
        """Start delivering the room to `tap`: new messages only, or those after `resume_after`.

        Returns once the tap is live; stored messages it replays are written to its sink first.
        """
        feed = self._feeds.get(tap.room_id)
        if feed is None:
            feed = self._feeds[tap.room_id] = _Feed(tap.room_id)
            feed.taps.append(tap)
            await self._open(feed)
        else:
            feed.taps.append(tap)
            if feed.last_seq is None:  # still opening
                if feed.ready is None:
                    feed.ready = asyncio.get_running_loop().create_future()
                await asyncio.shield(feed.ready)  # one waiter's cancellation is not the others'
            if feed.last_seq is None:  # the first subscriber's attempt to open it failed
                self.detach(tap)
                raise StoreUnavailable(f"room {tap.room_id} could not be opened")
        position = feed.last_seq
        assert position is not None
        if resume_after is None or resume_after >= position:
            tap.last_seq = position if resume_after is None else resume_after
            tap.live = True
            return
        tap.last_seq = resume_after
        await self._replay(feed, tap)

    def detach(self, tap: Tap) -> None:
        feed = self._feeds.get(tap.room_id)
        if feed is None or tap not in feed.taps:
            return
        feed.taps.remove(tap)
        if not feed.taps:
            del self._feeds[tap.room_id]
            if feed.gap_timer is not None:
                feed.gap_timer.cancel()
            _opened(feed)  # nobody waits on a closed feed
            self._spawn(self._broker.unsubscribe(room_topic(tap.room_id)))

    async def _open(self, feed: _Feed) -> None:
        # Subscribe before reading the room's position, so nothing published in between is
        # missed: early arrivals are held and sorted out once the position is known.
        try:
            await self._broker.subscribe(room_topic(feed.room_id))
            feed.last_seq = await self._store.last_seq(feed.room_id)
        except BaseException:
            self._feeds.pop(feed.room_id, None)
            _opened(feed)
            raise
        _opened(feed)
        self._advance(feed)

    async def _replay(self, feed: _Feed, tap: Tap) -> None:
        while True:
            page = await self._store.messages(feed.room_id, after=tap.last_seq, limit=PAGE)
            replayed = sum(self._emit(tap, Delivery(message)) for message in page)
            self._metrics.messages_delivered.inc(replayed)
            self._metrics.message_frames_sent.inc(replayed)
            if tap.drain is not None and len(page) == PAGE:
                await tap.drain()
            assert feed.last_seq is not None
            # No await between this check and going live: the feed cannot move in between.
            if len(page) < PAGE and tap.last_seq >= feed.last_seq:
                tap.live = True
                return

    # --- BrokerListener -----------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._on_message(topic, payload)
        except Exception:
            # A bug here must not end the broker's reader: it carries every room's messages.
            # What this message should have done is recovered by the gap fill and reconcile.
            log.exception("could not handle a broker message on %s", topic)

    def _on_message(self, topic: str, payload: bytes) -> None:
        kind, _, key = topic.partition(":")
        if kind == "state":
            if self._room_state is not None:
                self._room_state.on_message(topic, payload)
            return
        try:
            if kind == "room":
                message = decode_envelope(payload)
            elif kind == "user":
                event = decode_user_event(payload)
            else:
                return
        except (ValueError, KeyError, TypeError):
            log.exception("dropped an undecodable broker payload on %s", topic)
            return
        if kind == "room":
            self.deliver(message)
        else:
            self._on_user_event(UserId(key), event)

    def on_state(self, state: BrokerState) -> None:
        self._metrics.broker_connected.set(1 if state is BrokerState.CONNECTED else 0)
        if self._room_state is not None:
            self._room_state.on_state(state)

    def on_resync(self) -> None:
        for feed in list(self._feeds.values()):
            self._schedule_fill(feed, delay=0.0)
        if self._room_state is not None:
            self._room_state.on_resync()

    # --- ordering -----------------------------------------------------------------------------

    def deliver(self, message: ChatMessage) -> None:
        """A stored message, from this worker's commit or the broker: idempotent by `seq`."""
        feed = self._feeds.get(message.room_id)
        if feed is None:
            return
        if feed.last_seq is not None and message.seq <= feed.last_seq:
            return  # already delivered: a duplicate or a message the gap fill read first
        feed.held[message.seq] = message
        if feed.last_seq is not None:
            self._advance(feed)

    def _advance(self, feed: _Feed) -> None:
        """Deliver held messages while they continue the sequence; wait for a gap to close."""
        assert feed.last_seq is not None
        for seq in [s for s in feed.held if s <= feed.last_seq]:
            del feed.held[seq]
        while (message := feed.held.pop(feed.last_seq + 1, None)) is not None:
            self._dispatch(feed, message)
        if feed.held:
            self._schedule_fill(feed, delay=0.0 if len(feed.held) > MAX_HELD else self._gap_wait_s)
        elif feed.gap_timer is not None:
            feed.gap_timer.cancel()
            feed.gap_timer = None

    def _schedule_fill(self, feed: _Feed, delay: float) -> None:
        if feed.filling or (feed.gap_timer is not None and delay > 0):
            return
        if feed.gap_timer is not None:
            feed.gap_timer.cancel()
        loop = asyncio.get_running_loop()
        feed.gap_timer = loop.call_later(delay, lambda: self._spawn(self._fill(feed)))

    async def _fill(self, feed: _Feed) -> None:
        feed.gap_timer = None
        if feed.filling or self._feeds.get(feed.room_id) is not feed or feed.last_seq is None:
            return
        feed.filling = True
        self._metrics.gap_fills.inc()
        try:
            async with self._fill_slots:
                while self._feeds.get(feed.room_id) is feed:  # not for a room given up meanwhile
                    page = await self._store.messages(
                        feed.room_id, after=feed.last_seq, limit=PAGE
                    )
                    for message in page:
                        # The store is the record: what it holds after last_seq comes next.
                        if message.seq > feed.last_seq:
                            feed.held.pop(message.seq, None)
                            self._dispatch(feed, message)
                    if len(page) < PAGE:
                        break
        except Exception:
            log.exception("could not fill a gap in room %s; retrying", feed.room_id)
            feed.filling = False
            self._schedule_fill(feed, delay=max(self._gap_wait_s, 1.0))
            return
        feed.filling = False
        self._advance(feed)

    def _dispatch(self, feed: _Feed, message: ChatMessage) -> None:
        feed.last_seq = message.seq
        delivery = Delivery(message)
        sent = sum(self._emit(tap, delivery) for tap in feed.taps if tap.live)
        if sent:
            # Counted once per message, not per socket: this is the hot path.
            self._metrics.messages_delivered.inc(sent)
            self._metrics.message_frames_sent.inc(sent)
            lag = time.time() - message.created_at_ms / 1000
            self._metrics.delivery_latency.observe(max(0.0, lag))

    def _emit(self, tap: Tap, delivery: Delivery) -> bool:
        if delivery.message.seq <= tap.last_seq:
            return False
        tap.last_seq = delivery.message.seq
        try:
            tap.sink(delivery)
        except Exception:  # one subscriber's bug must not stop the room for the others
            log.exception("a subscriber of room %s failed to take a message", tap.room_id)
            return False
        return True

    # --- reconciliation --------------------------------------------------------------------------

    def start(self) -> None:
        if self._reconcile_interval_s > 0:
            loop = asyncio.get_running_loop()
            self._reconciler = loop.create_task(self._reconcile_forever())

    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reconcile_interval_s)
            try:
                await self.reconcile()
            except Exception:
                log.warning("reconciliation with the store failed; retrying", exc_info=True)

    async def reconcile(self) -> None:
        """Catch up every watched room the store is ahead of.

        A message whose worker died between commit and publish reaches nobody through the
        broker, and no later message may come to reveal the gap: this finds it (FAULTS).
        """
        open_feeds = {room: feed for room, feed in self._feeds.items() if feed.last_seq is not None}
        stored = await self._store.last_seqs(list(open_feeds))
        for room, last_seq in stored.items():
            feed = open_feeds[room]
            if feed.last_seq is not None and last_seq > feed.last_seq:
                self._schedule_fill(feed, delay=0.0)

    # --- users --------------------------------------------------------------------------------

    async def watch_user(self, user: UserId, sink: EventSink) -> None:
        sinks = self._users.setdefault(user, [])
        sinks.append(sink)
        if len(sinks) == 1:
            await self._broker.subscribe(user_topic(user))

    def unwatch_user(self, user: UserId, sink: EventSink) -> None:
        sinks = self._users.get(user)
        if sinks is None or sink not in sinks:
            return
        sinks.remove(sink)
        if not sinks:
            del self._users[user]
            self._spawn(self._broker.unsubscribe(user_topic(user)))

    def _on_user_event(self, user: UserId, event: UserEvent) -> None:
        for sink in list(self._users.get(user, ())):
            try:
                sink(event)
            except Exception:
                log.exception("a session of %s failed to take an event", user)

    # --- housekeeping -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, grace_s: float = 1.0) -> None:
        """Stop reconciling and filling; let broker calls in flight (unsubscribes) finish."""
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        for feed in self._feeds.values():
            if feed.gap_timer is not None:
                feed.gap_timer.cancel()
        self._feeds.clear()
        self._users.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def rooms_watched(self) -> int:
        return len(self._feeds)
