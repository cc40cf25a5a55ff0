# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled columnizer: decoded msgpack frames -> numpy columns, as the unpacker produces them.

This is the fast path of ``tracesim.format.columns``. ``ColumnBuilder`` takes each frame straight from the
unpacker and writes its fields into the column arrays while the frame's objects are still hot in the cache;
the frame is then freed at once, into the interpreter's free lists. It handles well-formed frames,
the evolution rules included (trailing fields dropped, missing ones defaulted), and raises ``Unusual`` the
moment anything is off (a wrong type, a short record, an int outside int64, a second header, ...). The
caller then reads the file again with the pure-Python columnizer, which is the reference: it raises the one
clear error, or accepts the odd value (a bool in an int field, as the record reader does). So this module
never reproduces an error message, and its tables are the pure-Python ones (tests compare the two paths).

Why compiled: numpy converts Python values one cell at a time through generic paths (~150 ns a cell with
the checks); this typed loop costs a few ns a cell.

Built by setup.py at ``pip install``; an editable install does not rebuild it when this file changes, so
run ``pip install -e .`` again after editing it (tests/test_format_columns_compiled.py then compares).
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF

import numpy as np

# Column kinds, chosen in columns.py from the field annotations (see _column_kind there).
cdef enum:
    T_INT = 0       # int            -> int64
    T_FLOAT = 1     # float          -> float64 (int or float values)
    T_OPTNUM = 2    # int|None, float|None -> float64, None -> NaN
    T_BOOL = 3      # bool           -> bool
    T_OBJ = 4       # anything else  -> object array; exact value types must be in the field's mask
    T_NESTED = 5    # tuple of entries (or None) -> entry counts here, a child table of its own

# Bits of T_OBJ's allowed-type mask (columns.py builds the same numbering).
cdef enum:
    B_STR = 1
    B_NONE = 2
    B_TUPLE = 4
    B_DICT = 8
    B_INT = 16
    B_FLOAT = 32
    B_BOOL = 64

cdef enum:
    MAX_FIELDS = 64  # per record kind; today's widest has 13

cdef double NAN = float("nan")

# numpy dtype of each column kind
_DTYPES = {T_INT: np.int64, T_FLOAT: np.float64, T_OPTNUM: np.float64, T_BOOL: np.bool_, T_OBJ: object,
           T_NESTED: np.int64}


class Unusual(Exception):
    """A frame the fast path does not take; read the file with the reference path instead."""


cdef inline int _type_bit(object v):
    t = type(v)
    if t is str:
        return B_STR
    if v is None:
        return B_NONE
    if t is tuple:
        return B_TUPLE
    if t is int:
        return B_INT
    if t is float:
        return B_FLOAT
    if t is bool:
        return B_BOOL
    if t is dict:
        return B_DICT
    return 0


