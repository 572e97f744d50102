"""Garbage-collector settings for a long-running server process.

A worker holding thousands of connections has a large heap, and CPython's full collections
walk all of it: pauses of 50-250 ms every few seconds under load, straight into the latency
of every message in flight (measured with scenario b of benchmarks/run.py). Two changes:

- what start-up allocated (modules, compiled statements: never garbage) is frozen out of
  the collector's sight, so a full collection walks only what came after;
- the youngest generation may grow to `gen0_threshold` objects before it is collected, so
  most short-lived objects (a frame, its futures) die by reference count before any
  collection can promote them; far fewer reach the old generation and trigger full
  collections there. Each young collection then takes a few milliseconds at most.

Python's own rule (a full collection once the old generation grew by a quarter) is kept: cyclic
garbage left by closed connections is still collected.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def tune_gc(gen0_threshold: int) -> None:
    """Call once the process is ready to serve; 0 leaves Python's collector as it is."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1_threshold, gen2_threshold = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1_threshold, gen2_threshold)
    log.info(
        "garbage collector tuned: %d start-up objects frozen, young generation up to %d",
        gc.get_freeze_count(), gen0_threshold,
    )
