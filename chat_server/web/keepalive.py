"""WebSocket pings for all of a worker's sockets from one timer.

aiohttp's `heartbeat=` keeps a ping timer and a pong timer for every socket, about 1.5 KiB
per idle connection (measured with tracemalloc). Here one sweep every `interval_s` pings each
socket heard from since the previous sweep and cuts each one that was not: that peer answered
neither the last ping nor sent anything for a whole interval, so it is gone or wedged.
A dead peer is thus noticed after one to two intervals.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Pingable(Protocol):
    #: Set by the socket's reader whenever anything (a frame, a ping, a pong) arrives.
    heard_from: bool

    def ping(self) -> None: ...

    def cut(self) -> None: ...


class KeepAlive:
    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._sockets: set[Pingable] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._interval_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def add(self, socket: Pingable) -> None:
        socket.heard_from = True  # the upgrade itself: first pinged at the next sweep
        self._sockets.add(socket)

    def discard(self, socket: Pingable) -> None:
        self._sockets.discard(socket)

    def _sweep(self) -> None:
        for socket in list(self._sockets):
            if socket.heard_from:
                socket.heard_from = False
                socket.ping()
            else:
                self._sockets.discard(socket)
                socket.cut()
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._sweep)
