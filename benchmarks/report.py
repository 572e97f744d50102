"""Turning runs into figures: merging shards, medians over repetitions, the table, PASS/FAIL and
the profile summary."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Histogram

#: Correctness counters: the worst repetition is reported, never a median.
WORST_OF = ("lost", "duplicated", "out_of_order", "errors", "setup_failures", "unreceipted")


@dataclass
class Row:
    target: str
    scenario: str
    figures: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    #: Said beside the figures, not a failure (e.g. the fd limit capped the connections).
    remarks: list[str] = field(default_factory=list)

    def get(self, key: str) -> float:
        return self.figures.get(key, math.nan)


def merge_shards(shards: list[dict[str, Any]]) -> dict[str, float]:
    """One run's loadgen figures, from the JSON results of its shards."""
    hist = Histogram()
    room_sent: Counter[str] = Counter()
    room_subs: Counter[str] = Counter()
    room_unique: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    summed = ("subscribers", "publishers", "slow_subscribers", "setup_failures", "sent",
              "receipted", "unreceipted", "received", "duplicated", "out_of_order", "errors",
              "closed_early", "slow_cut", "cpu_s", "connect_rate", "typing_sent", "events")
    for shard in shards:
        hist.merge(Histogram.from_json(shard["hist"]))
        room_sent.update(shard["room_sent"])
        room_subs.update(shard["room_subs"])
        room_unique.update(shard["room_unique"])
        for key in summed:
            sums[key] += shard.get(key, 0)
    lost = sum(
        max(0, room_subs[room] * room_sent[room] - room_unique[room]) for room in room_subs
    )
    go_ns = min(shard["go_ns"] for shard in shards)
    last_ns = max(shard["last_delivery_ns"] for shard in shards)
    wall = max(shard["wall_s"] for shard in shards)
    figures: dict[str, float] = {key: float(value) for key, value in sums.items()}
    figures.update(
        lost=float(lost),
        p50=hist.percentile_ms(50),
        p90=hist.percentile_ms(90),
        p99=hist.percentile_ms(99),
        max=hist.max_us / 1000 if hist.total else math.nan,
        wall_s=wall,
        delivery_span_s=max(0.0, (last_ns - go_ns) / 1e9),
        setup_s=max(shard["setup_s"] for shard in shards),
    )
    return figures


def combine(target: str, scenario: str, runs: list[dict[str, float]]) -> Row:
    """Medians over repetitions, with their spread (`KEY_min`, `KEY_max`); the worst repetition
    for correctness counters."""
    row = Row(target, scenario, runs=len(runs))
    keys = sorted({key for run in runs for key in run})
    for key in keys:
        values = [run[key] for run in runs if key in run and not math.isnan(run[key])]
        if not values:
            row.figures[key] = math.nan
        elif key in WORST_OF:
            row.figures[key] = max(values)
        else:
            row.figures[key] = statistics.median(values)
            row.figures[f"{key}_min"] = min(values)
            row.figures[f"{key}_max"] = max(values)
    return row


# --- the table -----------------------------------------------------------------------------------

COLUMNS: list[tuple[str, str, str]] = [
    # header, figure key, format
    ("sent/s", "sent_per_s", "{:.0f}"),
    ("deliv/s", "delivered_per_s", "{:.0f}"),
    ("p50ms", "p50", "{:.1f}"),
    ("p90ms", "p90", "{:.1f}"),
    ("p99ms", "p99", "{:.1f}"),
    ("max ms", "max", "{:.0f}"),
    ("lost", "lost", "{:.0f}"),
    ("dup", "duplicated", "{:.0f}"),
    ("ooo", "out_of_order", "{:.0f}"),
    ("srv CPU s", "server_cpu_s", "{:.1f}"),
    ("deliv/CPU-s", "deliveries_per_cpu_s", "{:.0f}"),
    ("RSS MiB", "rss_peak_mib", "{:.0f}"),
    ("KiB/conn", "kib_per_conn", "{:.1f}"),
    ("idle CPU%", "idle_cpu_pct", "{:.1f}"),
    ("conn/s", "connect_rate", "{:.0f}"),
    ("gen CPU%", "gen_cpu_pct", "{:.0f}"),
]


#: The main figures: with several runs their cell shows the spread too, `median (min-max)`.
SPREAD = frozenset({"delivered_per_s", "p50", "p99", "deliveries_per_cpu_s", "kib_per_conn",
                    "idle_cpu_pct"})


