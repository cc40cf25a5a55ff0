"""Trace write and read throughput against raw msgpack packing/unpacking of the same events, in one run.

    python benchmarks/bench_format.py [--waves 60] [--repeat 3]

Targets (issue 2): writing costs at most 1.5x raw packing; reading into columns reaches 1M events/s.
Reading uses the compiled columnizer (tracesim/format/_fastcols.pyx) when it is built; the last line times
the pure-Python reference on the same file.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import msgpack

from tracesim.format import TraceWriter, read_trace
from tracesim.format.columns import compiled_available, read_columns
from tracesim.format.synthetic import synthetic_trace


def _plain(value):
    """The record as plain tuples: what a hand-written msgpack producer would pack."""
    return tuple(_plain(v) for v in value) if isinstance(value, tuple) else value


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trace = synthetic_trace(waves=args.waves, groups_per_wave=8, seed=1)
    records = trace.records
    raw = [(r.KIND, _plain(r)) for r in records]
    n = len(records)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "bench.msgpack")

    def raw_pack():
        packer = msgpack.Packer(autoreset=False)
        for frame in raw:
            packer.pack(frame)
        return packer.bytes()

    def write_append():
        with TraceWriter(path, trace.header) as w:
            for r in records:
                w.append(r)

    def write_extend():  # the recorder's path: a writer thread drains batches of ~1k records
        with TraceWriter(path, trace.header) as w:
            for i in range(0, n, 1024):
                w.extend(records[i:i + 1024])

    blob = raw_pack()

    def raw_unpack():
        unpacker = msgpack.Unpacker(use_list=False, raw=False)
        unpacker.feed(blob)
        for _ in unpacker:
            pass

    t_raw_pack = best_of(args.repeat, raw_pack)
    t_append = best_of(args.repeat, write_append)
    t_write = best_of(args.repeat, write_extend)
    size_mb = os.path.getsize(path) / 1e6
    t_raw_unpack = best_of(args.repeat, raw_unpack)
    t_columns = best_of(args.repeat, lambda: read_columns(path))
    t_records = best_of(args.repeat, lambda: read_trace(path))

    print(f"events: {n:,}  file: {size_mb:.1f} MB  (best of {args.repeat})")
    rows = [
        ("raw msgpack pack", t_raw_pack), ("TraceWriter.extend + close", t_write),
        ("TraceWriter.append + close", t_append),
        ("raw msgpack unpack", t_raw_unpack), ("read_columns", t_columns), ("read_trace (records)", t_records),
    ]
    for name, t in rows:
        print(f"  {name:<28} {t * 1e3:8.1f} ms  {n / t / 1e6:6.2f} M events/s  {size_mb / t:7.1f} MB/s")
    print(f"write (extend) / raw pack = {t_write / t_raw_pack:.2f}x   (target <= 1.5x)")
    print(f"write (append) / raw pack = {t_append / t_raw_pack:.2f}x   (one call per record)")
    print(f"read_columns          = {n / t_columns / 1e6:.2f} M events/s (target >= 1.0)")
    print(f"read_columns / unpack = {t_columns / t_raw_unpack:.2f}x;  read_trace / unpack = "
          f"{t_records / t_raw_unpack:.2f}x")

    # The pure-Python reference columnizer (the fallback where the compiled one is not built), same file.
    os.environ["TRACESIM_PURE_PYTHON"] = "1"
    t_pure = best_of(args.repeat, lambda: read_columns(path))
    del os.environ["TRACESIM_PURE_PYTHON"]
    print(f"read_columns, pure-Python reference: {t_pure * 1e3:.1f} ms = {n / t_pure / 1e6:.2f} M events/s; "
          f"compiled path {'used above' if compiled_available() else 'NOT BUILT: the line above is pure Python'}")

if __name__ == "__main__":
    main()
