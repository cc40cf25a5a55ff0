"""Checking a trace against reading it, measured in the same run.

    python benchmarks/bench_check.py [--events 1000000] [--repeat 3]

Writes a synthetic trace with correct bindings of about ``--events`` records (so every checker does its full
work and finds nothing), then times ``read_trace`` and ``check_trace`` on it (best of ``--repeat``).
Target (issue 5): checking costs under 2x the read time.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

from tracesim.check import check_trace
from tracesim.format import read_trace, write_trace
from tracesim.format.synthetic import synthetic_trace

_RECORDS_PER_WAVE = 1177  # synthetic_trace with groups_per_wave=16, group_size=4 (measured)


def best_of(repeat: int, fn):
    best, result = None, None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    waves = max(1, args.events // _RECORDS_PER_WAVE)
    trace = synthetic_trace(waves=waves, groups_per_wave=16, seed=1)
    path = os.path.join(tempfile.mkdtemp(), "bench-check.msgpack")
    write_trace(path, trace)
    del trace
    n_bytes = os.path.getsize(path)

    t_read, trace = best_of(args.repeat, lambda: read_trace(path))
    t_check, report = best_of(args.repeat, lambda: check_trace(trace))
    assert report.violations == [] and not report.not_checkable, "the synthetic trace must check clean"
    n = len(trace.records)
    print(f"trace            {n:,} records, {n_bytes / 1e6:.1f} MB, {len(report.checked)} invariants checked")
    print(f"read_trace       {t_read:.2f} s  ({n / t_read / 1e6:.2f} M records/s)")
    print(f"check_trace      {t_check:.2f} s  ({n / t_check / 1e6:.2f} M records/s)")
    print(f"check / read     {t_check / t_read:.2f}x  (target < 2x)")
    print(f"(read + check) / read  {(t_read + t_check) / t_read:.2f}x")
    os.remove(path)


if __name__ == "__main__":
    main()
