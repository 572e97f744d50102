"""Prometheus metrics (prometheus_client), in one process or across gunicorn workers.

Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` (set by chat_server/web/gunicorn_conf.py) makes
every worker write its values to files that `/metrics` aggregates, whichever worker answers.
Hot paths count in bulk: a room message adds its deliveries once per worker, not per socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from chat_server.stomp.frames import Command

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: From commit to the subscriber's outbox, in seconds: local, cross-worker, after gap fills.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Children(dict[Command, Counter]):
    """A metric's labelled children by command, each looked up through `labels()` only once."""

    def __init__(self, make: Callable[[Command], Counter]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, command: Command) -> Counter:
        child = self[command] = self._make(command)
        return child


class Metrics:
    """The server's metrics; one instance per application (and its own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge(
            "chat_connections", "Open WebSocket connections",
            registry=registry, multiprocess_mode="livesum",
        )
        self.subscriptions = Gauge(
            "chat_subscriptions", "Open STOMP subscriptions (rooms and user queues)",
            registry=registry, multiprocess_mode="livesum",
        )
        self.frames_received = Counter(
            "chat_frames_received", "STOMP frames received, by command", ["command"],
            registry=registry,
        )
        self.frames_sent = Counter(
            "chat_frames_sent", "STOMP frames sent, by command", ["command"], registry=registry,
        )
        self.messages_stored = Counter(
            "chat_messages_stored", "Chat messages stored (retries not counted)",
            registry=registry,
        )
        self.messages_delivered = Counter(
            "chat_messages_delivered", "Room messages written to subscribers' outboxes",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "chat_delivery_latency_seconds",
            "From a message's commit (its createdAt) to its delivery by this worker",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.append_batch_size = Histogram(
            "chat_append_batch_size", "Messages stored per transaction (group commit)",
            buckets=BATCH_BUCKETS, registry=registry,
        )
        self.broker_connected = Gauge(
            "chat_broker_connected", "1 while the broker connection is up (min over workers)",
            registry=registry, multiprocess_mode="livemin",
        )
        self.gap_fills = Counter(
            "chat_gap_fills", "Times a room read missing messages from the database",
            registry=registry,
        )
        self.errors = Counter(
            "chat_errors", "Refusals and errors by where and what kind",
            ["source", "kind"], registry=registry,
        )
        # Room state: presence, typing, read markers.
        self.online_users = Gauge(
            "chat_online_users",
            "Users with a connection here subscribed to a room or its events (per worker: "
            "a user connected to two workers counts on both)",
            registry=registry, multiprocess_mode="livesum",
        )
        self.typing_events = Counter(
            "chat_typing_events",
            "Typing SENDs by outcome: relayed, deferred to the end of their one-second "
            "interval, or absorbed by it",
            ["outcome"], registry=registry,
        )
        self.read_marker_writes = Counter(
            "chat_read_marker_writes",
            "Read markers set by SEND /app/read or REST, by whether they moved forward",
            ["outcome"], registry=registry,
        )
        # Hot-path children bound once: `labels()` per event costs a lock and a dict lookup.
        self.message_frames_sent = self.frames_sent.labels("MESSAGE")
        self.receipt_frames_sent = self.frames_sent.labels("RECEIPT")
        #: Made on first use per command, so /metrics lists only commands actually received.
        self.frames_received_by_command: dict[Command, Counter] = _Children(
            lambda command: self.frames_received.labels(command.value)
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type; all workers' values under gunicorn."""
        if os.environ.get(MULTIPROCESS_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample of this process (tests and diagnostics)."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found


def mark_process_dead(pid: int) -> None:
    """A gunicorn worker is gone: its live gauges (connections, subscriptions) stop counting."""
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
