"""GC tuning for server processes, checked in a child process: freezing objects in the test
process itself would keep every later test's garbage alive."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from chat_server.gctune import tune_gc
before = gc.get_threshold()
tune_gc(int(sys.argv[1]))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def probe(threshold: int) -> dict[str, list[int] | int]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(threshold)],
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, list[int] | int] = json.loads(done.stdout)
    return result


def test_tuning_freezes_start_up_objects_and_widens_the_young_generation() -> None:
    result = probe(10_000)
    before, after = result["before"], result["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert after == [10_000, before[1], before[2]]
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000


def test_zero_leaves_the_collector_alone() -> None:
    result = probe(0)
    assert result["after"] == result["before"]
    assert result["frozen"] == 0
