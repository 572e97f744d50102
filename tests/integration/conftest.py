"""Fixtures for the scale-out tests: worker processes, a cluster, and resilient STOMP clients.

A `Worker` is one `python -m chat_server serve` process (or any command, e.g. gunicorn) with its
output in a file that assertion messages quote. `cluster` is a private redis-server, two workers on
one shared SQLite database, and nginx round-robin in front of both. `ChatClient` (in
tests/stomp_client.py) records every frame, so tests await conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from chat_server.auth import TokenAuthority
from tests.conftest import SECRET
from tests.services import (
    BROKER_POOL,
    LOCALHOST,
    BrokerPool,
    BrokerServer,
    NginxServer,
    RedisServer,
    TcpProxy,
    free_port,
    require_binaries,
    start_broker,
)
from tests.stomp_client import ChatClient, Dropped
from tests.waiting import eventually

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
POLL_S = 0.05

# --------------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------------


def worker_env(database_url: str, redis_url: str | None, **settings: str | float) -> dict[str, str]:
    """The environment of a worker: shared database and secret, no inbound frame budget.

    `redis_url` is any broker URL: a redis:// one goes in REDIS_URL (as deployments have it),
    any other in CHAT_BROKER_URL."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
    env.pop("REDIS_URL", None)
    env.pop("PORT", None)
    env.update(
        DATABASE_URL=database_url,
        CHAT_JWT_SECRET=SECRET,
        CHAT_FRAMES_PER_S="0",
        CHAT_MAX_CONNECTIONS_PER_IP="0",  # every test client is 127.0.0.1 (or nginx)
        CHAT_MAX_CONNECTIONS_PER_USER="0",
        PYTHONUNBUFFERED="1",
    )
    if redis_url is not None and redis_url.startswith("redis://"):
        env["REDIS_URL"] = redis_url
    elif redis_url is not None:
        env["CHAT_BROKER_URL"] = redis_url
    env.update({f"CHAT_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class Worker:
    """One server process on 127.0.0.1:`port`, its output appended to `log_path`.

    The port stays the same across `restart()`. `start()` returns once `/healthz` answers (and,
    with `ready=True`, once `/readyz` does: database and broker connected).
    """

    def __init__(self, name: str, tmp_dir: Path, env: dict[str, str], *,
                 port: int | None = None, command: Sequence[str] | None = None) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        self.env = env
        self.log_path = tmp_dir / f"{name}.log"
        self.command = list(command) if command is not None else [
            sys.executable, "-m", "chat_server", "serve", "--port", str(self.port),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{LOCALHOST}:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no output at {self.log_path})"
        return f"--- {self.name} ({self.log_path}), last {lines} lines:\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def spawn(self) -> None:
        """Start the process without waiting for it (see `wait_listening`)."""
        assert not self.running, f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} starting {self.command}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command, env=self.env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=1.0) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_listening(self, *, ready: bool = True, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        path = "/readyz" if ready else "/healthz"
        while not self._answers(path):
            if not self.running:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"{self.name} exited with {code}\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name}: {path} not 200 after {timeout} s\n{self.output()}"
                )
            time.sleep(POLL_S)

    def start(self, *, ready: bool = True) -> None:
        self.spawn()
        self.wait_listening(ready=ready)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def sigkill(self) -> None:
        """A crash: SIGKILL, reaped at once."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def sigterm(self) -> None:
        """Asks for a graceful shutdown; see `wait_exit`."""
        self.signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, polled without blocking the event loop; fails after `timeout`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} still running after {timeout} s\n"
                                     f"{self.output()}")
            await asyncio.sleep(POLL_S)
        return code

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to the process group; always reaps (fixture teardown)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def migrate(database_url: str, tmp_dir: Path) -> None:
    """The Procfile's `release:` step, before any worker starts."""
    env = worker_env(database_url, None)
    result = subprocess.run(
        [sys.executable, "-m", "chat_server", "migrate"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"migrate failed:\n{result.stdout}\n{result.stderr}"


def start_workers(workers: Sequence[Worker]) -> None:
    """Start several at once (two Python start-ups in parallel on a 2-core machine)."""
    for worker in workers:
        worker.spawn()
    for worker in workers:
        worker.wait_listening()


# --------------------------------------------------------------------------------------------------
# The cluster: a broker + 2 workers + nginx
# --------------------------------------------------------------------------------------------------

#: Every broker engine the scale-out and fault tests run on (tests/services.py starts each).
ENGINES = ["redis", "redis-cluster", "rabbitmq", "nats", "kafka"]
#: How quickly the workers notice a silent broker, per engine's own settings.
FAST_RECOVERY: dict[str, str | float] = {
    "redis_ping_interval_s": 0.5, "broker_ping_interval_s": 0.5, "broker_timeout_s": 1.0,
    "reconcile_interval_s": 1.0,
}


@pytest.fixture(scope="session")
def broker_pool() -> Iterator[BrokerPool]:
    """The session's shared broker servers (never killed: fault tests start their own)."""
    BROKER_POOL.hold()
    try:
        yield BROKER_POOL
    finally:
        BROKER_POOL.release()


@dataclass
class Cluster:
    tmp_dir: Path
    broker: BrokerServer
    workers: list[Worker]
    nginx: NginxServer
    database_path: Path
    proxy: TcpProxy | None = None
    extra: list[NginxServer] = field(default_factory=list)
    engine: str = "redis"

    @property
    def redis(self) -> RedisServer:
        """The broker, for the tests that are about Redis itself."""
        assert isinstance(self.broker, RedisServer), self.engine
        return self.broker

    @property
    def a(self) -> Worker:
        return self.workers[0]

    @property
    def b(self) -> Worker:
        return self.workers[1]

    def stop_extra(self) -> None:
        for nginx in self.extra:
            nginx.stop()

    def logs(self) -> str:
        return "\n".join(worker.output() for worker in self.workers)

    def nginx_in_front_of(self, *workers: Worker) -> NginxServer:
        """Another nginx, with only these workers upstream (stopped with the cluster)."""
        nginx = NginxServer(self.tmp_dir / f"nginx-{len(self.extra)}",
                            [worker.port for worker in workers])
        self.extra.append(nginx)
        nginx.start()
        return nginx

    def rows(self) -> list[tuple[int, int, int, str, str | None]]:
        """(room_id, seq, id, sender_id, client_message_id) of every stored message."""
        with contextlib.closing(sqlite3.connect(self.database_path, timeout=10)) as db:
            rows: list[tuple[int, int, int, str, str | None]] = db.execute(
                "SELECT room_id, seq, id, sender_id, client_message_id FROM messages "
                "ORDER BY room_id, seq"
            ).fetchall()
        return rows

    def seqs_by_room(self) -> dict[int, list[int]]:
        stored: dict[int, list[int]] = {}
        for room, seq, *_ in self.rows():
            stored.setdefault(room, []).append(seq)
        return stored


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """`make_cluster(engine="redis", via_proxy=False, shared=False, **settings)`: a broker,
    2 workers (CHAT_ settings), nginx.

    `shared=True` takes the session's server for the engine (a namespace of the cluster's own
    keeps its traffic apart); otherwise the cluster has a private broker that a test may kill.
    Every program is looked for before anything starts (a missing one skips the test with nothing
    left behind), and each process is put on the teardown stack the moment it is started, so a
    failure half way through a start still stops what did come up.
    """
    with contextlib.ExitStack() as teardown:

        def make(*, engine: str = "redis", via_proxy: bool = False, shared: bool = False,
                 **settings: str | float) -> Cluster:
            require_binaries("nginx")
            database_path = tmp_path / "chat.db"
            database_url = f"sqlite:///{database_path}"
            ports = [free_port(), free_port()]
            nginx = NginxServer(tmp_path, ports)
            if shared:
                pool: BrokerPool = request.getfixturevalue("broker_pool")
                broker = pool.get(engine)
                namespace = f"c{secrets.token_hex(4)}"
                settings = {"broker_namespace": namespace, "redis_prefix": f"{namespace}:",
                            **settings}
            else:
                broker = start_broker(engine, tmp_path / "broker", teardown)
            proxy = None
            if via_proxy:
                assert isinstance(broker, RedisServer), "the proxy stands in front of Redis"
                proxy = TcpProxy(broker.host, broker.port)
                teardown.callback(proxy.stop)
            url = f"redis://{LOCALHOST}:{proxy.port}/0" if proxy is not None else broker.url
            env = worker_env(database_url, url, **settings)
            workers = [Worker(name, tmp_path, env, port=port)
                       for name, port in zip(("worker-a", "worker-b"), ports, strict=True)]
            cluster = Cluster(tmp_path, broker, workers, nginx, database_path, proxy,
                              engine=engine)
            # Stopped in reverse: the extra nginx instances, nginx, the workers, then the broker.
            for worker in workers:
                teardown.callback(worker.stop)
            teardown.callback(nginx.stop)
            teardown.callback(cluster.stop_extra)
            migrate(database_url, tmp_path)
            start_workers(workers)
            nginx.start()
            return cluster

        yield make


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Cluster:
    """Redis + 2 workers + nginx with short recovery intervals."""
    return make_cluster(redis_ping_interval_s=0.5, reconcile_interval_s=1.0)


# --------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------

tokens = TokenAuthority(SECRET)


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint(user)}"}


async def create_group_room(http: aiohttp.ClientSession, base_url: str, creator: str,
                            members: Sequence[str], name: str = "team") -> int:
    async with http.post(f"{base_url}/api/chat-rooms", headers=bearer(creator),
                         json={"name": name, "memberIds": list(members)}) as response:
        assert response.status == 201, await response.text()
        room_id: int = (await response.json())["id"]
        return room_id


def has(client: ChatClient, room: int, count: int) -> bool:
    """`client` received at least `count` messages of `room`."""
    return len(client.seqs(room)) >= count


@dataclass
class Tally:
    """Loss, duplication and order of what subscribers received, against the database."""

    clients: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, who: str, received: Sequence[int], expected: Sequence[int]) -> None:
        """`expected`: the seqs the subscriber must get, ascending; `received`: what it got."""
        self.clients += 1
        self.expected += len(expected)
        self.delivered += len(received)
        lost = len(set(expected) - set(received))
        duplicated = len(received) - len(set(received))
        out_of_order = sum(1 for a, b in itertools.pairwise(received) if b < a)
        unexpected = sorted(set(received) - set(expected))
        self.lost += lost
        self.duplicated += duplicated
        self.out_of_order += out_of_order
        if lost or duplicated or out_of_order or unexpected:
            self.problems.append(
                f"{who}: lost {lost}, duplicated {duplicated}, out of order {out_of_order}, "
                f"unexpected {unexpected[:10]}; first received {list(received)[:20]}"
            )

    def summary(self, label: str) -> str:
        return (f"[{label}] clients {self.clients}, expected {self.expected}, delivered "
                f"{self.delivered}, lost {self.lost}, duplicated {self.duplicated}, "
                f"out of order {self.out_of_order}")

    def assert_clean(self, context: str = "") -> None:
        assert (self.lost, self.duplicated, self.out_of_order, self.problems) == (0, 0, 0, []), (
            "\n".join(self.problems[:20]) + "\n" + context
        )


