"""The servers under test, each private to one benchmark run, and what /proc says about them.

`ChatTarget`: `python -m chat_server serve` workers (one, or several behind a private broker of
any engine: Redis, Redis Cluster, RabbitMQ, NATS, Kafka) on a SQLite database seeded with the
scenario's rooms, or on a private PostgreSQL server started per run (`database="postgres"`).
`RabbitTarget`: a private RabbitMQ node with only Web-STOMP enabled, on free ports, its files in
a temp dir (never the machine's own node).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loadgen import pub_user, publisher_of, sub_user
from tests.services import (
    BrokerServer,
    PostgresServer,
    RedisClusterServer,
    free_port,
    start_broker,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_S = 60.0


# --- /proc ---------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[-1].split()


def pids_in_groups(pgids: set[int], parents: frozenset[int] = frozenset()) -> list[int]:
    """Every live process whose process group is one of `pgids` (a server and its helpers), or
    whose parent is one of `parents` (PostgreSQL's backends each start a session of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields[0] is the state, [1] the parent, [2] the process group.
        if fields is not None and fields[0] != "Z" and (
            int(fields[2]) in pgids or int(fields[1]) in parents
        ):
            found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        total += int(statm[1]) * PAGE_KIB * 1024
    return total


def _wait_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pids_in_groups({pgid}):
            return True
        time.sleep(0.05)
    return False


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _wait_gone(pgid, 10.0)


# --- scenario shape shared by targets ------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Rooms, subscribers per room and publishers: what the database must hold."""

    rooms: int
    subs_per_room: int
    publishers: int


@dataclass
class Servers:
    """One run's server processes."""

    urls: list[str]
    pgids: set[int]
    #: The chat_server workers, each profiled on its own (none for RabbitMQ).
    worker_pids: list[int] = field(default_factory=list)
    #: The broker between the workers: its CPU time is reported apart too.
    broker_pgids: set[int] = field(default_factory=set)
    pids: list[int] = field(default_factory=list)
    #: Processes whose children count too, whatever their group (a PostgreSQL postmaster).
    parents: frozenset[int] = frozenset()

    def refresh(self) -> list[int]:
        self.pids = pids_in_groups(self.pgids, self.parents)
        return self.pids


# --- chat_server -------------------------------------------------------------------------------


async def _seed(database_url: str, layout: Layout) -> None:
    """Rooms 1..N and their members, in one transaction through the store's engine."""
    from sqlalchemy import insert

    from chat_server.models import RoomId, RoomKind, UserId
    from chat_server.store.migrate import migrate
    from chat_server.store.schema import room_members, rooms
    from chat_server.store.sql import open_store

    await migrate(database_url)
    store = await open_store(database_url)
    try:
        now = int(time.time() * 1000)
        room_rows: list[dict[str, object]] = []
        member_rows: list[dict[str, object]] = []
        for j in range(layout.rooms):
            members = [sub_user(j, k) for k in range(layout.subs_per_room)]
            if layout.publishers:
                members.append(pub_user(publisher_of(j, layout.publishers)))
            room_rows.append({
                "id": j + 1, "kind": RoomKind.GROUP.value, "name": f"bench-{j}",
                "created_by": members[0], "created_at_ms": now, "last_activity_ms": now,
                "last_seq": 0, "direct_key": None,
            })
            member_rows.extend(
                {"room_id": j + 1, "user_id": user, "joined_at_ms": now} for user in members
            )
        async with store.engine.begin() as conn:
            await conn.execute(insert(rooms), room_rows)
            await conn.execute(insert(room_members), member_rows)
        assert await store.is_member(RoomId(layout.rooms), UserId(members[0]))
    finally:
        await store.close()


class DurablePostgres(PostgresServer):
    """The tests' private PostgreSQL with their speed-ups taken out (`fsync=off`,
    `full_page_writes=off`): a commit is as durable as SQLite's `synchronous=FULL` one."""

    def _server_options(self) -> str:
        options = super()._server_options().replace("-c fsync=off", "")
        return options.replace("-c full_page_writes=off", "")


DATABASES = ("sqlite", "postgres")


def broker_pgids(server: BrokerServer) -> set[int]:
    """The process groups of a broker (each node of a Redis Cluster is one)."""
    nodes = server.nodes if isinstance(server, RedisClusterServer) else [server]
    return {node.pid for node in nodes if node.pid is not None}


class ChatTarget:
    """`workers` chat_server processes; with `broker` (an engine name of tests/services.py's
    BROKER_SERVERS: "redis", "redis-cluster", "rabbitmq", "nats", "kafka"), a private broker
    between them, started per run."""

    kind = "chat"

    def __init__(self, label: str, root: Path, *, workers: int = 1, broker: str | None = None,
                 secret: str, env: dict[str, str] | None = None,
                 database: str = "sqlite") -> None:
        if database not in DATABASES:
            raise ValueError(f"unknown database {database!r} (use {', '.join(DATABASES)})")
        self.label = label
        self.root = root
        self.workers = workers
        self.broker = broker
        self.database = database
        self.secret = secret
        self.extra_env = env or {}
        self._seeds: dict[Layout, Path] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._broker_teardown = contextlib.ExitStack()
        self._run = 0
        self._parents: set[int] = set()
        self.restart_each_run = True
        self.run_dir: Path | None = None

    def room_ids(self, layout: Layout) -> list[int]:
        return list(range(1, layout.rooms + 1))

    def _seed_file(self, layout: Layout) -> Path:
        seed = self._seeds.get(layout)
        if seed is None:
            seed = Path(tempfile.mkdtemp(prefix="seed-", dir=self.root)) / "chat.db"
            asyncio.run(_seed(f"sqlite:///{seed}", layout))
            self._seeds[layout] = seed
        return seed

    def _database(self, layout: Layout, run_dir: Path, pgids: set[int]) -> str:
        """A fresh database holding the layout's rooms, private to this run: its URL."""
        if self.database == "sqlite":
            db = run_dir / "chat.db"
            shutil.copyfile(self._seed_file(layout), db)
            return f"sqlite:///{db}"
        server = DurablePostgres(run_dir)
        self._broker_teardown.callback(server.cleanup)
        server.start()
        if server.pid is not None:
            # pg_ctl gives the postmaster a session of its own, and each backend starts another.
            pgids.add(server.pid)
            self._parents.add(server.pid)
        asyncio.run(_seed(server.url, layout))
        return server.url

    def start(self, layout: Layout) -> Servers:
        self._run += 1
        run_dir = self.run_dir = self.root / f"{self.label.replace(' ', '_')}-run{self._run}"
        run_dir.mkdir(parents=True)
        pgids: set[int] = set()
        self._parents.clear()
        try:
            database_url = self._database(layout, run_dir, pgids)
        except BaseException:
            self.stop()
            raise
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CHAT_JWT_SECRET": self.secret,
            "CHAT_FRAMES_PER_S": "0",
            "CHAT_MAX_CONNECTIONS_PER_IP": "0",
            "CHAT_MAX_CONNECTIONS_PER_USER": "0",
            "CHAT_SHUTDOWN_GRACE_S": "2",
            "LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        env.pop("REDIS_URL", None)
        env.pop("CHAT_BROKER_URL", None)
        brokers: set[int] = set()
        if self.broker is not None:
            server = start_broker(self.broker, run_dir / "broker", self._broker_teardown)
            brokers = broker_pgids(server)
            pgids |= brokers
            env["CHAT_BROKER_URL"] = server.url
        ports = [free_port() for _ in range(self.workers)]
        for index, port in enumerate(ports):
            with (run_dir / f"worker{index}.log").open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "chat_server", "serve", "--port", str(port)],
                    env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            self._procs.append(proc)
            pgids.add(proc.pid)
        try:
            for index, port in enumerate(ports):
                self._wait_ready(index, port)
        except BaseException:
            self.stop()
            raise
        urls = [f"ws://127.0.0.1:{port}/ws" for port in ports]
        return Servers(urls, pgids, worker_pids=[proc.pid for proc in self._procs],
                       broker_pgids=brokers, parents=frozenset(self._parents))

    def _wait_ready(self, index: int, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            proc = self._procs[index]
            if proc.poll() is not None:
                raise RuntimeError(f"{self.label} worker {index} exited: {self.log_tail(index)}")
            url = f"http://127.0.0.1:{port}/readyz"
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(
                url, timeout=1
            ) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} worker {index} not ready: {self.log_tail(index)}")

    def log_tail(self, index: int = 0, lines: int = 20) -> str:
        if self.run_dir is None:
            return ""
        try:
            text = (self.run_dir / f"worker{index}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(5)
        self._procs.clear()
        self._broker_teardown.close()

    def close(self) -> None:
        self.stop()


# --- the floor: a bare relay on chat_server's stack ----------------------------------------------


class RelayTarget:
    """`benchmarks.relay_server`, one process per run: what the WebSocket and socket I/O alone
    cost in Python. It speaks the loadgen's RabbitMQ dialect (topics, no token)."""

    kind = "rabbit"

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root
        self.restart_each_run = True
        self._proc: subprocess.Popen[bytes] | None = None

    def room_ids(self, layout: Layout) -> list[int]:
        return list(range(1, layout.rooms + 1))

    def start(self, layout: Layout) -> Servers:
        self.stop()
        port = free_port()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.relay_server", "--port", str(port)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self._proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=1
            ):
                return Servers([f"ws://127.0.0.1:{port}/ws"], {self._proc.pid})
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.label} never opened its port")

    def stop(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc.pid)
            self._proc.wait(5)
            self._proc = None

    def close(self) -> None:
        self.stop()