cdef class _Table:
    """Rows of one record kind (or one nested field), written straight into one numpy array per column.

    Columns 0 (and 1) are ``index`` and ``proc`` of a record table, or ``row`` of a nested table; field j is
    column ``nkeys + j``. Arrays grow by ``ndarray.resize`` (realloc, which moves large blocks by remapping
    pages rather than copying) and are cut to length at the end, so a cell is written once and never copied.
    """

    cdef str path
    cdef tuple names
    cdef Py_ssize_t n, cap, nfields, required, nkeys
    cdef tuple defaults
    cdef int tcode[MAX_FIELDS]
    cdef int mask[MAX_FIELDS]
    cdef char* data[MAX_FIELDS + 2]  # each column's buffer, refreshed after every resize
    cdef list arrays  # the columns: int64, float64, bool or object arrays
    cdef list children  # per field: _Table of a nested field, else None

    def __cinit__(self, str path, tuple fields, Py_ssize_t required, tuple defaults, int nkeys):
        cdef Py_ssize_t j
        if len(fields) > MAX_FIELDS:
            raise Unusual(path)
        self.path, self.required, self.defaults, self.nkeys = path, required, defaults, nkeys
        self.nfields = len(fields)
        self.names = tuple([f[0] for f in fields])
        self.arrays = [np.empty(0, dtype=np.int64) for j in range(nkeys)]
        self.children = []
        for j in range(self.nfields):
            name, tcode, mask, sub = fields[j]
            self.tcode[j], self.mask[j] = tcode, mask
            child = None
            if tcode == T_NESTED:
                sub_fields, sub_required, sub_defaults = sub
                child = _Table(f"{path}.{name}", sub_fields, sub_required, sub_defaults, 1)
            self.children.append(child)
            self.arrays.append(np.empty(0, dtype=_DTYPES[tcode]))
        self.n = 0
        self._resize(64)

    cdef _resize(self, Py_ssize_t cap):
        cdef Py_ssize_t c
        for c in range(len(self.arrays)):
            arr = self.arrays[c]
            arr.resize(cap, refcheck=False)  # the arrays are never shared before finish()
            self.data[c] = <char*><size_t>arr.__array_interface__["data"][0]
        self.cap = cap

    cdef add(self, tuple rec, long long key0, long long key1):
        cdef Py_ssize_t j, k, nrec = len(rec), count, n = self.n
        cdef int t
        cdef char* col
        cdef PyObject** cell
        cdef PyObject* old
        cdef tuple entries
        cdef _Table child
        if nrec < self.required:
            raise Unusual(self.path)
        if n == self.cap:
            self._resize(2 * self.cap)
        (<long long*>self.data[0])[n] = key0
        if self.nkeys == 2:
            (<long long*>self.data[1])[n] = key1
        for j in range(self.nfields):
            v = rec[j] if j < nrec else self.defaults[j - self.required]
            t = self.tcode[j]
            col = self.data[self.nkeys + j]
            if t == T_INT:
                if type(v) is not int:
                    raise Unusual(self.path)
                try:
                    (<long long*>col)[n] = v
                except OverflowError:
                    raise Unusual(self.path)
            elif t == T_OBJ:
                if not (_type_bit(v) & self.mask[j]):
                    raise Unusual(self.path)
                cell = (<PyObject**>col) + n
                old = cell[0]  # what resize() filled in (NULL or a reference), released after the swap
                Py_INCREF(v)
                cell[0] = <PyObject*>v
                Py_XDECREF(old)
            elif t == T_FLOAT or t == T_OPTNUM:
                if type(v) is float or type(v) is int:
                    (<double*>col)[n] = v
                elif v is None and t == T_OPTNUM:
                    (<double*>col)[n] = NAN
                else:
                    raise Unusual(self.path)
            elif t == T_BOOL:
                if v is True:
                    (<unsigned char*>col)[n] = 1
                elif v is False:
                    (<unsigned char*>col)[n] = 0
                else:
                    raise Unusual(self.path)
            else:  # T_NESTED; None is an empty list of entries, as on the reference path
                count = 0
                if v is not None:
                    if type(v) is not tuple:
                        raise Unusual(self.path)
                    entries = <tuple>v
                    count = len(entries)
                    child = <_Table>self.children[j]
                    for k in range(count):
                        e = entries[k]
                        if type(e) is not tuple:
                            raise Unusual(self.path)
                        child.add(<tuple>e, n, 0)
                (<long long*>col)[n] = count
        self.n = n + 1

    cdef finish(self, dict tables):
        """Insert this table (after its nested tables, the reference order) into ``tables``."""
        cdef Py_ssize_t j
        for arr in self.arrays:
            arr.resize(self.n, refcheck=False)
        keys = ("index", "proc") if self.nkeys == 2 else ("row",)
        table = dict(zip(keys, self.arrays))
        for j in range(self.nfields):
            if self.tcode[j] == T_NESTED:
                (<_Table>self.children[j]).finish(tables)
            table[self.names[j]] = self.arrays[self.nkeys + j]
        self.arrays = []  # handed over
        tables[self.path] = table


