"""Benchmark B30: classifying a run from its log costs the same for a 1 KiB and a 1 GiB log.

Writes a 1 KiB log and a 1 GiB log with the same error at the end (and a 1 MiB one: the
first size whose tail fills the whole read window), times
``tasks.classify.classify_log_tail`` on each (median of several runs) and prints both.
The big log is sparse by default (a hole, then 1 MiB of log lines and the error), which
is quick to make; ``--dense`` writes all 1 GiB of real lines. Both files are deleted
afterwards.

    .venv/bin/python benchmarks/classify_log_tail.py [--runs 21] [--dense]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from tasks.classify import LOG_TAIL_BYTES, FailureKind, classify_log_tail

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
LINE = b"developer | running tests: 214 passed, reading src/app.py, writing the patch\n"
ERROR = b"API Error: Request rejected (429) \xc2\xb7 Number of request tokens has exceeded your rate limit\n"


def write_log(path: Path, size: int, dense: bool) -> None:
    """A log of exactly ``size`` bytes: log lines, then ERROR as its last line."""
    body = size - len(ERROR)
    with open(path, "wb") as handle:
        if dense:
            chunk = LINE * (MIB // len(LINE))
            while handle.tell() + len(chunk) <= body:
                handle.write(chunk)
        else:
            handle.seek(max(0, body - MIB))
        rest = body - handle.tell()
        handle.write((LINE * (rest // len(LINE) + 1))[-rest:] if rest else b"")
        handle.write(ERROR)
    assert path.stat().st_size == size


def time_classify(path: Path, runs: int) -> float:
    """Median seconds of ``classify_log_tail`` on ``path``."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        failure = classify_log_tail(path, exit_code=1)
        timings.append(time.perf_counter() - start)
        assert failure is not None and failure.kind is FailureKind.transient and failure.reason == "rate_limit"
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--dense", action="store_true", help="write the 1 GiB log in full instead of sparse")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
          f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")
    print(f"tail read: {LOG_TAIL_BYTES} bytes, runs: {args.runs} (median)")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as scratch:
        for label, size in (("1 KiB", KIB), ("1 MiB", MIB), ("1 GiB", GIB)):
            path = Path(scratch) / f"{label.replace(' ', '')}.log"
            start = time.perf_counter()
            write_log(path, size, args.dense and size == GIB)
            made = time.perf_counter() - start
            results[label] = time_classify(path, args.runs)
            kind = "dense" if args.dense and size == GIB else ("sparse" if size == GIB else "dense")
            print(f"{label} log ({kind}, written in {made:.2f} s): classify_log_tail median "
                  f"{results[label] * 1e3:.3f} ms")
            path.unlink()
    print(f"ratio 1 GiB / 1 MiB: {results['1 GiB'] / results['1 MiB']:.2f}, "
          f"1 GiB / 1 KiB: {results['1 GiB'] / results['1 KiB']:.2f}")


if __name__ == "__main__":
    main()
