"""How the app is served: aiohttp's HTTP server, plus a bound on the time to a request head
and JSON answers (and one log line) for requests that cannot be parsed.

aiohttp times nothing between a connection's first byte and the end of its request head but
its keep-alive timer (75 s under `serve`, gunicorn's `--keep-alive` under the Procfile), so a
client sending one header line every few seconds holds a socket that long per connection
(BAD_INPUTS W16). `ChatRequestHandler` closes a connection whose head is not complete within
`CHAT_REQUEST_HEAD_TIMEOUT_S` of its opening, or of the first byte of a later request on it.
Once a connection is upgraded to a WebSocket, its bytes pass through a `FrameCheck`
(frame_check.py) before aiohttp's WebSocket reader.
Both `chat-server serve` (`run`) and the gunicorn workers (`gunicorn_runner`) use `ChatRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_websocket import WebSocketReader
from aiohttp.web_request import BaseRequest

from chat_server.config import Settings
from chat_server.web.frame_check import FrameCheck
from chat_server.web.services import SETTINGS
from chat_server.web.shutdown import StopSignals, cancel_leftovers

log = logging.getLogger(__name__)

#: `serve`'s keep-alive: how long an idle HTTP connection is kept (aiohttp's run_app default).
KEEPALIVE_S = 75.0


_MALFORMED_CODES = {
    413: "request_too_large",
    431: "request_header_fields_too_large",
}


class ChatRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol with a head timer, and quiet JSON answers to requests
    it cannot parse.

    "Waiting for a head" is what aiohttp's own keep-alive check uses: its request loop awaits
    `_waiter`. A head is known complete once aiohttp's count of parsed requests moves past the
    count when it began.
    """

    def __init__(
        self, manager: web.Server, *, head_timeout_s: float, max_message_bytes: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._max_message_bytes = max_message_bytes
        #: The upgraded connection's check, once there is one (the WebSocket handler watches it).
        self.frame_check: FrameCheck | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        #: Requests parsed on this connection when the timed head began.
        self._head_index = -1

    def _waiting_for_head(self) -> bool:
        return self._waiter is not None and not self._waiter.done()

    def _head_began(self) -> None:
        if not self._head_timeout_s:
            return
        self._head_index = self._request_count
        self._head_deadline = self._loop.time() + self._head_timeout_s
        if self._head_timer is None:
            self._head_timer = self._loop.call_at(self._head_deadline, self._head_overdue)

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._head_index != self._request_count or not self._waiting_for_head():
            return  # that head arrived; a later one is timed from its first byte
        if self._loop.time() < self._head_deadline:  # a later head began after this timer
            self._head_timer = self._loop.call_at(self._head_deadline, self._head_overdue)
            return
        log.debug("closing a connection whose request head took over %s s",
                  self._head_timeout_s)
        self.force_close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_began()  # the first head is timed from the connection's opening

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A later head is timed from its first byte; an idle keep-alive connection is not
        # (the keep-alive timer covers that), nor an upgraded one (no more heads).
        if (
            self._head_index != self._request_count
            and self._waiting_for_head()
            and not self._upgraded
        ):
            self._head_began()

    def set_parser(self, parser: Any, *args: Any, **kwargs: Any) -> None:
        """aiohttp hands an upgraded connection's WebSocket reader here (web_ws); the bytes
        reach it through a FrameCheck, which sees them first (the bytes that came with the
        upgrade request too: aiohttp feeds those in this call)."""
        if isinstance(parser, WebSocketReader):
            parser = self.frame_check = FrameCheck(parser, self._max_message_bytes)
        super().set_parser(parser, *args, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (a NUL in a header, too many or too long headers):
        one WARNING line without the request's bytes (they may hold a token), and a JSON answer
        like every other error. Anything else is aiohttp's business, as before."""
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        log.warning("refused a malformed HTTP request from %s: %s (%s)",
                    request.remote, status, type(exc).__name__)
        code = _MALFORMED_CODES.get(status, "bad_request")
        response = web.json_response(
            {"error": {"code": code, "message": "malformed HTTP request"}}, status=status
        )
        response.force_close()
        return response

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class ChatHttpServer(web.Server):
    """aiohttp's protocol factory, making `ChatRequestHandler`s."""

    def __init__(
        self, *args: Any, head_timeout_s: float, max_message_bytes: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_message_bytes = max_message_bytes

    def __call__(self) -> web.RequestHandler:
        return ChatRequestHandler(
            self, loop=self._loop, head_timeout_s=self.head_timeout_s,
            max_message_bytes=self.max_message_bytes, **self._kwargs,
        )


class ChatRunner(web.AppRunner):
    """An AppRunner whose connections are ChatRequestHandlers (head timer off with 0). The
    WebSocket message limit is the app's `CHAT_MAX_FRAME_BYTES`."""

    def __init__(self, app: web.Application, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._max_message_bytes = app[SETTINGS].max_frame_bytes

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ChatHttpServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            head_timeout_s=self._head_timeout_s,
            max_message_bytes=self._max_message_bytes,
            **server._kwargs,
        )


async def _serve_until_stopped(
    app: web.Application, settings: Settings, sock: socket.socket, stop: asyncio.Event
) -> None:
    runner = ChatRunner(
        app,
        head_timeout_s=settings.request_head_timeout_s,
        keepalive_timeout=KEEPALIVE_S,
        shutdown_timeout=settings.shutdown_grace_s,
    )
    if not await _unless_stopped(runner.setup(), stop):
        # A start that hangs (a database that accepts and never answers) ends on a signal.
        log.info("stopped while starting")
        return
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        print(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


async def _unless_stopped(starting: Awaitable[None], stop: asyncio.Event) -> bool:
    """Await `starting` unless a stop is requested first: then cancel it and return False."""
    start = asyncio.ensure_future(starting)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({start, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if start.done():
        start.result()  # its failure, e.g. StoreUnavailable, is the caller's
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False


def run(
    app: web.Application,
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
) -> None:
    """`chat-server serve` on a socket bound already: what aiohttp's run_app does, with
    ChatRunner, and a shutdown that a second signal does not interrupt (shutdown.py)."""
    asyncio.set_event_loop(loop)
    signals = StopSignals()
    signals.install(loop)  # before the start-up, which a signal cuts short
    try:
        loop.run_until_complete(_serve_until_stopped(app, settings, sock, signals.requested))
    finally:
        cancel_leftovers(loop, settings.shutdown_grace_s)
        loop.run_until_complete(loop.shutdown_asyncgens())
        signals.ignore_from_now_on(loop)
        loop.close()


def gunicorn_runner(worker: Any) -> Callable[[], Awaitable[web.AppRunner]]:
    """For aiohttp's gunicorn worker (`worker.wsgi`): a ChatRunner made with the same options
    the worker gives its own AppRunner (aiohttp.worker.GunicornWebWorker._run)."""
    app: web.Application = worker.wsgi
    cfg = worker.cfg

    async def make() -> web.AppRunner:
        return ChatRunner(
            app,
            head_timeout_s=app[SETTINGS].request_head_timeout_s,
            logger=worker.log,
            keepalive_timeout=cfg.keepalive,
            access_log=worker.log.access_log if cfg.accesslog else None,
            access_log_format=worker._get_valid_log_format(cfg.access_log_format),
            shutdown_timeout=cfg.graceful_timeout / 100 * 95,
        )

    return make
