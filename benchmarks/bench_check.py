"""Checking a trace against reading it, measured in the same run.

    python benchmarks/bench_check.py [--events 1000000] [--repeat 3]

Writes a synthetic trace with correct bindings of about ``--events`` records (so every checker does its full
work and finds nothing), then times ``read_trace`` and ``check_trace`` on it (best of ``--repeat``).
Target (issue 5): checking costs under 2x the read time (set when reading cost ~5x what it costs now: the
ratio rose because reading got faster; compare the absolute times).

Then (issue 15) ``tracesim check`` as a user runs it, in a fresh process: wall time and peak RSS, with the
bulk reader and with the previous read path (every frame unpacked into one list, then each record built in
Python), patched in for that run only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
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


_CLI = r"""
import json, sys, time
from tracesim.cli.main import main
if sys.argv[2] == "previous":
    import tracesim.format.trace as T
    from tracesim.format import TraceReader, codec
    from tracesim.gcpause import cyclic_gc_paused

    def previous_read(path, progress=None):  # the read_trace before issue 15
        with cyclic_gc_paused(), TraceReader(path) as reader:
            frames = reader.raw_frames()
            decoded = [codec.decode_frame(f) for f in frames]
        return T.Trace(reader.header, [r for r, _p in decoded], [], str(path))
    T.read_trace = previous_read
t = time.perf_counter()
code = main(["check", sys.argv[1], "--json"])
wall = time.perf_counter() - t
# VmHWM: this process image's peak RSS (ru_maxrss would carry the forking parent's over exec)
hwm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps({"code": code, "wall_s": wall, "peak_rss_mb": hwm_kb / 1024}), file=sys.stderr)
"""


def cli_check(path: str, reader: str) -> dict:
    """``tracesim check PATH`` in a fresh process with the ``reader`` ("bulk" or "previous")."""
    run = subprocess.run([sys.executable, "-c", _CLI, path, reader], capture_output=True, text=True, check=True)
    return json.loads(run.stderr.strip().splitlines()[-1])


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
    assert report.violations == [], "the synthetic trace must check clean"  # (token ids: not recorded there)
    n = len(trace.records)
    print(f"trace            {n:,} records, {n_bytes / 1e6:.1f} MB, {len(report.checked)} invariants checked")
    print(f"read_trace       {t_read:.2f} s  ({n / t_read / 1e6:.2f} M records/s)")
    print(f"check_trace      {t_check:.2f} s  ({n / t_check / 1e6:.2f} M records/s)")
    print(f"check / read     {t_check / t_read:.2f}x  (target < 2x)")
    print(f"(read + check) / read  {(t_read + t_check) / t_read:.2f}x")
    del trace, report
    print("tracesim check, fresh process (wall s, peak RSS MB):")
    runs = {reader: [cli_check(path, reader) for _ in range(args.repeat)] for reader in ("previous", "bulk")}
    for reader, results in runs.items():
        assert all(r["code"] == 0 for r in results)
        print(f"  {reader:<9} {min(r['wall_s'] for r in results):6.2f} s  {min(r['peak_rss_mb'] for r in results):7.0f} MB")
    prev, bulk = (min(r["wall_s"] for r in runs[k]) for k in ("previous", "bulk"))
    prss, brss = (min(r["peak_rss_mb"] for r in runs[k]) for k in ("previous", "bulk"))
    print(f"  bulk / previous: time {bulk / prev:.2f}x, peak RSS {brss / prss:.2f}x")
    os.remove(path)


if __name__ == "__main__":
    main()
