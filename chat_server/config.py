"""Settings: one frozen dataclass read from the environment; every limit has a sane default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from chat_server.proxies import parse_networks


def _split_origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.strip() for origin in raw.split(",") if origin.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite:///chat.db"
    redis_url: str | None = None
    #: The broker between workers, by its URL's scheme (broker/choice.py); else `redis_url`.
    broker_url: str | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    demo: bool = False

    # Limits (CONTRACT.md, "Limits"); 0 disables a rate limit.
    max_frame_bytes: int = 65536
    max_body_bytes: int = 16384
    max_headers: int = 32
    max_header_bytes: int = 8192
    max_subscriptions: int = 50
    max_unacked: int = 1000
    max_pipelined_sends: int = 32
    connect_timeout_s: float = 10.0
    #: Longest time a STOMP frame may take to arrive whole, from when the server first waits
    #: for the rest of it; past it: ERROR `frame timeout`, 1008. 0: no bound (BAD_INPUTS F1).
    frame_timeout_s: float = 10.0
    #: Longest time from a connection's opening (or a later request's first byte) to the end
    #: of its HTTP request head; past it the connection is closed (slowloris). 0: no bound.
    request_head_timeout_s: float = 10.0
    heartbeat_ms: int = 10000
    ws_ping_s: float = 25.0
    outbox_bytes: int = 524288
    send_stall_s: float = 10.0
    frames_per_s: float = 20.0
    frames_burst: int = 50
    max_connections_per_user: int = 10
    max_connections_per_ip: int = 50
    max_rest_body_bytes: int = 65536
    #: REST calls per user (token bucket): past it, 429 with Retry-After.
    rest_requests_per_s: float = 20.0
    rest_burst: int = 60
    #: CONNECTs with bad credentials per IP address per minute (also the burst); past it the
    #: address's WebSocket upgrades get 429 with Retry-After until the bucket refills.
    auth_failures_per_min: float = 10.0
    #: Addresses/CIDRs of reverse proxies whose X-Forwarded-For is believed (proxies.py): the
    #: per-address limits then key on the client behind them. Empty: the TCP peer, always.
    trusted_proxies: tuple[str, ...] = ()
    #: Clock skew tolerated on a token's `exp`, at CONNECT and while connected alike.
    jwt_leeway_s: float = 30.0
    #: Refuse tokens without an `exp` claim (a session without an end); off only for hosts
    #: whose tokens carry none.
    jwt_require_exp: bool = True
    max_user_headers: int = 8
    max_user_header_bytes: int = 1024

    # Storage tuning.
    db_busy_timeout_ms: int = 5000
    db_pool_size: int = 10
    #: Longest wait for a free pooled connection; past it the request is refused (503 / ERROR).
    db_acquire_timeout_s: float = 5.0

    # Fan-out: how long a room waits for a missing `seq` before reading it from the database,
    # and how often every watched room is compared with the database (lost publishes).
    gap_wait_s: float = 0.2
    reconcile_interval_s: float = 5.0
    # Room state (presence, typing): a worker that dies has its users leave within the TTL;
    # typing ends after its TTL without a refresh; one typing signal per user, room and
    # interval is relayed; the first events snapshot of a room waits at most `ask_timeout` for
    # the other workers' answers.
    presence_ttl_s: float = 15.0
    typing_ttl_s: float = 5.0
    typing_interval_s: float = 1.0
    presence_ask_timeout_s: float = 0.5
    redis_prefix: str = "chat:"
    redis_ping_interval_s: float = 2.0
    redis_timeout_s: float = 2.0
    #: Every engine but plain Redis (which keeps the `redis_` settings above): how often a
    #: worker checks that the broker echoes it, how long a broker call may take, and the name
    #: of the exchange (AMQP), subject prefix (NATS), topic (Kafka).
    broker_ping_interval_s: float = 2.0
    broker_timeout_s: float = 2.0
    broker_namespace: str = "chat"
    #: Partitions of the Kafka topic when a worker creates it (an existing topic keeps its own).
    kafka_partitions: int = 8
    shutdown_grace_s: float = 10.0
    #: Objects the youngest GC generation may hold in `serve` and gunicorn workers (gctune.py);
    #: 0 leaves Python's collector untouched.
    gc_gen0_threshold: int = 10000

    def __post_init__(self) -> None:
        parse_networks(self.trusted_proxies)  # refused at start, not at the first request
        if self.presence_ttl_s <= 0 or self.typing_ttl_s <= 0:
            raise ValueError("settings presence_ttl_s and typing_ttl_s must be positive")
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"setting {spec.name} must not be negative, got {value}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `PORT`, `DATABASE_URL`, ... and `CHAT_*` limits; `overrides` (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        plain = {
            "host": "HOST",
            "port": "PORT",
            "database_url": "DATABASE_URL",
            "redis_url": "REDIS_URL",
            "jwt_secret": "CHAT_JWT_SECRET",
        }
        for name, var in plain.items():
            if env.get(var):
                values[name] = env[var]
        if env.get("CHAT_ALLOWED_ORIGINS"):
            values["allowed_origins"] = _split_origins(env["CHAT_ALLOWED_ORIGINS"])
        sources = dict(plain)
        for spec in fields(cls):
            var = "CHAT_" + spec.name.upper()
            if spec.name not in plain and var in env and spec.name != "allowed_origins":
                values[spec.name] = env[var]
                sources[spec.name] = var
        values.update({k: v for k, v in overrides.items() if v is not None})
        defaults = cls()
        coerced = {
            name: _coerce(sources.get(name, name), raw, getattr(defaults, name))
            for name, raw in values.items()
        }
        return replace(defaults, **coerced)


def _coerce(name: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return _split_origins(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {raw!r} is not a valid value") from exc
    return raw
