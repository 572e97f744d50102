"""One command for every scenario, chat_server and RabbitMQ Web-STOMP side by side.

    python -m benchmarks.run [--quick] [--scenarios a,b,c,d,e] [--repeat 3] [--profile]

Scenarios (the issue's):
  a  fan-out: 1 room, 500 subscribers, 1 publisher as fast as a window of 10 unreceipted SENDs
     allows, 10 s
  b  many rooms: 1 000 rooms x 2 subscribers, 50 publishers at 2 000 msg/s in total, 20 s
     (chat_server with 2 workers behind Redis, and with 1 worker and no Redis); then the highest
     rate at which p99 stays under 50 ms (a few steps up)
  c  idle: 5 000 connections, each subscribed to its own room, held 30 s
  d  slow consumers: b, while every tenth subscriber stops reading
  e  typing: b (2 workers behind Redis), while every tenth subscriber sends SEND /app/typing every
     second and the subscribers of their rooms watch the rooms' events (chat_server only; not in
     the default list: `--scenarios e`)

Every run starts its own servers on free ports (chat_server on a fresh copy of a seeded SQLite
database; a private RabbitMQ node) and its own load generator processes, everything on loopback.
Figures are medians over the repetitions (lost, duplicated, out of order: the worst one).
`--quick` is a few-seconds smoke run of chat_server only (the CI test runs it).
`--broker rabbitmq,nats,...` runs (a) and (b) with two workers on each engine named (redis,
redis-cluster, rabbitmq, nats, kafka), each broker private to its run.
`--database postgres` puts every chat_server target on a private PostgreSQL server started per
run (fsync on), its CPU time counted as the server's.
`--idle-connections N` holds N connections in (c) instead of 5 000, with STOMP heart-beats at the
server's default interval, from as many loopback source addresses (127.0.0.2, ...) as the
ephemeral port range needs; it reports RSS per connection and the server's CPU over the hold (%
of one core), and says so when the fd limit (`ulimit -Hn`) caps N.
With `--repeat` above 1, the main figures show `median (min-max)`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Protocol

from benchmarks.loadgen import Plan, raise_fd_limit
from benchmarks.report import (
    Row,
    combine,
    format_verdicts,
    merge_shards,
    summarize_profile,
    table,
    verdicts,
)
from benchmarks.servers import (
    DATABASES,
    REPO_ROOT,
    ChatTarget,
    Layout,
    RabbitTarget,
    RelayTarget,
    Servers,
    cpu_seconds,
    pids_in_groups,
    rss_bytes,
)
from tests.services import BROKER_SERVERS

MiB = 2**20
OUTBOX_BYTES = 524288  # chat_server's default CHAT_OUTBOX_BYTES
SEARCH_RATES = (100, 200, 350, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000)
SEARCH_P99_MS = 50.0
#: Descriptors a process keeps for itself beside its connections (logs, database, broker, ...).
FD_RESERVE = 200
#: Connections per loopback source address: below the default ephemeral range (32768-60999).
PER_SOURCE_ADDRESS = 25_000
#: The heart-beat interval idle clients negotiate at scale: chat_server's CHAT_HEARTBEAT_MS.
IDLE_HEARTBEAT_MS = 10_000


@dataclass(frozen=True)
class Scenario:
    name: str
    layout: Layout
    rate: float
    window: int
    duration_s: float
    slow_fraction: float = 0.0
    typing_fraction: float = 0.0
    idle: bool = False
    quiet_s: float = 1.0
    heartbeat_ms: int = 0
    source_addresses: tuple[str, ...] = ()
    #: Why the scenario holds fewer connections than asked, if it does.
    note: str = ""


FULL = {
    "a": Scenario("a", Layout(1, 500, 1), rate=0, window=10, duration_s=10),
    "b": Scenario("b", Layout(1000, 2, 50), rate=2000, window=10, duration_s=20),
    "c": Scenario("c", Layout(5000, 1, 0), rate=0, window=1, duration_s=30, idle=True),
    "d": Scenario("d", Layout(1000, 2, 50), rate=2000, window=10, duration_s=20,
                  slow_fraction=0.1),
    "e": Scenario("e", Layout(1000, 2, 50), rate=2000, window=10, duration_s=20,
                  typing_fraction=0.1),
}
QUICK = {
    "a": Scenario("a", Layout(1, 20, 1), rate=0, window=10, duration_s=2, quiet_s=0.5),
    "b": Scenario("b", Layout(20, 2, 5), rate=200, window=10, duration_s=2, quiet_s=0.5),
    "c": Scenario("c", Layout(200, 1, 0), rate=0, window=1, duration_s=1, idle=True),
    "d": Scenario("d", Layout(20, 2, 5), rate=200, window=10, duration_s=2, slow_fraction=0.1,
                  quiet_s=0.5),
    "e": Scenario("e", Layout(20, 2, 5), rate=200, window=10, duration_s=3, typing_fraction=0.1,
                  quiet_s=0.5),
}


class Target(Protocol):
    label: str
    kind: str
    restart_each_run: bool

    def room_ids(self, layout: Layout) -> list[int]: ...
    def start(self, layout: Layout) -> Servers: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class RunFailed(Exception):
    pass


# --- one run -------------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.samples: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append(rss_bytes(self.pids))
            self._done.wait(self.interval)

    def finish(self) -> list[int]:
        self._done.set()
        self.join(5)
        self.samples.append(rss_bytes(self.pids))
        return self.samples


class Shard:
    """One load generator process and the tagged lines it prints."""

    def __init__(self, plan: Plan, work: Path) -> None:
        plan_file = work / f"plan{plan.shard}.json"
        plan_file.write_text(json.dumps(asdict(plan)))
        self.stderr_path = work / f"loadgen{plan.shard}.err"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.loadgen", str(plan_file)],
                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True, start_new_session=True,
            )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            if line.startswith("@@"):
                tag, _, payload = line[2:].rstrip("\n").partition(" ")
                self.lines.put((tag, payload))
        self.lines.put(("EOF", ""))

    def wait_for(self, tag: str, deadline: float) -> str:
        while True:
            try:
                got, payload = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RunFailed(f"load generator: no {tag} in time; {self.err_tail()}") from None
            if got == tag:
                return payload
            if got == "EOF":
                self.proc.wait(5)
                raise RunFailed(f"load generator exited ({self.proc.returncode}) before {tag}: "
                                f"{self.err_tail()}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def err_tail(self) -> str:
        try:
            return " | ".join(self.stderr_path.read_text(errors="replace").splitlines()[-6:])
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def _plans(target: Target, scenario: Scenario, servers: Servers, secret: str,
           shards: int) -> list[Plan]:
    layout = scenario.layout
    base = Plan(
        target=target.kind, urls=servers.urls, room_ids=target.room_ids(layout),
        subs_per_room=layout.subs_per_room, publishers=layout.publishers, rate=scenario.rate,
        window=scenario.window, duration_s=scenario.duration_s,
        slow_fraction=scenario.slow_fraction, typing_fraction=scenario.typing_fraction,
        jwt_secret=secret if target.kind == "chat" else None,
        quiet_s=scenario.quiet_s, shards=shards, heartbeat_ms=scenario.heartbeat_ms,
        source_addresses=list(scenario.source_addresses),
        setup_timeout_s=setup_timeout_s(layout, shards),
    )
    return [replace(base, shard=index) for index in range(shards)]


def setup_timeout_s(layout: Layout, shards: int) -> float:
    """Time for one shard to connect and subscribe its share: a busy 2-core machine has managed
    60-150 connections a second (fewer the more are held); allow 25 a second."""
    return max(120.0, layout.rooms * layout.subs_per_room / shards / 25)


def _start_profiler(pid: int | None, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if pid is None or not Path(spy).exists():
        print(f"  (no profile: py-spy not found at {spy})", file=sys.stderr)
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--duration",
         str(max(1, math.ceil(seconds))), "--format", "raw", "--nonblocking", "-o", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _profile_paths(out: Path, workers: int) -> list[Path]:
    """One raw profile per worker: `out` itself for one, `out-w0.txt`, `out-w1.txt`, ... else."""
    if workers <= 1:
        return [out]
    return [out.with_name(f"{out.stem}-w{index}{out.suffix}") for index in range(workers)]


def run_once(target: Target, scenario: Scenario, *, secret: str, work: Path, shards: int,
             profile_to: Path | None = None) -> dict[str, float]:
    servers = target.start(scenario.layout)
    running: list[Shard] = []
    try:
        rss_base = rss_bytes(servers.refresh())
        running = [Shard(plan, work) for plan in _plans(target, scenario, servers, secret, shards)]
        setup_deadline = time.monotonic() + setup_timeout_s(scenario.layout, shards) + 60
        for shard in running:
            shard.wait_for("READY", setup_deadline)
        pids = servers.refresh()
        profilers = [] if profile_to is None else [
            _start_profiler(pid, scenario.duration_s, out) for pid, out in
            zip(servers.worker_pids, _profile_paths(profile_to, len(servers.worker_pids)),
                strict=True)
        ]
        brokers = pids_in_groups(servers.broker_pgids)
        sampler = RssSampler(pids)
        sampler.start()
        cpu0 = cpu_seconds(pids)
        broker0 = cpu_seconds(brokers)
        for shard in running:
            shard.go()
        end_deadline = time.monotonic() + scenario.duration_s + 60
        for shard in running:
            shard.wait_for("LOADEND", end_deadline)
        cpu1 = cpu_seconds(pids)
        broker1 = cpu_seconds(brokers)
        samples = sampler.finish()
        results = [json.loads(shard.wait_for("RESULT", time.monotonic() + 60))
                   for shard in running]
        for profiler in profilers:
            if profiler is None:
                continue
            try:
                profiler.wait(15)
            except subprocess.TimeoutExpired:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(10)
    finally:
        for shard in running:
            shard.kill()
        target.stop()
    said = [text for result in results
            for text in result.get("setup_errors", []) + result.get("error_samples", [])]
    if said:  # what went wrong, in the server's or the client's words
        print(f" [first error: {said[0][:200]!r}]", end="", file=sys.stderr)
    figures = _figures(scenario, merge_shards(results), cpu1 - cpu0, rss_base, samples)
    figures["broker_cpu_s"] = broker1 - broker0 if brokers else math.nan
    return figures


def _figures(scenario: Scenario, merged: dict[str, float], server_cpu: float, rss_base: int,
             samples: list[int]) -> dict[str, float]:
    figures = dict(merged)
    figures["server_cpu_s"] = server_cpu
    figures["rss_base_mib"] = rss_base / MiB
    figures["rss_peak_mib"] = max(samples) / MiB
    figures["gen_cpu_pct"] = 100 * merged["cpu_s"] / max(merged["wall_s"], 1e-9)
    if scenario.idle:
        held = sorted(samples)[len(samples) // 2]
        figures["kib_per_conn"] = (held - rss_base) / 1024 / max(merged["subscribers"], 1)
        # Heart-beats, pings and timers: the server's CPU over the hold, % of one core.
        figures["idle_cpu_pct"] = 100 * server_cpu / max(merged["wall_s"], 1e-9)
        for key in ("p50", "p90", "p99", "max", "lost", "duplicated", "out_of_order"):
            figures[key] = math.nan
        return figures
    figures["connect_rate"] = math.nan
    figures["sent_per_s"] = merged["sent"] / scenario.duration_s
    span = max(scenario.duration_s, merged["delivery_span_s"])
    figures["delivered_per_s"] = merged["received"] / span
    figures["deliveries_per_cpu_s"] = merged["received"] / server_cpu if server_cpu else math.nan
    return figures


# --- the whole benchmark -------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    root: Path
    secret: str
    specs: dict[str, Scenario]
    targets: dict[str, list[Target]]
    profile_dir: Path | None

    def repeat(self, target: Target, scenario: Scenario, repeat: int) -> Row:
        runs: list[dict[str, float]] = []
        failures: list[str] = []
        target.restart_each_run = target.kind == "chat" or scenario.idle
        for rep in range(repeat):
            print(f"  {target.label:<22} {scenario.name:<7} run {rep + 1}/{repeat} ...",
                  end="", flush=True, file=sys.stderr)
            try:
                figures = self._one(target, scenario)
            except (RunFailed, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                failures.append(f"run {rep + 1} failed: {exc}"[:400])
                print(f" FAILED: {exc}", file=sys.stderr)
                continue
            runs.append(figures)
            if scenario.idle:
                print(f" {figures['kib_per_conn']:.1f} KiB per connection, "
                      f"{figures['connect_rate']:.0f} connections/s, idle CPU "
                      f"{figures['idle_cpu_pct']:.1f}% of a core", file=sys.stderr)
            else:
                print(f" p99 {figures['p99']:.1f} ms, {figures['received']:.0f} deliveries",
                      file=sys.stderr)
        row = combine(target.label, scenario.name, runs) if runs else Row(target.label,
                                                                         scenario.name)
        row.failures = failures
        if scenario.note:
            row.remarks.append(scenario.note)
        return row

    def _one(self, target: Target, scenario: Scenario, profile: Path | None = None
             ) -> dict[str, float]:
        work = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))
        return run_once(target, scenario, secret=self.secret, work=work,
                        shards=self.args.loadgen_procs, profile_to=profile)

    def profile(self, target: Target, scenario: Scenario) -> str:
        assert self.profile_dir is not None
        out = self.profile_dir / f"profile-{target.label.replace(' ', '_')}-{scenario.name}.txt"
        print(f"  {target.label:<22} {scenario.name:<7} profiled run ...", file=sys.stderr)
        try:
            self._one(target, scenario, profile=out)
        except (RunFailed, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            return f"profile of {target.label} {scenario.name} failed: {exc}"
        texts = []
        paths = _profile_paths(out, getattr(target, "workers", 1))
        for index, path in enumerate(paths):
            worker = f", worker {index}" if len(paths) > 1 else ""
            if not path.exists():
                texts.append(f"profile of {target.label} {scenario.name}{worker}: py-spy wrote "
                             "nothing")
                continue
            texts.append(f"== {target.label}, scenario {scenario.name}{worker}\n"
                         + summarize_profile(path))
        return "\n\n".join(texts)

    def search(self, target: Target) -> tuple[str, list[Row]]:
        """Rate steps up from 100 msg/s until p99 >= 50 ms, the rate is not reached, or loss."""
        base = self.specs["b"]
        duration = max(2.0, 5.0 * self.args.scale)
        best: float | None = None
        rows: list[Row] = []
        reason = "every step passed"
        for rate in SEARCH_RATES:
            step = replace(base, name=f"b@{rate}", rate=rate, duration_s=duration)
            row = self.repeat(target, step, 1)
            rows.append(row)
            ok = (not row.failures and row.get("p99") < SEARCH_P99_MS
                  and row.get("sent_per_s") >= 0.95 * rate and row.get("lost") == 0)
            if not ok:
                reason = (f"{rate} msg/s: p99 {row.get('p99'):.1f} ms, sent "
                          f"{row.get('sent_per_s'):.0f}/s, lost {row.get('lost'):.0f}")
                break
            best = rate
        text = (f"{target.label}: highest rate with p99 < {SEARCH_P99_MS:.0f} ms: "
                f"{best if best is not None else '< ' + str(SEARCH_RATES[0])} msg/s "
                f"(stopped at {reason})")
        return text, rows


def _scaled(spec: Scenario, scale: float) -> Scenario:
    return replace(spec, duration_s=max(1.0, spec.duration_s * scale))


def idle_at_scale(spec: Scenario, wanted: int, fd_limit: int, loadgen_procs: int) -> Scenario:
    """Scenario (c) with `wanted` connections, as many as the fd limit lets one worker hold.

    The worker holds every connection, so its limit caps N; the load generator's processes
    share them. Past one address's ephemeral ports, connections come from 127.0.0.2, .3, ...
    """
    cap = min(fd_limit - FD_RESERVE, loadgen_procs * (fd_limit - FD_RESERVE))
    held = min(wanted, cap)
    note = ""
    if held < wanted:
        note = (f"{wanted} connections asked, {held} held: capped by the fd limit "
                f"(ulimit -Hn {fd_limit}, {FD_RESERVE} kept for the worker's own files)")
    addresses = tuple(f"127.0.0.{2 + i}" for i in range(math.ceil(held / PER_SOURCE_ADDRESS)))
    return replace(spec, layout=Layout(held, 1, 0), heartbeat_ms=IDLE_HEARTBEAT_MS,
                   source_addresses=addresses, note=note)


def _machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_gib": round(mem_kib / 2**20, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": sys.version.split()[0],
        "fd_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    }


def _targets(args: argparse.Namespace, root: Path, secret: str) -> tuple[dict[str, list[Target]],
                                                                          dict[str, str]]:
    database = args.database
    on = "" if database == "sqlite" else f" {database}"
    chat1 = ChatTarget(f"chat_server{on}", root, secret=secret, database=database)
    has_redis = shutil.which("redis-server") is not None or Path("/usr/sbin/redis-server").exists()
    chat2 = (ChatTarget(f"chat_server 2w+redis{on}", root, workers=2, broker="redis",
                        secret=secret, database=database)
             if has_redis else chat1)
    engines = [e.strip() for e in (args.broker or "").split(",") if e.strip()]
    unknown = sorted(set(engines) - set(BROKER_SERVERS))
    if unknown:
        raise SystemExit(f"--broker: unknown engine(s) {', '.join(unknown)} "
                         f"(use {', '.join(BROKER_SERVERS)})")
    per_engine: list[Target] = [
        ChatTarget(f"chat_server 2w+{engine}{on}", root, workers=2, broker=engine, secret=secret,
                   database=database)
        for engine in engines
    ]
    wanted = set(args.targets.split(","))
    # Measured beside chat_server: RabbitMQ and the bare relay (the floor).
    beside: list[Target] = []
    if not args.quick and "rabbit" in wanted:
        if RabbitTarget.available():
            beside = [RabbitTarget("rabbitmq", root)]
        else:
            print("RabbitMQ with rabbitmq_web_stomp is not installed: chat_server only",
                  file=sys.stderr)
    # The floor: what the same stack costs with nothing of chat_server's own work (--targets relay).
    if "relay" in wanted:
        beside = [*beside, RelayTarget("python relay (floor)", root)]
    chats: dict[str, list[Target]] = {"a": [chat1], "b": [chat2, chat1], "c": [chat1],
                                      "d": [chat2], "e": [chat2]}
    if args.quick:
        chats["b"] = [chat2]
    if per_engine:  # the fan-out and many-rooms scenarios, two workers on each engine
        chats["a"] = [chat1, *per_engine]
        chats["b"] = list(per_engine)
    if "chat" not in wanted:
        chats = {key: [] for key in chats}
    # RabbitMQ has no typing: scenario e is chat_server's alone.
    targets = {key: [*value, *beside] if key != "e" else value for key, value in chats.items()}
    labels = {"a": chat1.label, "c": chat1.label, "d": chat2.label}
    return targets, labels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds, chat_server only, small numbers (the CI smoke run)")
    parser.add_argument("--scenarios", default="a,b,c,d", help="comma list of a, b, c, d, e")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (3; quick: 1)")
    parser.add_argument("--targets", default="chat,rabbit",
                        help="comma list of chat, rabbit, relay (a bare Python STOMP relay: "
                             "the floor)")
    parser.add_argument("--broker", default=None,
                        help="comma list of broker engines for (a) and (b), two workers each: "
                             "redis, redis-cluster, rabbitmq, nats, kafka")
    parser.add_argument("--database", choices=DATABASES, default="sqlite",
                        help="chat_server's database: a SQLite file, or a private PostgreSQL "
                             "server per run")
    parser.add_argument("--idle-connections", type=int, default=None, metavar="N",
                        help="connections held in (c) (5 000; capped by the fd limit)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every duration (e.g. 0.3 for a shorter full run)")
    parser.add_argument("--rate", type=float, default=None,
                        help="override the publish rate of b and d (msg/s in total)")
    parser.add_argument("--no-search", action="store_true", help="skip (b)'s rate search")
    parser.add_argument("--profile", action="store_true",
                        help="one extra run per chat_server scenario under py-spy (not counted)")
    parser.add_argument("--loadgen-procs", type=int, default=1,
                        help="load generator processes (more on a machine with spare cores)")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return parser


def _run_all(bench: Bench, repeat: int) -> tuple[list[Row], list[str], list[str]]:
    args = bench.args
    rows: list[Row] = []
    searches: list[str] = []
    profiles: list[str] = []
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        if name not in bench.specs:
            raise SystemExit(f"unknown scenario {name!r}")
        for target in bench.targets[name]:
            rows.append(bench.repeat(target, bench.specs[name], repeat))
            if args.profile and target.kind == "chat" and name != "c":
                profiles.append(bench.profile(target, bench.specs[name]))
        if name == "b" and not args.quick and not args.no_search:
            for target in bench.targets[name]:
                text, _steps = bench.search(target)
                searches.append(text)
    return rows, searches, profiles


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # SIGTERM as an exception, so the finally below stops the servers and the RabbitMQ node.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    repeat = args.repeat or (1 if args.quick else 3)
    fd_limit = raise_fd_limit()  # the servers we start inherit it
    root = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    secret = secrets.token_urlsafe(32)
    targets, labels = _targets(args, root, secret)
    specs = {name: _scaled(spec, args.scale) for name, spec in (QUICK if args.quick
                                                                 else FULL).items()}
    if args.rate is not None:
        specs.update({name: replace(specs[name], rate=args.rate) for name in ("b", "d")})
    if args.idle_connections is not None:
        specs["c"] = idle_at_scale(specs["c"], args.idle_connections, fd_limit,
                                   args.loadgen_procs)
        if specs["c"].note:
            print(f"(c): {specs['c'].note}", file=sys.stderr)
    profile_dir = None
    if args.profile:
        profile_dir = REPO_ROOT / "benchmarks" / "results"
        profile_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, root, secret, specs, targets, profile_dir)
    machine = _machine()
    started = time.monotonic()
    try:
        rows, searches, profiles = _run_all(bench, repeat)
    finally:
        for group in targets.values():
            for target in group:
                target.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    found = verdicts(rows, labels, "rabbitmq", OUTBOX_BYTES)
    _print(machine, rows, searches, profiles, found, repeat, time.monotonic() - started, args)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "machine": machine, "repeat": repeat, "quick": args.quick,
            "rows": [{"target": r.target, "scenario": r.scenario, "runs": r.runs,
                      "failures": r.failures, "remarks": r.remarks, **r.figures}
                     for r in rows],
            "verdicts": [asdict(v) for v in found], "search": searches,
        }, indent=1, default=str, allow_nan=True))
    failed_runs = any(row.failures for row in rows)
    failed_targets = any(v.passed is False for v in found)
    return 1 if failed_runs or (args.strict and failed_targets) else 0


def _print(machine: dict[str, Any], rows: list[Row], searches: list[str], profiles: list[str],
           found: list[Any], repeat: int, elapsed: float, args: argparse.Namespace) -> None:
    print(f"\nmachine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gib']} GiB RAM, "
          f"load average {' '.join(machine['loadavg'])} at start, "
          f"{' '.join(machine['loadavg_end'])} at the end; Python {machine['python']}; "
          f"fd limit (soft, hard) {tuple(machine['fd_limit'])}")
    print(f"medians of {repeat} run(s) (lost/dup/ooo: the worst run); latencies in ms; "
          f"server CPU s over the load; RSS: peak of all server processes; gen CPU%: the load "
          f"generator, % of one core; {elapsed:.0f} s in all\n")
    print(table(rows))
    if searches:
        print("\n(b) rate search:")
        for text in searches:
            print(f"  {text}")
    if found:
        print("\ntargets:")
        print(format_verdicts(found))
    for text in profiles:
        print("\n" + text)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
