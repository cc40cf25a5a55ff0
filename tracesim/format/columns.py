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
import warnings
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter

import numpy as np

from tracesim import compiled as _build
from tracesim.gcpause import cyclic_gc_paused

from tracesim.format.codec import SPECS
from tracesim.format.errors import TraceFormatError, TruncatedTraceWarning
from tracesim.format.reader import TraceReader
from tracesim.format.records import Header
from tracesim.format.trace import Trace

# The compiled fast path, built at install time (setup.py), used only while it was built from the current
# _fastcols.pyx (tracesim/compiled.py: the one check of whether a compiled build is current); the pure-Python
# path below is the reference.
BUILD = _build.status(__name__.rpartition(".")[0])
_fastcols = None
if BUILD.compiled:
    try:
        from tracesim.format import _fastcols
    except ImportError:  # e.g. built for another interpreter
        _fastcols = None
elif BUILD.stale:
    warnings.warn(f"tracesim.format: {BUILD.reason} (the pure-Python columnizer reads meanwhile)", RuntimeWarning,
                  stacklevel=2)


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
    """Read a trace straight into columns (several times faster than building records).

    Raises TraceFormatError naming the file, byte offset and field; warns TruncatedTraceWarning like the reader.
    """
    try:
        with cyclic_gc_paused():
            header, tables = _read_tables(path)
            _check_procs(tables, len(header.processes))
            _check_elements(tables)
    except _ColumnError as exc:
        with warnings.catch_warnings():  # slow path, errors only; a truncated tail was already reported
            warnings.simplefilter("ignore", TruncatedTraceWarning)
            offsets = [offset for offset, _frame in TraceReader(path).frames()]
        offset = offsets[exc.row] if exc.row is not None and exc.row < len(offsets) else None
        raise TraceFormatError(str(path), exc.message, offset=offset, field=exc.field) from None
    return Columns(header, tables)


def _read_tables(path) -> tuple:
    if compiled_available():
        try:
            with TraceReader(path) as reader:
                builder = _fastcols.ColumnBuilder(_KIND_CODE, _PLANS)
                reader.feed(builder)  # each frame goes into the columns as it is decoded
                return reader.header, builder.tables()
        except _fastcols.Unusual:
            pass  # something unusual (a wrong type, an int beyond int64, ...): the reference path decides
    with TraceReader(path) as reader:
        frames = reader.raw_frames()  # byte offsets are only worked out again if something is wrong
        return reader.header, _tables_from_frames(frames)


def _check_procs(tables: dict, n_procs: int) -> None:
    """Every ``proc`` names a process of the header (0 is always allowed), as the record reader requires."""
    for kind, table in tables.items():
        procs = table.get("proc")
        if procs is None or not len(procs):
            continue
        bad = np.flatnonzero((procs < 0) | ((procs >= n_procs) & (procs != 0)))
        if len(bad):
            raise _ColumnError(f"{kind}.proc", f"proc {procs[bad[0]]} is not in the header's {n_procs} processes",
                               int(table["index"][bad[0]]))


def _check_elements(tables: dict) -> None:
    """The elements of tuples of scalars (``req_ids``, ``block_keys``, ``token_ids``, ...) have the types the
    record reader requires (``codec.ELEMENT_TYPES``): both columnizers keep those tuples whole in object
    columns, so they are checked here, at C speed over all the tuples of a column at once."""
    for kind, spec in SPECS.items():
        _check_table_elements(tables, kind, spec)
        for _i, name, nested in spec.nested:
            _check_table_elements(tables, f"{kind}.{name}", nested, tables.get(kind))


def _check_table_elements(tables: dict, path: str, spec, parent: dict | None = None) -> None:
    table = tables.get(path)
    if not table or not spec.elements:
        return
    for _i, name, allowed, named, bounds in spec.elements:
        col = table[name].tolist()
        filled = list(filter(None, col))  # the non-empty tuples (most are empty or null)
        if not filled or allowed.issuperset(map(type, chain.from_iterable(filled))) and (
                bounds is None or (min(chain.from_iterable(filled)) >= bounds[0]
                                   and max(chain.from_iterable(filled)) <= bounds[1])):
            continue
        r, j, what = next((r, j, v) for r, value in enumerate(col) if value for j, v in enumerate(value)
                          if type(v) not in allowed or (bounds is not None and not bounds[0] <= v <= bounds[1]))
        message = (f"expected {' or '.join(sorted(t.__name__ for t in named))}, got {type(what).__name__}"
                   if type(what) not in allowed else f"expected an int32, got {what!r}")
        if parent is None:
            raise _ColumnError(f"{path}.{name}[{j}]", message, int(table["index"][r]))
        rows = table["row"]
        entry = r - int(np.searchsorted(rows, rows[r]))  # position among its parent's entries
        parent_path, field = path.rsplit(".", 1)
        raise _ColumnError(f"{parent_path}.{field}[{entry}].{name}[{j}]", message, int(parent["index"][rows[r]]))