# --- RabbitMQ ------------------------------------------------------------------------------------


class RabbitTarget:
    """A private RabbitMQ node with Web-STOMP; kept for a scenario's repetitions unless
    `restart_each_run` (memory per connection wants a fresh node every time)."""

    kind = "rabbit"

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root
        self.restart_each_run = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        self._node = ""
        self._ws_port = 0
        self._starts = 0

    @staticmethod
    def available() -> bool:
        return (RABBIT_BIN / "rabbitmq-server").exists() and any(
            Path("/usr/lib/rabbitmq/lib").glob("*/plugins/rabbitmq_web_stomp-*")
        )

    def room_ids(self, layout: Layout) -> list[int]:
        return list(range(1, layout.rooms + 1))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _boot(self) -> None:
        self._starts += 1
        home = self.root / f"rabbit{self._starts}"
        home.mkdir(parents=True)
        self._node = f"bench-{uuid.uuid4().hex[:10]}@localhost"
        self._ws_port = free_port()
        amqp, dist, stomp = free_port(), free_port(), free_port()
        (home / "enabled_plugins").write_text("[rabbitmq_web_stomp].\n")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{amqp}\n"
            f"stomp.listeners.tcp.1 = 127.0.0.1:{stomp}\n"
            f"web_stomp.tcp.port = {self._ws_port}\n"
            "web_stomp.tcp.ip = 127.0.0.1\n"
            "loopback_users = none\n"
        )
        self._env = {
            **os.environ,
            "HOME": str(home),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self._node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(amqp),
            "RABBITMQ_DIST_PORT": str(dist),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
            # Idle schedulers sleep instead of spinning: otherwise the VM's busy-waiting counts
            # as CPU time and RabbitMQ's deliveries per CPU-second would look worse than they are.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }
        with (home / "server.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")], env=self._env, cwd=home,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._await_startup()
            self._wait_port()
        except BaseException:
            self._halt()
            raise

    def _await_startup(self) -> None:
        """`await_startup` fails at once while the node is not reachable yet: ask again."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self._proc.returncode}")
            try:
                self._ctl("await_startup", "--timeout", "10", timeout=30)
                return
            except subprocess.CalledProcessError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ did not start: {exc.stderr!r}") from exc
                time.sleep(0.5)

    def _ctl(self, *args: str, timeout: float = START_TIMEOUT_S + 10) -> None:
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self._node, *args], env=self._env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=timeout, check=True,
        )

    def _wait_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self._ws_port), timeout=1
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("RabbitMQ Web-STOMP port never opened")

    def start(self, layout: Layout) -> Servers:
        if self.restart_each_run and self.running:
            self._halt()
        if not self.running:
            self._boot()
        assert self._proc is not None
        return Servers([f"ws://127.0.0.1:{self._ws_port}/ws"], {self._proc.pid})

    def stop(self) -> None:
        if self.restart_each_run:
            self._halt()

    def _halt(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._ctl("stop", timeout=30)
        if not _wait_gone(self._proc.pid, 15):
            _kill_group(self._proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        self._proc = None

    def close(self) -> None:
        self._halt()