def _cell(row: Row, key: str, fmt: str) -> str:
    value = row.get(key)
    if math.isnan(value):
        return "-"
    text = fmt.format(value)
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    if row.runs > 1 and key in SPREAD and not (math.isnan(low) or math.isnan(high)):
        text += f" ({fmt.format(low)}-{fmt.format(high)})"
    return text


def table(rows: list[Row]) -> str:
    headers = ["target", "scenario", *(header for header, _, _ in COLUMNS), "notes"]
    body = []
    for row in rows:
        notes = list(row.remarks)
        if row.get("slow_subscribers") > 0:
            notes.append(f"slow {row.get('slow_subscribers'):.0f}, cut {row.get('slow_cut'):.0f}")
        if row.get("typing_sent") > 0:
            notes.append(f"typing SENDs {row.get('typing_sent'):.0f}, "
                         f"room events {row.get('events'):.0f}")
        if row.get("broker_cpu_s") > 0:
            notes.append(f"of the srv CPU, the broker's {row.get('broker_cpu_s'):.1f} s")
        for key in ("errors", "setup_failures", "unreceipted"):
            if row.get(key) > 0:
                notes.append(f"{key} {row.get(key):.0f}")
        notes.extend(row.failures)
        body.append([row.target, row.scenario,
                     *(_cell(row, key, fmt) for _, key, fmt in COLUMNS), "; ".join(notes)])
    widths = [max(len(str(line[i])) for line in [headers, *body]) for i in range(len(headers))]
    lines = []
    for number, line in enumerate([headers, *body]):
        cells = [str(cell).ljust(widths[i]) if i in (0, 1, len(line) - 1)
                 else str(cell).rjust(widths[i]) for i, cell in enumerate(line)]
        lines.append("| " + " | ".join(cells) + " |")
        if number == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --- PASS / FAIL ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    target: str
    passed: bool | None  # None: not measured in this run
    detail: str


def _find(rows: list[Row], target: str, scenario: str) -> Row | None:
    return next((r for r in rows if r.target == target and r.scenario == scenario), None)


def _clean(row: Row) -> bool:
    return all(row.get(k) == 0 for k in ("lost", "duplicated", "out_of_order")) and not row.failures


def verdicts(rows: list[Row], chat_labels: dict[str, str], rabbit: str,
             outbox_bytes: int) -> list[Verdict]:
    """`chat_labels`: scenario -> the chat_server target judged there (b, d: the Redis one)."""
    found: list[Verdict] = []
    a = _find(rows, chat_labels.get("a", ""), "a")
    if a is not None:
        ra = _find(rows, rabbit, "a")
        ratio = a.get("deliveries_per_cpu_s") / ra.get("deliveries_per_cpu_s") if ra else math.nan
        ok = (ratio >= 2 if not math.isnan(ratio) else None, a.get("p99") <= 100, _clean(a))
        passed = None if ok[0] is None else all(ok)
        found.append(Verdict("(a) fan-out", passed,
                             f"deliveries/CPU-s {ratio:.2f}x RabbitMQ (>= 2), p99 "
                             f"{a.get('p99'):.1f} ms (<= 100), lost/dup/ooo "
                             f"{a.get('lost'):.0f}/{a.get('duplicated'):.0f}/"
                             f"{a.get('out_of_order'):.0f}"))
    for row in rows:
        if row.scenario == "b" and row.target.startswith("chat"):
            ok_b = row.get("p99") <= 20 and _clean(row) and row.get("sent_per_s") > 0
            found.append(Verdict(f"(b) many rooms, {row.target}", ok_b,
                                 f"p99 {row.get('p99'):.1f} ms (<= 20) at "
                                 f"{row.get('sent_per_s'):.0f} msg/s sent, lost/dup/ooo "
                                 f"{row.get('lost'):.0f}/{row.get('duplicated'):.0f}/"
                                 f"{row.get('out_of_order'):.0f}"))
    c = _find(rows, chat_labels.get("c", ""), "c")
    if c is not None:
        rc = _find(rows, rabbit, "c")
        versus = f" (RabbitMQ {rc.get('kib_per_conn'):.1f})" if rc else ""
        # Every connection held to the end: none refused, sent an ERROR or closed early.
        held = all(c.get(key) == 0 for key in ("setup_failures", "errors", "closed_early"))
        found.append(Verdict("(c) idle", c.get("kib_per_conn") <= 25 and not c.failures
                             and held,
                             f"{c.get('kib_per_conn'):.1f} KiB per connection (<= 25){versus}, "
                             f"{c.get('connect_rate'):.0f} connections/s"))
    d = _find(rows, chat_labels.get("d", ""), "d")
    b = _find(rows, chat_labels.get("d", ""), "b")
    if d is not None:
        limit_mib = math.nan
        if b is not None:
            limit_mib = (b.get("rss_peak_mib") + 64
                         + d.get("slow_subscribers") * 2 * outbox_bytes / 2**20)
        p99_ok = b is not None and d.get("p99") <= 2 * b.get("p99")
        mem_ok = d.get("rss_peak_mib") <= limit_mib
        found.append(Verdict("(d) slow consumers", (p99_ok and mem_ok and _clean(d))
                             if b is not None else None,
                             f"fast subscribers' p99 {d.get('p99'):.1f} ms (<= 2 x "
                             f"{b.get('p99') if b else math.nan:.1f}), peak RSS "
                             f"{d.get('rss_peak_mib'):.0f} MiB (<= {limit_mib:.0f}), slow "
                             f"subscribers cut {d.get('slow_cut'):.0f}/"
                             f"{d.get('slow_subscribers'):.0f}"))
    return found