_KIND_CODE = {kind: code for code, kind in enumerate(SPECS)}


def compiled_available() -> bool:
    """Whether reading uses the compiled columnizer (``TRACESIM_PURE_PYTHON=1`` turns it off)."""
    return _fastcols is not None and not _build.pure_python()


def _tables_from_frames(frames: list) -> dict:
    if frames and (set(map(type, frames)) != {tuple} or not set(map(len, frames)) <= {2, 3}):
        bad = next(i for i, f in enumerate(frames) if type(f) is not tuple or len(f) not in (2, 3))
        raise _ColumnError("frame", "expected an array [kind, fields] or [kind, fields, proc]", bad)
    kinds = list(map(itemgetter(0), frames))
    if kinds and set(map(type, kinds)) != {str}:
        bad = next(i for i, k in enumerate(kinds) if type(k) is not str)
        raise _ColumnError("frame.kind", f"expected a string, got {type(kinds[bad]).__name__}", bad)
    if "header" in kinds:
        raise _ColumnError("frame", "a second header in the middle of the stream", kinds.index("header"))
    # Group rows by kind with one stable sort of small integer codes (unknown kinds: -1, skipped).
    codes = np.fromiter(map(_KIND_CODE.get, kinds, repeat(-1)), dtype=np.int64, count=len(kinds))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(SPECS) + 1))
    tables: dict = {}
    for kind in dict.fromkeys(kinds):  # tables in the order kinds first appear
        code = _KIND_CODE.get(kind)
        if code is None:
            continue  # a kind from a newer minor version
        idx = order[bounds[code]:bounds[code + 1]]
        selected = [frames[i] for i in idx.tolist()]
        fields = list(map(itemgetter(1), selected))
        if set(map(len, selected)) == {2}:
            procs = np.zeros(len(selected), dtype=np.int64)
        else:
            procs = [f[2] if len(f) == 3 else 0 for f in selected]
        _add_tables(tables, kind, fields, procs, idx)
    return tables


# The compiled path's description of each record kind: (kind, fields, required, defaults), each field
# (name, column kind, allowed-type mask, nested plan). Column kinds and mask bits as in _fastcols.pyx.
_T_INT, _T_FLOAT, _T_OPTNUM, _T_BOOL, _T_OBJ, _T_NESTED = range(6)
_NUMBERS = {int, float}
_NONE = type(None)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_TYPE_BITS = {str: 1, type(None): 2, tuple: 4, dict: 8, int: 16, float: 32, bool: 64}


def _column_kind(types: tuple) -> int:
    """How a field of these annotated types becomes a column (both columnizers decide it here)."""
    if types == (int,):
        return _T_INT
    if types == (bool,):
        return _T_BOOL
    if _NONE in types and (int in types or float in types):
        return _T_OPTNUM
    if float in types:
        return _T_FLOAT
    return _T_OBJ


def _field_plan(name: str, types: tuple, nested) -> tuple:
    mask = sum(_TYPE_BITS[t] for t in set(types))
    if nested is not None:
        return (name, _T_NESTED, mask, (_fields_plan(nested), nested.required, nested.defaults))
    return (name, _column_kind(types), mask, None)


def _fields_plan(spec) -> tuple:
    return tuple(_field_plan(name, types, nested) for _i, name, types, nested in spec.checks)


_PLANS = [(kind, _fields_plan(spec), spec.required, spec.defaults) for kind, spec in SPECS.items()]


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
        try:
            _add_tables(tables, kind, fields, procs, indices)
        except _ColumnError as exc:  # records built in memory with values of the wrong type
            raise ValueError(f"record {exc.row}: field {exc.field}: {exc.message}") from None
    return Columns(trace.header, tables)


class _ColumnError(Exception):
    def __init__(self, field: str, message: str, row: int | None = None):
        self.field, self.message, self.row = field, message, row