ClientFactory = Callable[[str, str], ChatClient]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture
async def clients(http: aiohttp.ClientSession) -> AsyncIterator[ClientFactory]:
    """`clients(user, ws_url)`: a ChatClient (not yet connected), closed at teardown."""
    made: list[ChatClient] = []

    def make(user: str, url: str) -> ChatClient:
        client = ChatClient(http, user, url, tokens.mint)
        made.append(client)
        return client

    yield make
    await asyncio.gather(*(client.shutdown() for client in made))


async def broker_state(http: aiohttp.ClientSession, worker: Worker) -> str:
    """What the worker's /readyz says about its broker ("ok", "connecting", ...)."""
    async with http.get(f"{worker.url}/readyz") as response:
        body = await response.json()
        return str(body["checks"]["broker"])


async def wait_broker(http: aiohttp.ClientSession, worker: Worker, *, ok: bool,
                      timeout: float) -> None:
    """Polls /readyz until the broker is (`ok`) or is not connected."""
    last: list[str] = []

    async def reached() -> bool:
        last.append(await broker_state(http, worker))
        return (last[-1] == "ok") == ok

    await eventually(reached, timeout, f"{worker.name}: broker {'ok' if ok else 'not ok'}",
                     lambda: f"last state {last[-1:]}\n{worker.output()}", interval=POLL_S)


