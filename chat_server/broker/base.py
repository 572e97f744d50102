"""The `Broker` protocol: publish bytes to a topic, receive the topics this worker watches."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from chat_server.models import RoomId, UserId


def room_topic(room_id: RoomId) -> str:
    return f"room:{room_id}"


def user_topic(user_id: UserId) -> str:
    return f"user:{user_id}"


class BrokerState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class BrokerListener(Protocol):
    """What a broker hands its traffic to; it never calls anything else in the application."""

    def on_message(self, topic: str, payload: bytes) -> None:
        """A payload published to a topic this worker subscribed to. Must not block."""
        ...

    def on_state(self, state: BrokerState) -> None:
        """The broker's connection state changed (for metrics and readiness)."""
        ...

    def on_resync(self) -> None:
        """The broker may have missed messages (it reconnected): re-read state from the store."""
        ...


def reaches_other_workers(broker: Broker) -> bool:
    """Whether a publish can reach another worker. The in-process broker says no
    (`process_local = True`): it only echoes back to this worker, so publishing a room message
    there buys nothing but its encoding, decoding and the drop of the echo by `seq`."""
    return getattr(broker, "process_local", False) is not True


class Broker(Protocol):
    """Topic pub/sub between the workers of one deployment.

    Every published payload, the publishing worker's own included, comes back through
    `BrokerListener.on_message` on each worker subscribed to the topic: one delivery path.
    Subscriptions are exact topic names, never patterns. The caller reference-counts: it calls
    `subscribe` when a topic's first local subscriber appears and `unsubscribe` after the last.
    """

    @property
    def state(self) -> BrokerState: ...

    async def start(self, listener: BrokerListener) -> None: ...

    async def publish(self, topic: str, payload: bytes) -> None:
        """Best effort: the message is already stored; failures are logged, not raised."""
        ...

    async def subscribe(self, topic: str) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    async def close(self) -> None: ...