def _add_tables(tables: dict, kind: str, rows: list, procs, indices) -> None:
    spec = SPECS[kind]
    table = {"index": np.asarray(indices, dtype=np.int64)}
    try:
        table["proc"] = procs if isinstance(procs, np.ndarray) else _column(f"{kind}.proc", (int,), procs)
        rows = _normalise(kind, spec, rows)
        columns = list(zip(*rows)) if rows else [()] * len(spec.checks)
        for (_i, name, types, nested), col in zip(spec.checks, columns):
            path = f"{kind}.{name}"
            if nested is not None:
                table[name] = _nested_table(tables, path, nested, col)
            else:
                table[name] = _column(path, types, col)
    except _ColumnError as exc:  # rows of this kind -> position in the stream
        exc.row = int(table["index"][exc.row]) if exc.row is not None else None
        raise
    tables[kind] = table


def _normalise(kind: str, spec, rows: list) -> list:
    """Apply the evolution rules (drop unknown trailing fields, default missing ones) where needed."""
    n = len(spec.checks)
    if not rows or (set(map(type, rows)) <= {tuple, spec.cls} and set(map(len, rows)) == {n}):
        return rows  # the common case, checked at C speed
    out = []
    for j, r in enumerate(rows):
        if not isinstance(r, tuple):
            raise _ColumnError(kind, f"expected an array of fields, got {type(r).__name__}", j)
        if len(r) < spec.required:
            raise _ColumnError(f"{kind}.{spec.cls._fields[len(r)]}", "missing required field", j)
        out.append(r[:n] if len(r) > n else r + spec.defaults[len(r) - spec.required:])
    return out




def _column(path: str, types: tuple, col: tuple) -> np.ndarray:
    # Types are checked by numpy's inference or on the set of exact value types (C-speed passes), never
    # value by value in Python.
    kind = _column_kind(types)
    seen = set(map(type, col))
    if kind == _T_INT:
        _require(path, col, seen, {int, bool}, "int")  # bool is an int, as for records (codec.build)
        arr = np.asarray(col)  # an integer (or bool) dtype only if every value is within int64
        if len(arr) and arr.dtype.kind not in "ib":
            bad = next((j for j, v in enumerate(col) if not _INT64_MIN <= v <= _INT64_MAX), None)
            raise _ColumnError(path, "expected an int within int64", bad)
        return arr.astype(np.int64, copy=False)
    if kind == _T_BOOL:
        _require(path, col, seen, {bool}, "bool")
        return np.asarray(col, dtype=bool)
    if kind == _T_OPTNUM:
        _require(path, col, seen, _NUMBERS | {_NONE}, "a number or null")
        return np.asarray(col, dtype=np.float64)  # None becomes NaN
    if kind == _T_FLOAT:
        _require(path, col, seen, _NUMBERS, "a number")
        return np.asarray(col, dtype=np.float64)
    _require(path, col, seen, set(types), " or ".join(sorted(t.__name__ for t in types)))
    return np.fromiter(col, dtype=object, count=len(col))


def _require(path: str, col: tuple, seen: set, allowed: set, what: str) -> None:
    if not seen <= allowed:
        raise _ColumnError(path, f"expected {what}", _first_bad(col, allowed))


def _first_bad(col: tuple, allowed: set) -> int | None:
    return next((j for j, v in enumerate(col) if type(v) not in allowed), None)


def _nested_table(tables: dict, path: str, spec, col: tuple) -> np.ndarray:
    """Flatten the entries of one nested field into their own table; return entry counts for the parent."""
    if None in col:  # optional nested fields (deliver.spans)
        col = [v or () for v in col]
    if not set(map(type, col)) <= {tuple}:
        raise _ColumnError(path, "expected an array of entries", _first_bad(col, {tuple}))
    counts = np.fromiter(map(len, col), dtype=np.int64, count=len(col))
    parent_rows = np.repeat(np.arange(len(col), dtype=np.int64), counts)
    entries = list(chain.from_iterable(col))
    child = {"row": parent_rows}
    try:
        entries = _normalise(path, spec, entries)
        columns = list(zip(*entries)) if entries else [()] * len(spec.checks)
        for (_i, name, types, _nested), c in zip(spec.checks, columns):
            child[name] = _column(f"{path}.{name}", types, c)
    except _ColumnError as exc:  # report the parent record, which is what has an offset
        exc.row = int(parent_rows[exc.row]) if exc.row is not None else None
        raise
    tables[path] = child
    return counts
