"""The in-process broker: one worker, no network; the embedded default."""

from __future__ import annotations

from chat_server.broker.base import BrokerListener, BrokerState


class MemoryBroker:
    """Delivers each publish straight back to this process's listener, if it watches the topic."""

    #: No other worker hears a publish here (see `reaches_other_workers`).
    process_local = True

    def __init__(self) -> None:
        self._listener: BrokerListener | None = None
        self._topics: set[str] = set()
        self._state = BrokerState.CONNECTING
        self.published = 0

    @property
    def state(self) -> BrokerState:
        return self._state

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._state = BrokerState.CONNECTED
        listener.on_state(self._state)

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published += 1
        if self._listener is not None and topic in self._topics:
            self._listener.on_message(topic, payload)

    async def subscribe(self, topic: str) -> None:
        self._topics.add(topic)

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    async def close(self) -> None:
        self._state = BrokerState.CLOSED
        self._listener = None
        self._topics.clear()
