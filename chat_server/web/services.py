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
from chat_server.metrics import Metrics
from chat_server.models import UserId
from chat_server.ratelimit import RateLimiter
from chat_server.session import Session
from chat_server.store.base import MessageStore


@dataclass(eq=False)
class Connections:
    """Live sessions of this worker: for connection caps and for closing them on shutdown."""

    max_per_user: int
    max_per_ip: int
    sessions: set[Session] = field(default_factory=set)
    by_user: dict[UserId, int] = field(default_factory=dict)
    by_ip: dict[str, int] = field(default_factory=dict)
    accepting: bool = True
    #: Set whenever no session is open (awaited by a graceful shutdown).
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self.idle.clear()

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.user is not None and session.admitted:
            self.release_user(session.user)
        if not self.sessions:
            self.idle.set()

    def admit_ip(self, ip: str) -> bool:
        if self.max_per_ip and self.by_ip.get(ip, 0) >= self.max_per_ip:
            return False
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return True

    def release_ip(self, ip: str) -> None:
        remaining = self.by_ip.get(ip, 0) - 1
        if remaining > 0:
            self.by_ip[ip] = remaining
        else:
            self.by_ip.pop(ip, None)

    def admit_user(self, _session: Session, user: UserId) -> bool:
        if self.max_per_user and self.by_user.get(user, 0) >= self.max_per_user:
            return False
        self.by_user[user] = self.by_user.get(user, 0) + 1
        return True

    def release_user(self, user: UserId) -> None:
        remaining = self.by_user.get(user, 0) - 1
        if remaining > 0:
            self.by_user[user] = remaining
        else:
            self.by_user.pop(user, None)


@dataclass(frozen=True, eq=False)
class Services:
    """What request handlers need, built once per worker."""

    settings: Settings
    store: MessageStore
    broker: Broker
    chat: ChatService
    fanout: Fanout
    metrics: Metrics
    tokens: TokenAuthority
    connections: Connections
    #: REST calls per user.
    rest_limiter: RateLimiter
    #: CONNECTs with bad credentials per IP address.
    auth_failures: RateLimiter


SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
