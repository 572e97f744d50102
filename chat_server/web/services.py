"""What request handlers share: the worker's services and its live connections."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from chat_server.auth import TokenAuthority
from chat_server.broker.base import Broker
from chat_server.chat import ChatService
from chat_server.config import Settings
from chat_server.fanout import Fanout
from chat_server.inbound import SendReader
from chat_server.metrics import Metrics
from chat_server.models import UserId
from chat_server.proxies import TrustedProxies
from chat_server.ratelimit import RateLimiter
from chat_server.session import Session
from chat_server.store.base import MessageStore
from chat_server.web.keepalive import KeepAlive


class Cap:
    """Counts holders per key and refuses one past `limit` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def admit(self, key: str) -> bool:
        held = self.counts.get(key, 0)
        if self.limit and held >= self.limit:
            return False
        self.counts[key] = held + 1
        return True

    def release(self, key: str) -> None:
        remaining = self.counts.get(key, 0) - 1
        if remaining > 0:
            self.counts[key] = remaining
        else:
            self.counts.pop(key, None)  # keys never pile up: memory follows live connections


class Connections:
    """Live sessions of this worker: for connection caps and for closing them on shutdown."""

    def __init__(self, max_per_user: int, max_per_ip: int) -> None:
        self.sessions: set[Session] = set()
        self.per_user = Cap(max_per_user)
        self.per_ip = Cap(max_per_ip)
        self.accepting = True
        #: Set whenever no session is open (awaited by a graceful shutdown).
        self.idle = asyncio.Event()

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self.idle.clear()

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.user is not None and session.admitted:
            self.per_user.release(session.user)
        if not self.sessions:
            self.idle.set()

    def admit_ip(self, ip: str) -> bool:
        return self.per_ip.admit(ip)

    def release_ip(self, ip: str) -> None:
        self.per_ip.release(ip)

    def admit_user(self, _session: Session, user: UserId) -> bool:
        return self.per_user.admit(user)


@dataclass(frozen=True, eq=False)
class Services:
    """What request handlers need, built once per worker."""

    settings: Settings
    store: MessageStore
    broker: Broker
    chat: ChatService
    #: Checks SEND frames; one for the worker (its schema is built once).
    send_reader: SendReader
    fanout: Fanout
    metrics: Metrics
    tokens: TokenAuthority
    connections: Connections
    #: REST calls per user.
    rest_limiter: RateLimiter
    #: CONNECTs with bad credentials per IP address.
    auth_failures: RateLimiter
    #: WebSocket pings for every socket of the worker.
    keepalive: KeepAlive
    #: Who may tell us the client's address (CHAT_TRUSTED_PROXIES).
    proxies: TrustedProxies = field(default_factory=TrustedProxies)

    def client_address(self, request: web.Request) -> str:
        """The address per-address limits key on (the peer, or who a trusted proxy names)."""
        return self.proxies.client_address(
            request.remote, request.headers.getall("X-Forwarded-For", [])
        )


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
