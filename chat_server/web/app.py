"""create_app: the one composition root, where settings become concrete backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from chat_server.auth import TokenAuthority, load_or_create_secret, make_private_directory
from chat_server.broker.choice import build_broker
from chat_server.chat import ChatService
from chat_server.config import Settings
from chat_server.fanout import Fanout
from chat_server.gctune import tune_gc
from chat_server.inbound import SendReader
from chat_server.metrics import Metrics
from chat_server.proxies import TrustedProxies
from chat_server.ratelimit import RateLimiter
from chat_server.room_state import RoomState
from chat_server.store.closing import close_fully
from chat_server.store.migrate import migrate
from chat_server.store.sql import open_store
from chat_server.store.urls import sqlite_path
from chat_server.web.demo import setup_demo
from chat_server.web.keepalive import KeepAlive
from chat_server.web.rest import api_routes, error_middleware
from chat_server.web.services import SERVICES, SETTINGS, Connections, Services
from chat_server.web.websocket import websocket_handler

log = logging.getLogger(__name__)


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    database_file = sqlite_path(settings.database_url)
    if database_file is not None:
        make_private_directory(database_file.parent)  # before the store makes it 0755
    secret = load_or_create_secret(settings.jwt_secret, database_file)
    await migrate(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
    store = await open_store(
        settings.database_url,
        pool_size=settings.db_pool_size,
        busy_timeout_ms=settings.db_busy_timeout_ms,
        acquire_timeout_s=settings.db_acquire_timeout_s,
    )
    broker = build_broker(settings)
    metrics = Metrics()
    store.observe_batch = metrics.append_batch_size.observe
    room_state = RoomState(
        broker,
        store,
        metrics,
        presence_ttl_s=settings.presence_ttl_s,
        typing_ttl_s=settings.typing_ttl_s,
        typing_interval_s=settings.typing_interval_s,
        ask_timeout_s=settings.presence_ask_timeout_s,
    )
    fanout = Fanout(
        broker,
        store,
        gap_wait_s=settings.gap_wait_s,
        reconcile_interval_s=settings.reconcile_interval_s,
        metrics=metrics,
        room_state=room_state,
        # Half the pool at most: SUBSCRIBE replays and REST keep the rest during a resync.
        max_concurrent_fills=max(1, settings.db_pool_size // 2),
    )
    await broker.start(fanout)
    fanout.start()
    await room_state.start()
    keepalive = KeepAlive(settings.ws_ping_s)
    keepalive.start()
    app[SERVICES] = Services(
        settings=settings,
        store=store,
        broker=broker,
        chat=ChatService(store, broker, metrics, fanout.deliver, room_state),
        send_reader=SendReader(
            settings.max_body_bytes, settings.max_user_headers, settings.max_user_header_bytes
        ),
        metrics=metrics,
        fanout=fanout,
        tokens=TokenAuthority(
            secret, leeway_s=settings.jwt_leeway_s, require_exp=settings.jwt_require_exp
        ),
        connections=Connections(settings.max_connections_per_user, settings.max_connections_per_ip),
        rest_limiter=RateLimiter(settings.rest_requests_per_s, settings.rest_burst),
        auth_failures=RateLimiter(
            settings.auth_failures_per_min / 60, settings.auth_failures_per_min
        ),
        keepalive=keepalive,
        proxies=TrustedProxies(settings.trusted_proxies),
    )
    try:
        yield
    finally:
        try:
            keepalive.stop()
            await room_state.close()  # its goodbye: this worker's users leave elsewhere at once
            await fanout.close()
            await broker.close()
        finally:
            await close_fully(store.close())  # even when cancelled: no connection left open


async def _close_sessions(app: web.Application) -> None:
    """On shutdown: refuse new upgrades, close every socket with GOING_AWAY (1001)."""
    services = app.get(SERVICES)
    if services is None:
        return
    services.connections.accepting = False
    for session in list(services.connections.sessions):
        session.going_away()
    if services.connections.sessions:
        services.connections.idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                services.connections.idle.wait(), services.settings.shutdown_grace_s
            )


async def tune_gc_on_startup(app: web.Application) -> None:
    """An `on_startup` hook for server processes (not tests): runs after the services start,
    so what they built is frozen too (gctune.py)."""
    tune_gc(app[SETTINGS].gc_gen0_threshold)


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    app = web.Application(
        client_max_size=settings.max_rest_body_bytes,
        middlewares=[error_middleware],
        # Never inflate a request body: aiohttp would do it on the event loop as the bytes
        # arrive, even for a request that is refused, and error_middleware refuses them (415).
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_services)
    app.on_shutdown.append(_close_sessions)
    app.router.add_get("/ws", websocket_handler)
    app.add_routes(api_routes)
    setup_demo(app, settings)  # only with settings.demo (`serve --demo`)
    return app