def format_verdicts(found: list[Verdict]) -> str:
    lines = []
    for verdict in found:
        word = "n/a " if verdict.passed is None else ("PASS" if verdict.passed else "FAIL")
        lines.append(f"{word}  {verdict.target}: {verdict.detail}")
    return "\n".join(lines)


# --- profiles (py-spy raw / collapsed stacks) ----------------------------------------------------


def _function(frame: str) -> str:
    """`name (path/file.py:123)` -> `name (file.py)`, the line dropped so a function adds up."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[parts.index("chat_server"):]) if "chat_server" in parts else (
        "/".join(parts[-2:]))
    return f"{name} ({short})"


def _aiosqlite_wait_line() -> int | None:
    """The line where aiosqlite's worker thread waits for the next call (idle, not CPU)."""
    try:
        import inspect

        from aiosqlite import core

        lines, first = inspect.getsourcelines(core._connection_worker_thread)
    except (ImportError, OSError, TypeError, AttributeError):
        return None
    return next((first + i for i, line in enumerate(lines) if "tx.get()" in line), None)


def _waiting(leaf: str, wait_line: int | None) -> str | None:
    """What a sample is waiting on, if its innermost Python frame is a known waiting point.

    py-spy cannot see inside C: a sample whose innermost frame is the loop runner is in uvloop
    (mostly epoll_wait, some socket I/O it does in C), and aiosqlite's thread blocked on its
    queue looks busy too; both are reported apart from the code's own CPU time.
    """
    name = leaf.partition(" (")[0]
    # chat_server's own runner (web/serving.py's `run`) calls uvloop's run_until_complete.
    if name in ("run_app", "run_forever", "Runner.run", "run_until_complete") or (
        name == "run" and "web/serving.py" in leaf
    ):
        return "event loop in C (uvloop: waiting in epoll, or its own socket I/O)"
    if name == "_connection_worker_thread" and wait_line is not None:
        line = leaf.rstrip(")").rsplit(":", 1)[-1]
        if line.isdigit() and int(line) == wait_line:
            return "aiosqlite thread waiting for work"
    return None


def summarize_profile(path: Path, top: int = 15) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    total = 0
    wait_line = _aiosqlite_wait_line()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        raw = stack.split(";")
        waiting = _waiting(raw[-1], wait_line)
        if waiting is not None:
            waits[waiting] += count
            continue
        frames = [_function(frame) for frame in raw]
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return f"(no samples in {path})"
    busy = total - sum(waits.values())
    lines = [f"{total} samples in {path}; {100 * busy / total:.0f}% in Python code or the C it "
             "calls, the rest waiting:"]
    lines += [f"    {100 * n / total:5.1f}%  [{name}]" for name, n in waits.most_common()]
    lines.append("  self time (innermost Python frame), % of all samples:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive, chat_server code only, % of all samples:")
    ours = [(name, n) for name, n in inclusive.most_common()
            if "chat_server/" in name and "__main__" not in name]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in ours[:top]]
    return "\n".join(lines)
