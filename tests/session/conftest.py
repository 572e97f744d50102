"""The session's parts, driven by frames: a real store and fan-out, no socket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chat_server.broker.memory import MemoryBroker
from chat_server.chat import ChatService
from chat_server.fanout import Fanout
from chat_server.metrics import Metrics
from chat_server.models import RoomId, UserId
from chat_server.outbox import Outbox
from chat_server.outlet import Outlet
from chat_server.room_state import RoomState
from chat_server.stomp.connection import Limits, StompConnection
from chat_server.stomp.frames import Command, Frame, Version
from chat_server.stomp.parser import FrameParser, ParserLimits
from chat_server.store.sql import SqlStore

ALICE = UserId("alice")
BOB = UserId("bob")
MALLORY = UserId("mallory")
CONNECT = Frame(Command.CONNECT, (("accept-version", "1.2"), ("heart-beat", "0,0")))


def connected(limits: Limits | None = None) -> StompConnection:
    """A connection past CONNECT (what the session does once the token checked out)."""
    conn = StompConnection(limits or Limits(), server_heartbeat_ms=0)
    conn.accept(CONNECT, ALICE)
    return conn


def written(outbox: Outbox) -> list[Frame]:
    """Everything queued for the client, parsed back into frames."""
    parser = FrameParser(ParserLimits(max_frame_bytes=2**20, max_body_bytes=2**20), Version.V1_2)
    parser.feed(outbox.take())
    return list(parser.frames())


def frame(command: Command, *headers: tuple[str, str], body: bytes = b"") -> Frame:
    return Frame(command, headers, body)


@pytest.fixture
def outlet(metrics: Metrics) -> Outlet:
    return Outlet(connected(), Outbox(64 * 1024), metrics)


@pytest.fixture
async def room(store: SqlStore) -> RoomId:
    return (await store.create_direct_room(ALICE, BOB)).id


@pytest.fixture
async def room_state(store: SqlStore, metrics: Metrics) -> AsyncIterator[RoomState]:
    state = RoomState(MemoryBroker(), store, metrics)
    yield state
    await state.close()


@pytest.fixture
def chat(
    store: SqlStore, fanout: Fanout, metrics: Metrics, room_state: RoomState
) -> ChatService:
    return ChatService(store, MemoryBroker(), metrics, fanout.deliver, room_state)