cdef class ColumnBuilder:
    """Call with every event frame in stream order, then ``tables()``. Raises ``Unusual`` (see module doc).

    ``kind_codes``: kind -> index into ``plans``; ``plans[code]`` = (kind, fields, required, defaults) with
    ``fields`` a tuple of (name, column kind, type mask, nested plan or None).
    """

    cdef dict kind_codes
    cdef list plans
    cdef list by_code  # code -> _Table, created when the kind first appears
    cdef list first_seen  # tables in the order their kinds first appear
    cdef long long index
    cdef public long long start, count  # see feed_from

    def __cinit__(self, dict kind_codes, list plans):
        self.kind_codes, self.plans = kind_codes, plans
        self.by_code = [None] * len(plans)
        self.first_seen = []
        self.index = self.start = self.count = 0

    def feed_from(self, unpacker):
        """Add every frame ``unpacker`` yields, until it raises (``msgpack.OutOfData`` at the end).

        The exception propagates; ``start`` is then the byte offset where the frame it failed on began,
        and ``count`` the frames added. The reader turns both into its usual errors and warnings.
        """
        unpack, tell = unpacker.unpack, unpacker.tell
        while True:
            self.start = tell()  # after a partial frame tell() has moved on: keep where it began
            self._add(unpack())
            self.count += 1

    def __call__(self, frame):
        self._add(frame)

    cdef _add(self, frame):
        cdef tuple f
        cdef Py_ssize_t flen
        cdef long long proc = 0
        cdef _Table table
        if type(frame) is not tuple:
            raise Unusual("frame")
        f = <tuple>frame
        flen = len(f)
        if flen != 2 and flen != 3:
            raise Unusual("frame")
        kind = f[0]
        code = self.kind_codes.get(kind) if type(kind) is str else None
        if code is None:
            if type(kind) is not str or kind == "header":
                raise Unusual("frame")
            self.index += 1  # a kind from a newer minor version: skipped
            return
        obj = self.by_code[code]
        if obj is None:
            kind_name, fields, required, defaults = self.plans[code]
            obj = _Table(kind_name, fields, required, defaults, 2)
            self.by_code[code] = obj
            self.first_seen.append(obj)
        table = <_Table>obj
        if flen == 3:
            p = f[2]
            if type(p) is not int:
                raise Unusual("frame")
            try:
                proc = p
            except OverflowError:
                raise Unusual("frame")
        rec = f[1]
        if type(rec) is not tuple:
            raise Unusual("frame")
        table.add(<tuple>rec, self.index, proc)
        self.index += 1

    def tables(self) -> dict:
        cdef dict tables = {}
        for table in self.first_seen:
            (<_Table>table).finish(tables)
        return tables


def group_by_type(list records) -> dict:
    """``{type: [records of exactly that type, in order]}``: ``Trace._kinds``'s grouping as a C loop (its
    Python loop costs ~0.2 us a record, seconds on a replay's millions). Runs of one type (a decode step's
    deliveries) reuse the last bucket without a dict look-up."""
    cdef dict by_type = {}
    cdef object last_type = None
    cdef list bucket = None
    cdef object r, t
    for r in records:
        t = type(r)
        if t is not last_type:
            bucket = by_type.get(t)
            if bucket is None:
                bucket = []
                by_type[t] = bucket
            last_type = t
        bucket.append(r)
    return by_type


cdef class KindGrouper:
    """``group_by_type`` and the earliest t_ns, accumulated chunk by chunk while a reader decodes them (the
    chunk's records are still in the CPU cache): afterwards neither needs a pass over millions of records.

    ``by_type`` groups as ``group_by_type`` does over all chunks in order; ``start_ns`` is the minimum of
    every record's field 0 (its t_ns), or None when a record's field 0 is not an int that fits int64 (the
    caller then finds the start its usual way)."""

    cdef readonly dict by_type
    cdef object _last_type
    cdef list _bucket
    cdef long long _min_t
    cdef bint _any
    cdef bint _t_ok

    def __init__(self):
        self.by_type = {}
        self._last_type = None
        self._bucket = None
        self._any = False
        self._t_ok = True

    def add(self, list records):
        cdef object r, t, t_ns
        cdef long long v
        cdef int overflow
        for r in records:
            t = type(r)
            if t is not self._last_type:
                self._bucket = self.by_type.get(t)
                if self._bucket is None:
                    self._bucket = []
                    self.by_type[t] = self._bucket
                self._last_type = t
            self._bucket.append(r)
            if self._t_ok:
                t_ns = (<tuple>r)[0] if isinstance(r, tuple) and len(<tuple>r) else None
                if type(t_ns) is not int:
                    self._t_ok = False
                    continue
                v = PyLong_AsLongLongAndOverflow(t_ns, &overflow)
                if overflow:
                    self._t_ok = False
                elif not self._any or v < self._min_t:
                    self._min_t, self._any = v, True

    @property
    def start_ns(self):
        if not self._t_ok:
            return None
        return self._min_t if self._any else 0
