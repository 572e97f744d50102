"""RoomState across workers in one process: several RoomStates on one in-memory bus (each its
own broker, deliveries a turn of the loop later, as over a network), one shared database.

A worker "dies" by leaving the bus without a word (as with SIGKILL): its users must leave the
others' rooms within the presence TTL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chat_server.broker.base import BrokerListener, BrokerState
from chat_server.metrics import Metrics
from chat_server.models import NewMessage, ReadMarker, RoomId, UserId
from chat_server.room_state import EventTap, RoomState
from chat_server.store.migrate import migrate
from chat_server.store.sql import SqlStore, open_store
from chat_server.typing_state import Offer

WAIT_S = 3.0
TTL_S = 1.0
ALICE, BOB, CAROL = UserId("alice"), UserId("bob"), UserId("carol")


class Bus:
    """The network between workers: every broker on it hears the topics it subscribed to."""

    def __init__(self) -> None:
        self.brokers: list[BusBroker] = []


class BusBroker:
    """One worker's broker on the bus (the `Broker` protocol)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.topics: set[str] = set()
        self.listener: BrokerListener | None = None
        self.alive = True
        self.published: list[tuple[str, dict[str, Any]]] = []
        bus.brokers.append(self)

    @property
    def state(self) -> BrokerState:
        return BrokerState.CONNECTED if self.alive else BrokerState.CLOSED

    async def start(self, listener: BrokerListener) -> None:
        self.listener = listener

    async def publish(self, topic: str, payload: bytes) -> None:
        if not self.alive:
            return
        self.published.append((topic, json.loads(payload)))
        loop = asyncio.get_running_loop()
        for broker in self.bus.brokers:
            if broker.alive and topic in broker.topics:
                loop.call_soon(broker.deliver, topic, payload)

    def deliver(self, topic: str, payload: bytes) -> None:
        if self.alive and self.listener is not None and topic in self.topics:
            self.listener.on_message(topic, payload)

    async def subscribe(self, topic: str) -> None:
        await asyncio.sleep(0)  # a round trip, however short
        self.topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self.topics.discard(topic)

    async def close(self) -> None:
        self.alive = False

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [body for _, body in self.published if body.get("k") == kind]


class Events:
    """An events subscription's sink: the decoded events, awaitable."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def __call__(self, body: bytes) -> None:
        self.seen.append(json.loads(body))
        self.changed.set()

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool],
                    timeout: float = WAIT_S) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while not predicate(self.seen):
                self.changed.clear()
                await self.changed.wait()
        return self.seen

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.seen if event["type"] == kind]


class Worker:
    def __init__(self, bus: Bus, store: SqlStore, name: str, **options: float) -> None:
        self.broker = BusBroker(bus)
        self.metrics = Metrics()
        self.state = RoomState(self.broker, store, self.metrics, worker_id=name,
                               presence_ttl_s=TTL_S, **options)

    async def start(self) -> None:
        await self.broker.start(self.state)
        await self.state.start()

    async def watch(self, room: RoomId, user: UserId) -> Events:
        """`user` subscribes to the room's events here: the snapshot first."""
        events = Events()
        self.state.enter(room, user)
        await self.state.attach(EventTap(room, events))
        return events

    def kill(self) -> None:
        """SIGKILL: off the bus at once, not a word more."""
        self.broker.alive = False


WorkerFactory = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    url = f"sqlite:///{tmp_path}/state.db"
    await migrate(url)
    opened = await open_store(url)
    yield opened
    await opened.close()


@pytest.fixture
async def room(store: SqlStore) -> RoomId:
    return (await store.create_group_room(ALICE, "team", [BOB, CAROL])).id


@pytest.fixture
async def worker(store: SqlStore) -> AsyncIterator[WorkerFactory]:
    bus = Bus()
    made: list[Worker] = []

    async def make(name: str, **options: float) -> Worker:
        started = Worker(bus, store, name, **options)
        await started.start()
        made.append(started)
        return started

    yield make
    for one in made:
        await one.state.close(grace_s=0.2)


def snapshot(events: Events) -> dict[str, Any]:
    first = events.seen[0]
    assert first["type"] == "state", events.seen
    return first


# --- presence ------------------------------------------------------------------------------


