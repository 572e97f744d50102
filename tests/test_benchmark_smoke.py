"""The benchmark's smoke run (`python -m benchmarks.run --quick`), so the benchmark cannot rot.

It checks that every scenario runs end to end against chat_server and prints its table, and that
nothing was lost, duplicated or reordered; never a performance figure (those are the
benchmark's own PASS/FAIL, on a quiet machine).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.services import REPO_ROOT, require_binary

TIMEOUT_S = 120


def test_quick_benchmark_runs_every_scenario_without_loss(tmp_path: Path) -> None:
    require_binary("redis-server")  # scenarios b and d run two workers behind Redis
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| target" in done.stdout and "deliv/CPU-s" in done.stdout, done.stdout
    report = json.loads(out.read_text())
    rows = {row["scenario"]: row for row in report["rows"]}
    assert set(rows) == {"a", "b", "c", "d"}, report["rows"]
    for name in ("a", "b", "d"):
        row = rows[name]
        assert not row["failures"], row
        assert row["sent"] > 0 and row["received"] > 0, row
        assert (row["lost"], row["duplicated"], row["out_of_order"]) == (0, 0, 0), row
        assert row["setup_failures"] == 0 and row["errors"] == 0, row
        assert not math.isnan(row["p99"]), row
    idle = rows["c"]
    assert not idle["failures"] and idle["setup_failures"] == 0, idle
    assert idle["subscribers"] > 0 and idle["kib_per_conn"] > 0, idle


def test_quick_typing_scenario_runs_without_loss(tmp_path: Path) -> None:
    """Scenario e (b with a tenth of the clients typing every second), in its short form."""
    require_binary("redis-server")
    out = tmp_path / "bench-e.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--scenarios", "e",
         "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(out.read_text())["rows"]
    assert row["scenario"] == "e" and not row["failures"], row
    assert row["typing_sent"] > 0 and row["events"] > 0, row
    assert (row["lost"], row["duplicated"], row["out_of_order"]) == (0, 0, 0), row
    assert row["setup_failures"] == 0 and row["errors"] == 0, row


def test_table_shows_the_spread_of_several_runs() -> None:
    from benchmarks.report import combine, table

    runs = [{"deliveries_per_cpu_s": value, "p99": 10.0, "lost": lost}
            for value, lost in ((9000.0, 0.0), (10000.0, 2.0), (12000.0, 0.0))]
    row = combine("chat_server", "b", runs)
    text = table([row])
    assert "10000 (9000-12000)" in text, text
    assert "10.0 (10.0-10.0)" in text, text  # p99, a main figure
    assert row.get("lost") == 2  # a correctness counter: the worst run, no spread
    single = table([combine("chat_server", "b", runs[:1])])
    assert "9000" in single and "(9000-9000)" not in single, single


def test_idle_connections_past_the_fd_limit_are_capped_and_said_so() -> None:
    from benchmarks.run import FD_RESERVE, FULL, idle_at_scale

    capped = idle_at_scale(FULL["c"], 100_000, fd_limit=20_000, loadgen_procs=1)
    assert capped.layout.rooms == 20_000 - FD_RESERVE
    assert "capped by the fd limit" in capped.note and "20000" in capped.note
    assert capped.source_addresses == ("127.0.0.2",)
    assert capped.heartbeat_ms > 0

    roomy = idle_at_scale(FULL["c"], 100_000, fd_limit=1 << 20, loadgen_procs=4)
    assert roomy.layout.rooms == 100_000 and roomy.note == ""
    # Past one address's ephemeral ports, more loopback source addresses.
    assert roomy.source_addresses == ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def test_idle_verdict_fails_when_connections_were_not_held() -> None:
    from benchmarks.report import Row, verdicts

    def idle(**figures: float) -> Row:
        base = {"kib_per_conn": 20.0, "setup_failures": 0.0, "errors": 0.0,
                "closed_early": 0.0, "connect_rate": 100.0}
        return Row("chat_server", "c", {**base, **figures}, runs=1)

    [held] = verdicts([idle()], {"c": "chat_server"}, "rabbitmq", 1)
    assert held.passed is True
    for key in ("errors", "closed_early", "setup_failures"):
        [dropped] = verdicts([idle(**{key: 3.0})], {"c": "chat_server"}, "rabbitmq", 1)
        assert dropped.passed is False, key


async def test_a_subscriber_that_never_subscribed_is_owed_nothing() -> None:
    """Its setup failure is counted as one; its room's messages are not also counted lost."""
    import asyncio

    from benchmarks.loadgen import Histogram, LoadGen, Plan, Subscriber

    plan = Plan(target="chat", urls=["ws://127.0.0.1:1/ws"], room_ids=[1, 2], subs_per_room=1,
                publishers=0, rate=0, window=1, duration_s=1)
    gen = LoadGen(plan)
    failed = Subscriber(0, 0, False, Histogram())
    held = Subscriber(1, 1, False, Histogram())
    held.task = asyncio.create_task(asyncio.sleep(0))
    await held.task
    held.unique = held.received = 3
    for sub in (failed, held):
        gen._collect(sub)
    assert gen.result.room_subs == {"1": 1}
    assert gen.result.room_unique == {"1": 3}


def test_quick_relay_floor_relays_without_loss(tmp_path: Path) -> None:
    """The floor target (`--targets relay`, benchmarks/relay_server.py) speaks enough STOMP for
    the load generator: every SEND reaches every subscriber of its room, in order."""
    out = tmp_path / "bench-relay.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--scenarios", "a,b",
         "--targets", "relay", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["target"], row["scenario"]) for row in rows] == [
        ("python relay (floor)", "a"), ("python relay (floor)", "b")], rows
    for row in rows:
        assert not row["failures"] and row["setup_failures"] == 0 and row["errors"] == 0, row
        assert row["sent"] > 0 and row["received"] > 0, row
        assert (row["lost"], row["duplicated"], row["out_of_order"]) == (0, 0, 0), row
