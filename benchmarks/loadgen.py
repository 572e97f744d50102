"""Load generator: STOMP 1.2 over WebSocket (aiohttp client, uvloop) for chat_server or RabbitMQ.

One process runs one shard of a `Plan`: it opens its share of the subscriber connections (CONNECT,
SUBSCRIBE with a receipt), its share of the publishers (CONNECT), then tells the parent it is
ready and waits for `GO` on stdin, so that no publisher starts before every shard has subscribed.
Publishers send for `duration_s`, each with at most `window` SENDs not yet receipted, paced to
`rate` messages/s in total (0: as fast as the window allows). Every message body carries
`bench|<publisher>|<n>|<send time ns>|`, where `n` counts 1, 2, 3, ... per (publisher, room);
subscribers measure latency from it (one clock: everything runs on this machine) and count what
is duplicated, out of order and, at the end, lost.

With `typing_fraction`, that share of the subscribers (chat_server only) also send
`SEND /app/typing` every second while the load runs, and every subscriber of their rooms watches
the room's events too (counted, not timed).

Protocol with the parent (`benchmarks.run`): stdout lines `@@READY {json}`, `@@LOADEND` and
`@@RESULT {json}`; stdin `GO`. `python -m benchmarks.loadgen PLAN.json --no-wait` runs a plan
alone (against servers and rooms that already exist).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType

MARKER = "bench|"
SUBPROTOCOLS = ("v12.stomp",)
#: Histogram resolution: buckets are exp(i / SCALE) microseconds, about 2.5 % wide.
HIST_SCALE = 40.0
HIST_BUCKETS = 800  # exp(800 / 40) us: far beyond any bounded run


# --- the plan: who connects where, who publishes to which room -----------------------------------


@dataclass(slots=True)
class Plan:
    target: str  # "chat" (chat_server) or "rabbit" (RabbitMQ Web-STOMP)
    urls: list[str]
    room_ids: list[int]
    subs_per_room: int
    publishers: int
    #: Messages per second over all publishers; 0 = as fast as the window allows.
    rate: float
    window: int
    duration_s: float
    slow_fraction: float = 0.0
    #: Share of the subscribers that send a typing signal every second (chat_server only).
    typing_fraction: float = 0.0
    payload_bytes: int = 64
    jwt_secret: str | None = None
    connect_concurrency: int = 100
    shard: int = 0
    shards: int = 1
    #: After the load: how long to wait at most for receipts and deliveries still under way.
    drain_s: float = 10.0
    #: The run ends early once no delivery arrived for this long after the last receipt.
    quiet_s: float = 1.0
    setup_timeout_s: float = 120.0
    #: STOMP heart-beats both ways (ms, 0: none); subscribers send an EOL this often.
    heartbeat_ms: int = 0
    #: Loopback source addresses to connect from, in turn (empty: the system's choice). Each
    #: gives its own ephemeral port range, so past ~28 000 connections to one port.
    source_addresses: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Plan:
        return cls(**raw)


def sub_user(room_index: int, k: int) -> str:
    return f"s{room_index}-{k}"


def pub_user(p: int) -> str:
    return f"p{p}"


def publisher_rooms(p: int, rooms: int, publishers: int) -> list[int]:
    """Room indexes publisher `p` sends to (round robin): every room has exactly one publisher."""
    return list(range(p, rooms, publishers))


def publisher_of(room_index: int, publishers: int) -> int:
    return room_index % publishers


def is_slow(global_index: int, slow_fraction: float) -> bool:
    """Every n-th subscriber stops reading (n = 1 / slow_fraction), over all rooms and workers."""
    if slow_fraction <= 0:
        return False
    step = max(1, round(1 / slow_fraction))
    return global_index % step == step - 1


def is_typist(global_index: int, typing_fraction: float) -> bool:
    """Every n-th subscriber types (n = 1 / typing_fraction), never the same ones as the slow."""
    if typing_fraction <= 0:
        return False
    step = max(1, round(1 / typing_fraction))
    return global_index % step == 0


# --- measurements --------------------------------------------------------------------------------


class Histogram:
    """Latencies in microseconds, log buckets (about 2.5 %), mergeable by adding counts."""

    __slots__ = ("counts", "max_us", "total")

    def __init__(self) -> None:
        self.counts = [0] * HIST_BUCKETS
        self.max_us = 0
        self.total = 0

    def add(self, us: int) -> None:
        if us < 0:
            us = 0
        index = int(math.log1p(us) * HIST_SCALE)
        self.counts[index if index < HIST_BUCKETS else HIST_BUCKETS - 1] += 1
        if us > self.max_us:
            self.max_us = us
        self.total += 1

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.max_us = max(self.max_us, other.max_us)
        self.total += other.total

    def percentile_ms(self, q: float) -> float:
        if not self.total:
            return float("nan")
        rank = q / 100 * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if count and seen >= rank:
                # The bucket's upper edge, never above the largest value seen.
                return min(math.expm1((index + 1) / HIST_SCALE), self.max_us) / 1000
        return self.max_us / 1000

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(i): c for i, c in enumerate(self.counts) if c},
            "max_us": self.max_us,
            "total": self.total,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Histogram:
        hist = cls()
        for index, count in raw["counts"].items():
            hist.counts[int(index)] = int(count)
        hist.max_us = int(raw["max_us"])
        hist.total = int(raw["total"])
        return hist


@dataclass(slots=True)
class ShardResult:
    shard: int
    subscribers: int = 0
    publishers: int = 0
    slow_subscribers: int = 0
    setup_failures: int = 0
    setup_errors: list[str] = field(default_factory=list)
    setup_s: float = 0.0
    connect_rate: float = 0.0
    sent: int = 0
    receipted: int = 0
    unreceipted: int = 0
    #: Per room index: messages sent to it, fast subscribers of it here, unique messages they got.
    room_sent: dict[str, int] = field(default_factory=dict)
    room_subs: dict[str, int] = field(default_factory=dict)
    room_unique: dict[str, int] = field(default_factory=dict)
    received: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    closed_early: int = 0
    slow_cut: int = 0
    go_ns: int = 0
    load_end_ns: int = 0
    last_delivery_ns: int = 0
    #: Typing SENDs sent, and room events (snapshots, presence, typing) received.
    typing_sent: int = 0
    events: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    hist: dict[str, Any] = field(default_factory=dict)


# --- STOMP frames (plain strings: every header and body here is ASCII) ---------------------------


def connect_frame(plan: Plan, user: str) -> str:
    if plan.target == "chat":
        assert plan.jwt_secret is not None
        token = _mint(plan.jwt_secret, user)
        auth = f"Authorization:Bearer {token}\n"
        host = "localhost"
    else:
        auth = "login:guest\npasscode:guest\n"
        host = "/"
    beat = plan.heartbeat_ms
    return f"CONNECT\naccept-version:1.2\nhost:{host}\n{auth}heart-beat:{beat},{beat}\n\n\0"


def _mint(secret: str, user: str) -> str:
    from chat_server.auth import TokenAuthority  # only the chat target needs it

    return TokenAuthority(secret).mint(user, ttl_s=6 * 3600)


def room_destination(plan: Plan, room_id: int) -> str:
    if plan.target == "chat":
        return f"/queue/chat-rooms/{room_id}"
    return f"/topic/room.{room_id}"


def subscribe_frame(plan: Plan, room_id: int) -> str:
    destination = room_destination(plan, room_id)
    return f"SUBSCRIBE\nid:0\ndestination:{destination}\nack:auto\nreceipt:sub\n\n\0"


def events_subscribe_frame(room_id: int) -> str:
    return (f"SUBSCRIBE\nid:1\ndestination:/queue/chat-rooms/{room_id}/events\nack:auto\n"
            "receipt:events\n\n\0")


def typing_frame(room_id: int) -> str:
    body = f'{{"chatRoomId":{room_id},"typing":true}}'
    return (
        "SEND\ndestination:/app/typing\ncontent-type:application/json\n"
        f"content-length:{len(body)}\n\n{body}\0"
    )


def send_frame(plan: Plan, room_id: int, content: str, receipt: int, cmid: str) -> str:
    if plan.target == "chat":
        body = (
            f'{{"chatRoomId":{room_id},"content":"{content}","clientMessageId":"{cmid}"}}'
        )
        return (
            "SEND\ndestination:/app/message\ncontent-type:application/json\n"
            f"receipt:{receipt}\ncontent-length:{len(body)}\n\n{body}\0"
        )
    return (
        f"SEND\ndestination:/topic/room.{room_id}\ncontent-type:text/plain\n"
        f"receipt:{receipt}\ncontent-length:{len(content)}\n\n{content}\0"
    )


class Closed(Exception):
    pass


def split_frames(buffer: str, data: str) -> tuple[list[str], str]:
    """Complete frames in `buffer + data` (EOL heart-beats dropped) and the incomplete rest."""
    text = buffer + data if buffer else data
    frames = text.split("\0")
    rest = frames.pop()
    if not rest.strip("\r\n"):
        rest = ""
    return [frame.lstrip("\r\n") for frame in frames], rest


async def next_frame(ws: aiohttp.ClientWebSocketResponse, pending: list[str],
                     buffer: list[str]) -> str:
    """The next frame during setup (before the reader task runs)."""
    while not pending:
        message = await ws.receive()
        if message.type is WSMsgType.TEXT:
            data = message.data
        elif message.type is WSMsgType.BINARY:
            data = message.data.decode()
        else:
            raise Closed(f"closed during setup ({message.type.name}, {ws.close_code})")
        frames, buffer[0] = split_frames(buffer[0], data)
        pending.extend(frame for frame in frames if frame)
    return pending.pop(0)


async def expect(ws: aiohttp.ClientWebSocketResponse, command: str, pending: list[str],
                 buffer: list[str]) -> str:
    frame = await next_frame(ws, pending, buffer)
    if not frame.startswith(command + "\n"):
        raise Closed(f"expected {command}, got {frame[:300]!r}")
    return frame


# --- subscribers ---------------------------------------------------------------------------------


class Subscriber:
    """One subscription: counts per publisher what arrives, in order or not, once or twice."""

    __slots__ = (
        "buffer", "closed", "dup", "error_text", "errors", "events", "hist", "index", "last",
        "last_ns", "missing", "ooo", "received", "room_index", "slow", "task", "typed",
        "typist", "unique", "watches", "ws",
    )

    def __init__(self, index: int, room_index: int, slow: bool, hist: Histogram, *,
                 typist: bool = False, watches: bool = False) -> None:
        self.index = index
        self.room_index = room_index
        self.slow = slow
        self.hist = hist
        #: Sends a typing signal every second; watches: also subscribed to the room's events.
        self.typist = typist
        self.watches = watches
        self.typed = 0
        self.events = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.buffer = ""
        self.last: dict[int, int] = {}
        self.missing: dict[int, set[int]] = {}
        self.received = 0
        self.unique = 0
        self.dup = 0
        self.ooo = 0
        self.errors = 0
        self.error_text = ""
        self.closed = False
        self.last_ns = 0

    async def read_forever(self) -> None:
        ws = self.ws
        assert ws is not None
        while True:
            message = await ws.receive()
            if message.type is WSMsgType.TEXT:
                data = message.data
            elif message.type is WSMsgType.BINARY:
                data = message.data.decode()
            else:
                self.closed = True
                return
            now = time.time_ns()
            frames, self.buffer = split_frames(self.buffer, data)
            for frame in frames:
                if frame.startswith("MESSAGE\n"):
                    self.on_message(frame, now)
                elif frame.startswith("ERROR\n"):
                    self.errors += 1
                    self.error_text = self.error_text or frame[:300]
            self.last_ns = now

    def on_message(self, frame: str, now: int) -> None:
        at = frame.find(MARKER)
        if at < 0:
            self.events += 1  # a room event (no chat message carries none)
            return
        pub_s, n_s, sent_s, _ = frame[at + 6 : at + 70].split("|", 3)
        pub, n = int(pub_s), int(n_s)
        self.received += 1
        self.hist.add((now - int(sent_s)) // 1000)
        last = self.last.get(pub, 0)
        if n == last + 1:
            self.last[pub] = n
            self.unique += 1
        elif n > last:
            self.missing.setdefault(pub, set()).update(range(last + 1, n))
            self.last[pub] = n
            self.unique += 1
        else:
            missing = self.missing.get(pub)
            if missing is not None and n in missing:
                missing.discard(n)
                self.ooo += 1
                self.unique += 1
            else:
                self.dup += 1


# --- publishers ----------------------------------------------------------------------------------


class Publisher:
    """Sends to its rooms in turn, at most `window` SENDs unreceipted."""

    def __init__(self, plan: Plan, p: int, rooms: list[int]) -> None:
        self.plan = plan
        self.p = p
        self.rooms = rooms  # room indexes
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.counters = dict.fromkeys(rooms, 0)
        self.sent = 0
        self.receipted = 0
        self.errors = 0
        self.error_text = ""
        self.free = asyncio.Event()
        self.free.set()
        self.closed = False
        self.pad = "x" * max(0, plan.payload_bytes - 40)

    @property
    def inflight(self) -> int:
        return self.sent - self.receipted

    async def read_receipts(self) -> None:
        ws = self.ws
        assert ws is not None
        buffer = ""
        while True:
            message = await ws.receive()
            if message.type is WSMsgType.TEXT:
                data = message.data
            elif message.type is WSMsgType.BINARY:
                data = message.data.decode()
            else:
                self.closed = True
                self.free.set()
                return
            frames, buffer = split_frames(buffer, data)
            for frame in frames:
                if frame.startswith("RECEIPT\n"):
                    self.receipted += 1
                elif frame.startswith("ERROR\n"):
                    self.errors += 1
                    self.error_text = self.error_text or frame[:300]
            if self.inflight < self.plan.window:
                self.free.set()

    async def run(self, deadline: float, interval: float) -> None:
        """Send until `deadline` (loop time), one message every `interval` s (0: unpaced)."""
        ws = self.ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        plan = self.plan
        room_ids = plan.room_ids
        next_at = loop.time() + (random.random() * interval if interval else 0.0)
        turn = 0
        while not self.closed:
            if interval:
                now = loop.time()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at = max(next_at + interval, loop.time() - 1.0)  # no catch-up burst > 1 s
            if loop.time() >= deadline:
                return
            while self.inflight >= plan.window and not self.closed:
                self.free.clear()
                await self.free.wait()
            room = self.rooms[turn % len(self.rooms)]
            turn += 1
            n = self.counters[room] = self.counters[room] + 1
            content = f"{MARKER}{self.p}|{n}|{time.time_ns()}|{self.pad}"
            frame = send_frame(plan, room_ids[room], content, self.sent, f"p{self.p}-{room}-{n}")
            self.sent += 1
            try:
                await ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                self.closed = True
                return


# --- one shard's run -----------------------------------------------------------------------------


class LoadGen:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.hist = Histogram()
        self.subscribers: list[Subscriber] = []
        self.publishers: list[Publisher] = []
        self.result = ShardResult(shard=plan.shard)
        #: One client session per source address (a connector binds one local address).
        self._sessions: list[aiohttp.ClientSession] = []
        self._opened = 0
        self._beats: asyncio.Task[None] | None = None

    def _url(self, index: int) -> str:
        return self.plan.urls[index % len(self.plan.urls)]

    async def _open(self, url: str, user: str) -> tuple[aiohttp.ClientWebSocketResponse,
                                                       list[str], list[str]]:
        assert self._sessions
        session = self._sessions[self._opened % len(self._sessions)]
        self._opened += 1
        ws = await session.ws_connect(
            url, protocols=SUBPROTOCOLS, autoping=True, heartbeat=None, compress=0,
            max_msg_size=0,
        )
        pending: list[str] = []
        buffer = [""]
        await ws.send_str(connect_frame(self.plan, user))
        await expect(ws, "CONNECTED", pending, buffer)
        return ws, pending, buffer

    async def _setup_subscriber(self, sub: Subscriber, gate: asyncio.Semaphore) -> None:
        plan = self.plan
        user = sub_user(sub.room_index, sub.index % plan.subs_per_room)
        async with gate:
            try:
                ws, pending, buffer = await self._open(self._url(sub.index), user)
                sub.ws = ws
                await ws.send_str(subscribe_frame(plan, plan.room_ids[sub.room_index]))
                await expect(ws, "RECEIPT", pending, buffer)
                if sub.watches:
                    await ws.send_str(events_subscribe_frame(plan.room_ids[sub.room_index]))
                    while (frame := await next_frame(ws, pending, buffer)).startswith("MESSAGE"):
                        sub.events += 1  # the snapshot
                    if not frame.startswith("RECEIPT\n"):
                        raise Closed(f"expected RECEIPT, got {frame[:300]!r}")
            except (Closed, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.result.setup_failures += 1
                if len(self.result.setup_errors) < 5:
                    self.result.setup_errors.append(f"{type(exc).__name__}: {exc}"[:300])
                return
        sub.buffer = buffer[0]
        for frame in pending:
            if frame.startswith("MESSAGE\n"):
                sub.on_message(frame, time.time_ns())
        sub.task = asyncio.create_task(sub.read_forever())

    async def _setup_publisher(self, pub: Publisher, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                ws, _pending, _buffer = await self._open(self._url(pub.p), pub_user(pub.p))
            except (Closed, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.result.setup_failures += 1
                if len(self.result.setup_errors) < 5:
                    self.result.setup_errors.append(f"publisher: {type(exc).__name__}: {exc}")
                pub.closed = True
                return
        pub.ws = ws
        asyncio.create_task(pub.read_receipts())  # noqa: RUF006 - ends when the socket closes

    def _build(self) -> None:
        plan = self.plan
        rooms = len(plan.room_ids)
        typing = plan.typing_fraction if plan.target == "chat" else 0.0
        for room_index in range(rooms):
            first = room_index * plan.subs_per_room
            indexes = range(first, first + plan.subs_per_room)
            typed_in = any(is_typist(index, typing) for index in indexes)
            for index in indexes:
                if index % plan.shards != plan.shard:
                    continue
                slow = is_slow(index, plan.slow_fraction)
                hist = self.hist if not slow else Histogram()
                self.subscribers.append(Subscriber(
                    index, room_index, slow, hist, typist=is_typist(index, typing),
                    watches=typed_in,
                ))
        for p in range(plan.publishers):
            if p % plan.shards == plan.shard:
                rooms_of_p = publisher_rooms(p, rooms, plan.publishers)
                self.publishers.append(Publisher(plan, p, rooms_of_p))

    async def setup(self) -> None:
        self._build()
        # No per-host connection cap: every WebSocket holds its connection for the whole run.
        addresses: list[str | None] = [*self.plan.source_addresses] or [None]
        for address in addresses:
            connector = aiohttp.TCPConnector(
                limit=0, force_close=False,
                local_addr=(address, 0) if address is not None else None,
            )
            self._sessions.append(aiohttp.ClientSession(connector=connector))
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        if self.plan.heartbeat_ms > 0:
            self._beats = asyncio.create_task(self._heartbeats())
        started = time.monotonic()
        async with asyncio.timeout(self.plan.setup_timeout_s):
            await asyncio.gather(*(self._setup_subscriber(s, gate) for s in self.subscribers))
            subscribed = time.monotonic()
            await asyncio.gather(*(self._setup_publisher(p, gate) for p in self.publishers))
        result = self.result
        result.subscribers = len(self.subscribers)
        result.publishers = len(self.publishers)
        result.slow_subscribers = sum(1 for s in self.subscribers if s.slow)
        result.setup_s = time.monotonic() - started
        result.connect_rate = len(self.subscribers) / max(subscribed - started, 1e-9)

    async def load(self) -> None:
        plan = self.plan
        loop = asyncio.get_running_loop()
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        self.result.go_ns = time.time_ns()
        for sub in self.subscribers:
            if sub.slow and sub.task is not None:
                sub.task.cancel()  # stop reading: the socket's buffers fill up, then the server's
        interval = plan.publishers / plan.rate if plan.rate > 0 else 0.0
        deadline = loop.time() + plan.duration_s
        typists = [self._type(sub, deadline) for sub in self.subscribers
                   if sub.typist and sub.ws is not None]
        runs = [pub.run(deadline, interval) for pub in self.publishers if pub.ws is not None]
        if runs or typists:
            await asyncio.gather(*runs, *typists)
        else:
            await asyncio.sleep(plan.duration_s)
        await self._drain(loop.time() + plan.drain_s)
        self.result.load_end_ns = time.time_ns()
        self.result.cpu_s = time.process_time() - cpu0
        self.result.wall_s = time.monotonic() - wall0

    async def _type(self, sub: Subscriber, deadline: float) -> None:
        """A typing signal every second (from a random phase) until `deadline` (loop time)."""
        ws = sub.ws
        assert ws is not None
        loop = asyncio.get_running_loop()
        frame = typing_frame(self.plan.room_ids[sub.room_index])
        next_at = loop.time() + random.random()
        while next_at < deadline and not sub.closed:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += 1.0
            try:
                await ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return
            sub.typed += 1

    async def _heartbeats(self) -> None:
        """An EOL from every connected subscriber once per heart-beat interval, spread evenly
        over it, from the first connection on: the server closes a peer silent for twice its
        interval, and setting up thousands takes longer than that."""
        loop = asyncio.get_running_loop()
        # Twice as often as agreed (STOMP allows more), on a fixed schedule rather than a sleep
        # after each slice: a loop busy connecting thousands must not stretch the round.
        interval = self.plan.heartbeat_ms / 1000 / 2
        slices = max(1, int(interval * 20))  # 20 wake-ups a second at most
        due = loop.time()
        while True:
            sockets = [s.ws for s in self.subscribers if s.ws is not None and not s.closed]
            per_slice = max(1, math.ceil(len(sockets) / slices))
            for start in range(0, per_slice * slices, per_slice):
                for ws in sockets[start:start + per_slice]:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_str("\n")
                due += interval / slices
                await asyncio.sleep(max(0.0, due - loop.time()))

    def _expected_here(self) -> int | None:
        """Deliveries this shard's fast subscribers should get, if its publishers are all here."""
        if self.plan.shards != 1:
            return None
        sent = {room: pub.counters[room] for pub in self.publishers for room in pub.rooms}
        return sum(sent.get(s.room_index, 0) for s in self.subscribers if not s.slow)

    async def _drain(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline and any(
            p.inflight and not p.closed for p in self.publishers
        ):
            await asyncio.sleep(0.02)
        receipts_done = time.time_ns()
        quiet_ns = int(self.plan.quiet_s * 1e9)
        while loop.time() < deadline:
            expected = self._expected_here()
            fast = [s for s in self.subscribers if not s.slow]
            if expected is not None and sum(s.unique for s in fast) >= expected:
                return
            latest = max([receipts_done, *(s.last_ns for s in fast)])
            if time.time_ns() - latest > quiet_ns:
                return
            await asyncio.sleep(0.02)

    async def finish(self) -> ShardResult:
        result = self.result
        await self._check_slow()
        for pub in self.publishers:
            result.sent += pub.sent
            result.receipted += pub.receipted
            result.unreceipted += pub.inflight
            result.errors += pub.errors
            if pub.error_text and len(result.error_samples) < 5:
                result.error_samples.append(pub.error_text)
            for room, count in pub.counters.items():
                result.room_sent[str(room)] = result.room_sent.get(str(room), 0) + count
        for sub in self.subscribers:
            self._collect(sub)
        result.hist = self.hist.to_json()
        await self.close()
        return result

    def _collect(self, sub: Subscriber) -> None:
        result = self.result
        if sub.error_text and len(result.error_samples) < 5:
            result.error_samples.append(sub.error_text)
        result.typing_sent += sub.typed
        result.events += sub.events
        if sub.slow or sub.task is None:
            # A slow one is judged apart; one that never subscribed (a setup failure, counted
            # as such) was owed nothing, so its room's messages are not lost on it.
            return
        key = str(sub.room_index)
        result.room_subs[key] = result.room_subs.get(key, 0) + 1
        result.room_unique[key] = result.room_unique.get(key, 0) + sub.unique
        result.received += sub.received
        result.duplicated += sub.dup
        result.out_of_order += sub.ooo
        result.errors += sub.errors
        result.closed_early += int(sub.closed)
        result.last_delivery_ns = max(result.last_delivery_ns, sub.last_ns)

    async def _check_slow(self) -> None:
        """Did the server cut the subscribers that stopped reading? Read what they were sent."""
        slow = [s for s in self.subscribers if s.slow and s.ws is not None]

        async def cut(sub: Subscriber) -> bool:
            assert sub.ws is not None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3.0):
                    while True:
                        message = await sub.ws.receive()
                        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                            return True
            return False

        if slow:
            self.result.slow_cut = sum(await asyncio.gather(*(cut(s) for s in slow)))

    async def close(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
        sockets = [s.ws for s in self.subscribers if s.ws is not None]
        sockets += [p.ws for p in self.publishers if p.ws is not None]
        for sub in self.subscribers:
            if sub.task is not None:
                sub.task.cancel()
        gate = asyncio.Semaphore(500)

        async def close_one(ws: aiohttp.ClientWebSocketResponse) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)

        await asyncio.gather(*(close_one(ws) for ws in sockets))
        for session in self._sessions:
            await session.close()
        self._sessions.clear()


# --- process entry -------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _emit(tag: str, payload: dict[str, Any] | None = None) -> None:
    line = f"@@{tag}" if payload is None else f"@@{tag} {json.dumps(payload)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _wait_for_go() -> None:
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "GO":
        raise SystemExit(f"loadgen: expected GO, got {line!r}")


async def run_shard(plan: Plan, *, wait: bool) -> ShardResult:
    gen = LoadGen(plan)
    try:
        await gen.setup()
        result = gen.result
        _emit("READY", {"setup_s": result.setup_s, "failures": result.setup_failures})
        if wait:
            await _wait_for_go()
        await gen.load()
        _emit("LOADEND")
        return await gen.finish()
    except BaseException:
        await gen.close()
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.loadgen", description=__doc__)
    parser.add_argument("plan", help="a JSON file holding a Plan")
    parser.add_argument("--no-wait", action="store_true", help="start at once, without GO")
    args = parser.parse_args(argv)
    with open(args.plan, encoding="utf-8") as handle:
        plan = Plan.from_json(json.load(handle))
    raise_fd_limit()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.run
    result = runner(run_shard(plan, wait=not args.no_wait))
    _emit("RESULT", asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
