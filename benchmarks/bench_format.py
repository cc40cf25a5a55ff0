"""Trace write and read throughput against raw msgpack packing/unpacking of the same events, in one run.

    python benchmarks/bench_format.py [--waves 60] [--repeat 3]

Targets (issue 2): writing costs at most 1.5x raw packing; reading into columns reaches 1M events/s.
Reading uses the compiled columnizer (tracesim/format/_fastcols.pyx) when it is built; the last line times
the pure-Python reference on the same file.

Target (issue 15): read_trace (records) within 2.5x of bare msgpack unpacking of the same file. Measured
beside it, on the same file, the alternatives considered: the previous path (msgpack unpacking, then each
record built and checked in Python: the reference decoder), and msgspec decoding into array-like Structs
instead of the NamedTuple records (the same frame scan and chunks as read_trace).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import typing
from typing import Union

import msgpack
import msgspec

from tracesim.format import TraceReader, TraceWriter, codec, read_trace
from tracesim.format.records import EVENT_TYPES
from tracesim.gcpause import cyclic_gc_paused
from tracesim.format.columns import compiled_available, read_columns
from tracesim.format.synthetic import synthetic_trace


def _plain(value):
    """The record as plain tuples: what a hand-written msgpack producer would pack."""
    return tuple(_plain(v) for v in value) if isinstance(value, tuple) else value


def _struct_of(cls, made: dict):
    """An array-like msgspec Struct with ``cls``'s fields (nested records as Structs too): the alternative."""
    if cls in made:
        return made[cls]
    hints = typing.get_type_hints(cls, include_extras=True)

    def convert(hint):
        if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
            return _struct_of(hint, made)
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple and args:
            return tuple[convert(args[0]), ...]
        if args and type(None) in args:
            return Union[tuple(convert(a) for a in args)]
        return hint

    fields = [(name, convert(hints[name])) + ((cls._field_defaults[name],) if name in cls._field_defaults else ())
              for name in cls._fields]
    made[cls] = msgspec.defstruct(cls.__name__, fields, array_like=True, frozen=True, gc=False)
    return made[cls]


def struct_reader():
    """read(path) -> list of Struct records, by read_trace's frame scan and chunks, decoded into Structs."""
    made: dict = {}
    frames = tuple(msgspec.defstruct(f"{c.__name__}F", [("record", _struct_of(c, made)), ("proc", int, 0)],
                                     array_like=True, tag=c.KIND, tag_field="kind", gc=False) for c in EVENT_TYPES)
    decode = msgspec.msgpack.Decoder(list[Union[frames]]).decode

    def read(path):
        records = []
        with cyclic_gc_paused(), open(path, "rb") as f:
            data = f.read()
            unpacker = msgpack.Unpacker(use_list=False, raw=False)
            unpacker.feed(data)
            unpacker.skip()  # the header
            begin = count = 0
            begin = unpacker.tell()
            try:
                while True:
                    unpacker.skip()
                    count += 1
            except msgpack.OutOfData:
                pass
            records += [fr.record for fr in decode(codec._ARRAY32.pack(0xDD, count) + data[begin:])]
        return records

    return read


def reference_read(path):
    """The previous read_trace: unpack every frame, then build and check each record in Python."""
    with cyclic_gc_paused(), TraceReader(path) as reader:
        return [codec.decode_frame(frame) for frame in reader.raw_frames()]


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
    t_reference = best_of(args.repeat, lambda: reference_read(path))
    read_structs = struct_reader()
    assert len(read_structs(path)) == n
    t_structs = best_of(args.repeat, lambda: read_structs(path))

    print(f"events: {n:,}  file: {size_mb:.1f} MB  (best of {args.repeat})")
    rows = [
        ("raw msgpack pack", t_raw_pack), ("TraceWriter.extend + close", t_write),
        ("TraceWriter.append + close", t_append),
        ("raw msgpack unpack", t_raw_unpack), ("read_columns", t_columns), ("read_trace (records)", t_records),
        ("previous: unpack + build", t_reference), ("alternative: msgspec Structs", t_structs),
    ]
    for name, t in rows:
        print(f"  {name:<28} {t * 1e3:8.1f} ms  {n / t / 1e6:6.2f} M events/s  {size_mb / t:7.1f} MB/s")
    print(f"write (extend) / raw pack = {t_write / t_raw_pack:.2f}x   (target <= 1.5x)")
    print(f"write (append) / raw pack = {t_append / t_raw_pack:.2f}x   (one call per record)")
    print(f"read_columns          = {n / t_columns / 1e6:.2f} M events/s (target >= 1.0)")
    print(f"read_columns / unpack = {t_columns / t_raw_unpack:.2f}x;  read_trace / unpack = "
          f"{t_records / t_raw_unpack:.2f}x (target <= 2.5x)")
    print(f"previous read_trace / unpack = {t_reference / t_raw_unpack:.2f}x;  msgspec Structs / unpack = "
          f"{t_structs / t_raw_unpack:.2f}x")

    # The pure-Python reference columnizer (the fallback where the compiled one is not built), same file.
    os.environ["TRACESIM_PURE_PYTHON"] = "1"
    t_pure = best_of(args.repeat, lambda: read_columns(path))
    del os.environ["TRACESIM_PURE_PYTHON"]
    print(f"read_columns, pure-Python reference: {t_pure * 1e3:.1f} ms = {n / t_pure / 1e6:.2f} M events/s; "
          f"compiled path {'used above' if compiled_available() else 'NOT BUILT: the line above is pure Python'}")

if __name__ == "__main__":
    main()