class Sender:
    """Sends `room` messages one after another, each with a receipt and a unique clientMessageId,
    until `stop()` (or `limit` messages). On a dropped connection (or a receipt that does not come)
    it resumes through `reconnect_url` when given and sends the same clientMessageId again;
    without one it stops there. `receipted` holds the clientMessageIds that got a RECEIPT."""

    def __init__(self, client: ChatClient, room: int, *, limit: int | None = None,
                 reconnect_url: str | None = None, rooms: Sequence[int] = (),
                 receipt_timeout: float = 10.0) -> None:
        self.client = client
        self.room = room
        self.limit = limit
        self.reconnect_url = reconnect_url
        self.rooms = list(rooms)
        self.receipt_timeout = receipt_timeout
        self.receipted: list[str] = []
        #: (monotonic time the SEND went out, seconds until its RECEIPT)
        self.latencies: list[tuple[float, float]] = []
        self.retries = 0
        #: Extra characters in every message from now on (big messages for buffer limits).
        self.padding = 0
        self.unreceipted: str | None = None
        self._stopping = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    def stop(self) -> None:
        self._stopping = True

    async def finish(self, timeout: float) -> None:
        """Stop after the message in flight and wait for that."""
        self.stop()
        await self.done(timeout)

    async def done(self, timeout: float) -> None:
        """Wait until all `limit` messages are receipted (or the sender gave up)."""
        assert self.task is not None
        async with asyncio.timeout(timeout):
            await self.task

    async def run(self) -> None:
        k = 0
        while not self._stopping and (self.limit is None or k < self.limit):
            cmid = f"{self.client.user}-{k}"
            while True:
                sent = time.monotonic()
                try:
                    content = f"{self.client.user} #{k}" + "x" * self.padding
                    await self.client.send(self.room, content, cmid,
                                           timeout=self.receipt_timeout)
                except (Dropped, TimeoutError):
                    if self.reconnect_url is None:
                        self.unreceipted = cmid
                        return
                    self.retries += 1
                    if self.client.connected:  # a receipt that never came: start afresh
                        await self.client.close()
                    await self.client.resume(self.reconnect_url, self.rooms)
                    continue
                self.latencies.append((sent, time.monotonic() - sent))
                self.receipted.append(cmid)
                break
            k += 1
