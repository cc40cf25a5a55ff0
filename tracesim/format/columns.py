"""Columnar view of a trace: one numpy array per record kind and field, for analysis and plots.

Tables are keyed by record KIND (``"sched"``, ``"upd"``, ...). Each holds every field of that record type plus
``proc`` (writing process) and ``index`` (position in the stream). Nested entries get a table of their own,
keyed ``"<kind>.<field>"`` (``"sched.reqs"``, ``"upd.outs"``, ``"deliver.spans"``, ``"consume.samples"``), with
a ``row`` column pointing at the parent row; in the parent, that field holds the number of entries.

Column types follow the field annotations: ``int`` -> int64, ``float`` -> float64, ``bool`` -> bool,
``int | None`` and ``float | None`` -> float64 with NaN for None, everything else (strings, tuples of ids,
dicts) -> object arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from tracesim.format.codec import SPECS
from tracesim.format.errors import TraceFormatError
from tracesim.format.reader import TraceReader
from tracesim.format.records import Header
from tracesim.format.trace import Trace


@dataclass
class Columns:
    header: Header
    tables: dict  # kind or "kind.field" -> {field: np.ndarray}

    def __getitem__(self, kind: str) -> dict:
        return self.tables[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self.tables

    def count(self, kind: str) -> int:
        """Rows in a table (0 when the trace has no such records)."""
        table = self.tables.get(kind)
        return len(next(iter(table.values()))) if table else 0


def read_columns(path: str | os.PathLike) -> Columns:
    """Read a trace straight into columns (faster than building records). Raises TraceFormatError."""
    rows: dict = {}
    with TraceReader(path) as reader:
        for i, (offset, frame) in enumerate(reader.frames()):
            if type(frame) is not tuple or len(frame) < 2:
                raise TraceFormatError(reader.path, "expected an array [kind, fields]", offset=offset)
            bucket = rows.get(frame[0])
            if bucket is None:
                if frame[0] not in SPECS:
                    reader.skipped += 1
                    continue
                bucket = rows[frame[0]] = ([], [], [], [])  # fields, procs, indices, offsets
            bucket[0].append(frame[1])
            bucket[1].append(frame[2] if len(frame) == 3 else 0)
            bucket[2].append(i)
            bucket[3].append(offset)
    tables: dict = {}
    for kind, (fields, procs, indices, offsets) in rows.items():
        try:
            _add_tables(tables, kind, fields, procs, indices)
        except _ColumnError as exc:
            offset = offsets[exc.row] if exc.row is not None else None
            raise TraceFormatError(reader.path, exc.message, offset=offset, field=exc.field) from None
    return Columns(reader.header, tables)


def to_columns(trace: Trace) -> Columns:
    """Columns of an in-memory trace (records already validated by the reader)."""
    rows: dict = {}
    for i, (proc, record) in enumerate(trace.with_procs()):
        bucket = rows.setdefault(record.KIND, ([], [], []))
        bucket[0].append(record)
        bucket[1].append(proc)
        bucket[2].append(i)
    tables: dict = {}
    for kind, (fields, procs, indices) in rows.items():
        _add_tables(tables, kind, fields, procs, indices)
    return Columns(trace.header, tables)


class _ColumnError(Exception):
    def __init__(self, field: str, message: str, row: int | None = None):
        self.field, self.message, self.row = field, message, row


def _add_tables(tables: dict, kind: str, rows: list, procs: list, indices: list) -> None:
    spec = SPECS[kind]
    names = spec.cls._fields
    rows = _normalise(kind, spec, rows)
    table = {"index": np.asarray(indices, dtype=np.int64), "proc": np.asarray(procs, dtype=np.int64)}
    columns = list(zip(*rows)) if rows else [()] * len(names)
    for (i, name, types, nested), col in zip(spec.checks, columns):
        path = f"{kind}.{name}"
        if nested is not None:
            table[name] = _nested_table(tables, path, nested, col)
        else:
            table[name] = _column(path, types, col)
    tables[kind] = table


def _normalise(kind: str, spec, rows: list) -> list:
    """Apply the evolution rules (drop unknown trailing fields, default missing ones) where needed."""
    n = len(spec.cls._fields)
    if all(type(r) is tuple and len(r) == n for r in rows) or all(isinstance(r, spec.cls) for r in rows):
        return rows
    out = []
    for j, r in enumerate(rows):
        if type(r) is not tuple:
            raise _ColumnError(kind, f"expected an array of fields, got {type(r).__name__}", j)
        if len(r) < spec.required:
            raise _ColumnError(f"{kind}.{spec.cls._fields[len(r)]}", "missing required field", j)
        out.append(r[:n] if len(r) > n else r + spec.defaults[len(r) - spec.required:])
    return out


def _column(path: str, types: tuple, col: tuple) -> np.ndarray:
    if types == (int,):
        return _checked(path, np.asarray(col), "iu", "int", col)
    if types == (float, int):
        if not _all(col, types):
            raise _ColumnError(path, "expected a number", _first_bad(col, types))
        return np.asarray(col, dtype=np.float64)
    if types == (bool,):
        if not _all(col, bool):
            raise _ColumnError(path, "expected bool", _first_bad(col, bool))
        return np.asarray(col, dtype=bool)
    if type(None) in types and (int in types or float in types):
        if not _all(col, (int, float, type(None))):
            raise _ColumnError(path, "expected a number or null", _first_bad(col, (int, float, type(None))))
        return np.asarray(col, dtype=np.float64)  # None becomes NaN
    arr = np.fromiter(col, dtype=object, count=len(col))
    if not _all(col, types):
        raise _ColumnError(path, f"expected {'/'.join(sorted(t.__name__ for t in types))}", _first_bad(col, types))
    return arr


def _checked(path: str, arr: np.ndarray, kinds: str, what: str, col: tuple) -> np.ndarray:
    # numpy infers int64 only when every value is an int that fits: anything else is a bad field.
    if len(arr) and arr.dtype.kind not in kinds:
        raise _ColumnError(path, f"expected {what}", _first_bad(col, int))
    return arr.astype(np.int64, copy=False)


def _all(col: tuple, types) -> bool:
    return all(isinstance(v, types) for v in col)


def _first_bad(col: tuple, types) -> int | None:
    return next((j for j, v in enumerate(col) if not isinstance(v, types)), None)


def _nested_table(tables: dict, path: str, spec, col: tuple) -> np.ndarray:
    """Flatten the entries of one nested field into their own table; return entry counts for the parent."""
    counts = np.fromiter((len(v) if v else 0 for v in col), dtype=np.int64, count=len(col))
    parent_rows = np.repeat(np.arange(len(col), dtype=np.int64), counts)
    entries = [e for v in col if v for e in v]
    entries = _normalise(path, spec, entries) if entries else []
    child = {"row": parent_rows}
    columns = list(zip(*entries)) if entries else [()] * len(spec.cls._fields)
    for (i, name, types, _nested), c in zip(spec.checks, columns):
        try:
            child[name] = _column(f"{path}.{name}", types, c)
        except _ColumnError as exc:  # report the parent record, which is what has an offset
            exc.row = int(parent_rows[exc.row]) if exc.row is not None else None
            raise
    tables[path] = child
    return counts
