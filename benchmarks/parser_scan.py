"""How long the STOMP parser takes to read one large frame fed one byte at a time: if scanning
were not incremental (each byte re-scanning the buffer) this would grow with the square of the
frame's size.

    python -m benchmarks.parser_scan [--runs 5]

Prints the median and spread over the runs, next to the bound that used to sit in
tests/stomp/test_parser.py (under 5 s).
"""

from __future__ import annotations

import time

from benchmarks.microbench import figure, runs_argument
from chat_server.stomp.parser import FrameParser, ParserLimits

BODY_BYTES = 200_000
BOUND_S = 5.0


def one_run() -> float:
    """Seconds to parse one ~280 KB frame fed byte by byte."""
    limits = ParserLimits(max_frame_bytes=300_000, max_body_bytes=BODY_BYTES)
    header = b"x-big:" + b"h" * 8000 + b"\n"
    data = b"SEND\n" + header * 10 + b"\n" + b"b" * BODY_BYTES + b"\0"
    started = time.perf_counter()
    parser = FrameParser(limits)
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
    (frame,) = list(parser.frames())
    elapsed = time.perf_counter() - started
    if len(frame.body) != BODY_BYTES:
        raise RuntimeError(f"parsed a body of {len(frame.body)} bytes, not {BODY_BYTES}")
    return elapsed


def main(runs: int) -> None:
    times = [one_run() for _ in range(runs)]
    print("[parser] one frame of 280 KB (10 headers of 8 KB, 200 KB body), fed one byte at a time")
    print("  " + figure("parse time", times, "s", 3) + f"  bound < {BOUND_S:.0f} s")


if __name__ == "__main__":
    main(runs_argument(__doc__ or "", default=5).runs)