async def test_snapshot_counts_users_on_other_workers(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    one.state.enter(room, ALICE)
    await asyncio.sleep(0.05)  # alice's room is open on worker one
    events = await two.watch(room, BOB)
    assert snapshot(events) == {"type": "state", "roomId": room, "online": ["alice", "bob"],
                                "typing": [], "reads": {"alice": 0, "bob": 0, "carol": 0}}


async def test_join_and_leave_travel_between_workers(worker: WorkerFactory, room: RoomId) -> None:
    one, two = await worker("one"), await worker("two")
    events = await two.watch(room, BOB)
    one.state.enter(room, ALICE)
    await events.until(lambda seen: {"type": "join", "roomId": room, "userId": "alice"} in seen)
    one.state.enter(room, ALICE)  # a second device: no news
    one.state.exit(room, ALICE)
    await asyncio.sleep(0.05)
    assert len(events.of("join")) == 1 and events.of("leave") == []
    one.state.exit(room, ALICE)
    await events.until(lambda seen: {"type": "leave", "roomId": room, "userId": "alice"} in seen)
    assert await two.state.online_in(room) == [BOB]


async def test_a_user_on_two_workers_stays_online_until_both_let_go(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two, three = await worker("one"), await worker("two"), await worker("three")
    events = await three.watch(room, CAROL)
    one.state.enter(room, ALICE)
    two.state.enter(room, ALICE)
    await events.until(lambda seen: len(seen) == 2)
    one.state.exit(room, ALICE)
    await asyncio.sleep(0.05)
    assert events.of("leave") == []
    two.state.exit(room, ALICE)
    await events.until(lambda seen: len(events.of("leave")) == 1)


async def test_a_killed_workers_users_leave_within_the_ttl(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    one.state.enter(room, ALICE)
    await asyncio.sleep(0.05)
    events = await two.watch(room, BOB)
    assert snapshot(events)["online"] == ["alice", "bob"]
    one.kill()
    killed = time.monotonic()
    await events.until(lambda seen: events.of("leave") != [], timeout=TTL_S * 2)
    assert time.monotonic() - killed <= TTL_S
    assert events.of("leave") == [{"type": "leave", "roomId": room, "userId": "alice"}]
    assert await two.state.online_in(room) == [BOB]


async def test_goodbye_makes_a_stopping_workers_users_leave_at_once(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    events = await two.watch(room, BOB)
    one.state.enter(room, ALICE)
    await events.until(lambda seen: len(events.of("join")) == 1)
    started = time.monotonic()
    await one.state.close()
    await events.until(lambda seen: events.of("leave") != [])
    assert time.monotonic() - started < TTL_S / 2


async def test_a_worker_started_later_is_known_before_it_answers(
    worker: WorkerFactory, room: RoomId
) -> None:
    one = await worker("one")
    one.state.enter(room, ALICE)
    await asyncio.sleep(0.05)
    two = await worker("two")  # its hello makes one say it lives
    await asyncio.sleep(0.05)
    events = await two.watch(room, BOB)
    assert snapshot(events)["online"] == ["alice", "bob"]
    # One asked for nothing it did not need: one ask from two, one answer per room.
    assert [ask["rooms"] for ask in two.broker.sent("ask")] == [[room]]


async def test_presence_probe_from_a_worker_that_watches_nothing(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    one.state.enter(room, ALICE)
    one.state.enter(room, CAROL)
    await asyncio.sleep(0.05)
    assert await two.state.online_in(room) == [ALICE, CAROL]
    assert two.state.rooms_watched == 0  # the probe let go of the room
    await asyncio.sleep(0.05)
    assert f"state:{room}" not in two.broker.topics


async def test_an_unanswered_ask_waits_only_the_ask_timeout(
    worker: WorkerFactory, room: RoomId
) -> None:
    one = await worker("one", ask_timeout_s=0.2)
    two = await worker("two")
    await asyncio.sleep(0.05)
    two.kill()  # known alive, never answers
    started = time.monotonic()
    events = await one.watch(room, ALICE)
    assert 0.15 <= time.monotonic() - started < 1.0
    assert snapshot(events)["online"] == ["alice"]


# --- typing ----------------------------------------------------------------------------------


async def test_typing_is_relayed_to_every_worker_and_ends_by_itself(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one", typing_ttl_s=0.3), await worker("two", typing_ttl_s=0.3)
    here = await one.watch(room, ALICE)
    there = await two.watch(room, CAROL)
    assert one.state.typing(room, BOB, True) is Offer.RELAY
    started = {"type": "typing", "roomId": room, "userId": "bob", "typing": True}
    stopped = {**started, "typing": False}
    for events in (here, there):
        await events.until(lambda seen: started in seen)
    for events in (here, there):
        await events.until(lambda seen: stopped in seen)
        assert events.of("typing") == [started, stopped]


async def test_a_typing_flood_is_absorbed_into_one_event(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    there = await two.watch(room, CAROL)
    offers = [one.state.typing(room, BOB, True) for _ in range(200)]
    assert offers.count(Offer.RELAY) == 1
    await there.until(lambda seen: there.of("typing") != [])
    await asyncio.sleep(0.1)
    assert len(there.of("typing")) == 1
    assert len(one.broker.sent("typing")) == 1
    assert one.metrics.value("chat_typing_events_total", {"outcome": "absorbed"}) == 199


async def test_a_stored_message_and_a_leave_end_typing(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    there = await two.watch(room, CAROL)
    one.state.enter(room, BOB)
    one.state.typing(room, BOB, True)
    await there.until(lambda seen: len(there.of("typing")) == 1)
    one.state.message_stored(room, BOB)
    await there.until(lambda seen: len(there.of("typing")) == 2)
    assert there.of("typing")[-1]["typing"] is False
    one.state.message_stored(room, BOB)  # no longer typing: nothing sent
    assert len(one.broker.sent("typing")) == 2
    # Typing again (a change, deferred to the end of the interval), then bob leaves.
    assert one.state.typing(room, BOB, True) is Offer.DEFER
    await there.until(lambda seen: len(there.of("typing")) == 3, timeout=2.0)
    one.state.exit(room, BOB)
    await there.until(lambda seen: there.of("leave") != [])
    assert [e["type"] for e in there.seen[-2:]] == ["typing", "leave"]
    assert there.seen[-2]["typing"] is False


async def test_the_snapshot_names_who_is_typing_on_other_workers(
    worker: WorkerFactory, room: RoomId
) -> None:
    one, two = await worker("one"), await worker("two")
    await one.watch(room, ALICE)
    one.state.typing(room, ALICE, True)
    await asyncio.sleep(0.05)
    events = await two.watch(room, BOB)
    assert snapshot(events)["typing"] == ["alice"]


async def test_typing_timers_due_at_once_do_not_break_the_next_typing_signal(
    worker: WorkerFactory, room: RoomId
) -> None:
    # A TTL this short puts the typing timer due at once: uvloop then answers `call_at` with a
    # plain Handle. The next signal in the same turn used to ask that handle its `when()`: an
    # AttributeError out of `on_message`, which took down the worker's broker reader (the
    # Redis connection dropped, every room resynced from the database: scenario e's delays).
    one = await worker("one", typing_ttl_s=0.0001)
    events = await one.watch(room, ALICE)
    for user in (BOB, CAROL):
        body = {"k": "typing", "room": room, "user": user, "typing": True}
        one.state.on_message(f"state:{room}", json.dumps(body).encode())
    await events.until(lambda seen: len(events.of("typing")) == 4)
    typing = [(event["userId"], event["typing"]) for event in events.of("typing")]
    assert typing[:2] == [("bob", True), ("carol", True)]
    assert sorted(typing[2:]) == [("bob", False), ("carol", False)]


async def test_a_room_state_bug_never_escapes_to_the_broker_reader(
    worker: WorkerFactory, room: RoomId, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The broker's reader also carries the chat messages: a room-state bug must cost one event,
    # not the worker's broker connection.
    one = await worker("one")
    events = await one.watch(room, ALICE)

    def broken(*_: object) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(one.state._typists, "started", broken)
    body = {"k": "typing", "room": room, "user": BOB, "typing": True}
    one.state.on_message(f"state:{room}", json.dumps(body).encode())  # does not raise
    assert "RuntimeError: a bug" in caplog.text
    monkeypatch.undo()
    one.state.on_message(f"state:{room}", json.dumps(body).encode())
    await events.until(lambda seen: events.of("typing") != [])


# --- read markers ----------------------------------------------------------------------------


async def test_read_events_reach_every_worker_and_fold_into_a_snapshot_in_the_making(
    worker: WorkerFactory, room: RoomId, store: SqlStore
) -> None:
    one, two = await worker("one"), await worker("two")
    await store.append_message(NewMessage(room, ALICE, "hi"))
    here = await one.watch(room, ALICE)
    two.state.read_moved(ReadMarker(room, BOB, 1))
    await here.until(lambda seen: seen[-1] == {"type": "read", "roomId": room, "userId": "bob",
                                               "seq": 1})
    # A read that arrives while a snapshot is read from the store is in the snapshot.
    tap_events = Events()
    tap = EventTap(room, tap_events)
    one.state.enter(room, CAROL)
    attaching = asyncio.ensure_future(one.state.attach(tap))
    await asyncio.sleep(0)
    one.state.read_moved(ReadMarker(room, CAROL, 1))
    await attaching
    await asyncio.sleep(0.05)
    reads = snapshot(tap_events)["reads"]
    assert reads["alice"] == 1  # her own message moved it
    assert reads["carol"] == 1


async def test_detached_taps_hear_nothing_more(worker: WorkerFactory, room: RoomId) -> None:
    one = await worker("one")
    events = Events()
    tap = EventTap(room, events)
    one.state.enter(room, ALICE)
    await one.state.attach(tap)
    one.state.detach(tap)
    one.state.enter(room, BOB)
    await asyncio.sleep(0.05)
    assert [event["type"] for event in events.seen] == ["state"]


async def test_undecodable_payloads_are_dropped(
    worker: WorkerFactory, room: RoomId, caplog: pytest.LogCaptureFixture
) -> None:
    one = await worker("one")
    events = await one.watch(room, ALICE)
    for garbage in (b"not json", b"[]", b'{"k": "here"}', b'{"k": "typing", "room": "x"}'):
        one.state.on_message(f"state:{room}", garbage)
    assert len(events.seen) == 1
    assert "undecodable" in caplog.text
