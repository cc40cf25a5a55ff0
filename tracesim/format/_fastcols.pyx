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
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF, Py_XDECREF
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.string cimport memcmp, memset

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


# Borrowed-pointer access for the C loops below (no reference counting where none is needed).
cdef extern from "Python.h":
    PyObject* _list_item "PyList_GET_ITEM"(PyObject* lst, Py_ssize_t i)
    PyObject* _item "PyTuple_GET_ITEM"(PyObject* tup, Py_ssize_t i)
    Py_ssize_t _size "Py_SIZE"(PyObject* o)
    void* _type "Py_TYPE"(PyObject* o)
    bint _is_tuple "PyTuple_Check"(PyObject* o)
    long long _as_ll "PyLong_AsLongLongAndOverflow"(PyObject* o, int* overflow) except? -1
    int _eq "PyObject_RichCompareBool"(PyObject* a, PyObject* b, int op) except -1
    int _Py_EQ "Py_EQ"
    PyObject* _dict_get "PyDict_GetItemWithError"(PyObject* d, PyObject* key)  # borrowed; NULL: absent
    void _prefetch "__builtin_prefetch"(const void* p)
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* o)
    void _tuple_set "PyTuple_SET_ITEM"(PyObject* tup, Py_ssize_t i, PyObject* v)
    PyObject* _dict_get_nofail "PyDict_GetItem"(PyObject* d, PyObject* key)  # borrowed; NULL: absent

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    int PyUnicode_KIND(object s)
    void* PyUnicode_DATA(object s)

cdef enum:
    ID_CACHE_SLOTS = 4096  # KindGrouper's cache of recent ids (a power of 2)

cdef enum:  # the steps of codec.id_plans
    ID_STR = 0
    ID_TUPLE = 1
    ID_ENTRIES = 2

cdef void* _INT = <void*>int
cdef void* _STR = <void*>str
cdef void* _BOOL = <void*>bool
cdef void* _FLOAT = <void*>float
cdef void* _TUPLE = <void*>tuple
cdef PyObject* _NONE = <PyObject*>None


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
    caller then finds the start its usual way).

    ``id_plans`` (``codec.id_plans()``): where each record type holds request and group ids. Every id found
    there is replaced by the first str seen equal to it, so a trace holds one str per distinct id instead of
    one per occurrence (~0.7 GB less on a 118k-step trace, and each id's hash is computed once for all the
    look-ups that follow). Only records and entries nothing else refers to yet are touched (just decoded: a
    record held by the chunk's list and its type's bucket alone, an entry by its record alone); the values
    stay equal, so nothing else can tell."""

    cdef readonly dict by_type
    cdef object _last_type
    cdef list _bucket
    cdef long long _min_t
    cdef bint _any
    cdef bint _t_ok
    cdef dict _plans
    cdef object _last_plan
    cdef dict _ids
    cdef PyObject* _recent[ID_CACHE_SLOTS]  # see _canonical_id; borrowed (held by _ids), NULL: empty

    def __cinit__(self):
        memset(self._recent, 0, sizeof(self._recent))

    def __init__(self, dict id_plans=None):
        self.by_type = {}
        self._last_type = None
        self._bucket = None
        self._any = False
        self._t_ok = True
        self._plans = id_plans if id_plans is not None else {}
        self._last_plan = None
        self._ids = {}

    def add(self, list records):
        cdef Py_ssize_t k, n = len(records)
        cdef PyObject* r
        cdef object t, t_ns
        cdef long long v
        cdef int overflow
        for k in range(n):
            r = _list_item(<PyObject*>records, k)
            t = <object><void*>_type(r)
            if t is not self._last_type:
                self._bucket = self.by_type.get(t)
                if self._bucket is None:
                    self._bucket = []
                    self.by_type[t] = self._bucket
                self._last_type = t
                self._last_plan = self._plans.get(t)
            self._bucket.append(<object>r)
            if self._last_plan is not None and _is_tuple(r) and _refcnt(r) == 2:  # the chunk's list and the bucket
                _intern_ids(self, r, <tuple>self._last_plan)
            if self._t_ok:
                if not _is_tuple(r) or _size(r) < 1 or _type(_item(r, 0)) != _INT:
                    self._t_ok = False
                    continue
                v = PyLong_AsLongLongAndOverflow(<object>_item(r, 0), &overflow)
                if overflow:
                    self._t_ok = False
                elif not self._any or v < self._min_t:
                    self._min_t, self._any = v, True

    @property
    def start_ns(self):
        if not self._t_ok:
            return None
        return self._min_t if self._any else 0


cdef inline PyObject* _canonical_id(KindGrouper g, PyObject* s) except NULL:
    """The one str of ``g._ids`` equal to ``s`` (``s`` itself, registered, when it is new). A request's id
    recurs in every step while it runs, so most look-ups are answered by ``_recent``, a direct-mapped cache of
    recently seen ids (FNV-1a of the characters; compared in place, hot in the CPU cache) before the dict,
    whose look-up hashes the new str and compares it with a canonical one that lies anywhere in the heap."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(<object>s), nbytes, b
    cdef int kind = PyUnicode_KIND(<object>s)
    cdef const unsigned char* data = <const unsigned char*>PyUnicode_DATA(<object>s)
    cdef unsigned int h = 2166136261u
    cdef PyObject* canon
    nbytes = n * kind
    for b in range(nbytes):
        h = (h ^ data[b]) * 16777619u
    h = (h ^ <unsigned int>nbytes) & (ID_CACHE_SLOTS - 1)
    canon = g._recent[h]
    if canon != NULL and (PyUnicode_GET_LENGTH(<object>canon) == n and PyUnicode_KIND(<object>canon) == kind
                          and memcmp(PyUnicode_DATA(<object>canon), data, nbytes) == 0):
        return canon
    canon = _dict_get_nofail(<PyObject*>g._ids, s)
    if canon == NULL:
        g._ids[<object>s] = <object>s
        canon = s
    g._recent[h] = canon  # borrowed: g._ids holds it
    return canon


cdef inline int _intern_at(KindGrouper g, PyObject* tup, Py_ssize_t i) except -1:
    """Make ``tup[i]``, if it is a str, the one str of ``g._ids`` equal to it (registering it if new)."""
    cdef PyObject* s = _item(tup, i)
    cdef PyObject* canon
    if _type(s) != _STR:
        return 0
    canon = _canonical_id(g, s)
    if canon != s:
        Py_INCREF(<object>canon)
        _tuple_set(tup, i, canon)  # steals the new reference; the decoded duplicate is freed next
        Py_DECREF(<object>s)
    return 0


cdef int _intern_ids(KindGrouper g, PyObject* record, tuple plan) except -1:
    """Apply one record type's id plan (``codec.id_plans``) to ``record``, which only its lists refer to."""
    cdef Py_ssize_t i, j, e, n = _size(record)
    cdef int op
    cdef PyObject* value
    cdef PyObject* entry
    cdef tuple entry_fields
    for step in plan:
        i, op, entry_fields = step
        if i >= n:
            continue
        if op == ID_STR:
            _intern_at(g, record, i)
            continue
        value = _item(record, i)
        if not _is_tuple(value) or _refcnt(value) != 1:
            continue
        for e in range(_size(value)):
            if op == ID_TUPLE:
                _intern_at(g, value, e)
                continue
            entry = _item(value, e)
            if not _is_tuple(entry) or _refcnt(entry) != 1:
                continue
            for j in entry_fields:
                if j < _size(entry):
                    _intern_at(g, entry, j)
    return 0

# Fidelity's passes over whole traces (tracesim/sim/fidelity.py, format/index.py start_of): as Python loops
# over millions of records and step outputs they cost seconds. Each function below answers only for input it
# can answer exactly as the Python code does and returns None (or stops early) otherwise, so the Python code
# (the reference, and what runs without this module) decides every odd case, its errors included.
#
# They read borrowed pointers (no reference counting). They wait on memory more than they compute: every record,
# entry, int and req_id is an object of its own, mostly a cache miss on traces of millions of records; so a
# pass over ~4 M records still costs ~50 ms, and min_t_ns prefetches ahead (~35% faster, measured).


cdef inline bint _int64(PyObject* v, long long* out):
    """``*out`` = v if v is exactly an int that fits int64."""
    cdef int overflow = 0
    if _type(v) != _INT:
        return False
    out[0] = _as_ll(v, &overflow)
    return overflow == 0


def min_t_ns(list records):
    """The least field 0 (``t_ns``) of ``records``, 0 if there are none: ``index.start_of``'s ``min``. None if
    a record is not a tuple or its field 0 is not exactly an int that fits int64."""
    cdef Py_ssize_t i, n = len(records)
    cdef long long t_ns = 0, least_ns = 0
    cdef PyObject* r
    for i in range(n):
        if i + 16 < n:
            _prefetch(_list_item(<PyObject*>records, i + 16))
        if i + 8 < n:
            r = _list_item(<PyObject*>records, i + 8)
            if _is_tuple(r) and _size(r) > 0:
                _prefetch(_item(r, 0))
        r = _list_item(<PyObject*>records, i)
        if not _is_tuple(r) or _size(r) < 1 or not _int64(_item(r, 0), &t_ns):
            return None
        if i == 0 or t_ns < least_ns:
            least_ns = t_ns
    return least_ns


def int64_column(list records, Py_ssize_t field):
    """Field ``field`` of every record as an int64 array (fidelity's step start times), without a Python int
    list numpy would convert one cell at a time. None unless every record is a tuple holding exactly an int
    that fits int64 there."""
    cdef Py_ssize_t i, n = len(records)
    cdef PyObject* r
    if field < 0:
        return None
    out = np.empty(n, dtype=np.int64)
    cdef long long* col = <long long*><size_t>out.__array_interface__["data"][0]
    for i in range(n):
        r = _list_item(<PyObject*>records, i)
        if not _is_tuple(r) or _size(r) <= field or not _int64(_item(r, field), col + i):
            return None
    return out


def finishes_and_sampled(list upds, type upd_type, type out_type):
    """One pass over StepUpdated records: ``(finishes, sampled)``. ``finishes``: ``(req_id, end_ns)`` of every
    out with a finish_reason, in order (fidelity's ``_finishes``); ``sampled``: the sum of every out's
    ``sampled``, or None if one is not exactly an int or the sum leaves int64 (the caller then sums in Python).
    None altogether unless every update is exactly ``upd_type`` with a tuple of outs, each exactly
    ``out_type`` (their fields read in place, at the positions their ``_fields`` name)."""
    cdef Py_ssize_t END_NS = upd_type._fields.index("end_ns"), OUTS = upd_type._fields.index("outs")
    cdef Py_ssize_t REQ_ID = out_type._fields.index("req_id"), SAMPLED = out_type._fields.index("sampled")
    cdef Py_ssize_t REASON = out_type._fields.index("finish_reason")
    cdef Py_ssize_t upd_min = max(END_NS, OUTS) + 1, out_min = max(REQ_ID, SAMPLED, REASON) + 1
    cdef list finishes = []
    cdef long long sampled = 0, total = 0
    cdef bint summed = True
    cdef Py_ssize_t i, k
    cdef PyObject *r
    cdef PyObject *outs
    cdef PyObject *o
    for i in range(len(upds)):
        r = _list_item(<PyObject*>upds, i)
        if _type(r) != <void*>upd_type or _size(r) < upd_min:
            return None
        outs = _item(r, OUTS)
        if _type(outs) != _TUPLE:
            return None
        for k in range(_size(outs)):
            o = _item(outs, k)
            if _type(o) != <void*>out_type or _size(o) < out_min:
                return None
            if _item(o, REASON) != _NONE:
                finishes.append((<object>_item(o, REQ_ID), <object>_item(r, END_NS)))
            if summed:
                if (not _int64(_item(o, SAMPLED), &sampled) or (sampled > 0 and total > LLONG_MAX - sampled)
                        or (sampled < 0 and total < LLONG_MIN - sampled)):
                    summed = False
                else:
                    total += sampled
    return finishes, (total if summed else None)


cdef inline bint _sub(long long a, long long b, long long* out):
    """``*out`` = a - b unless that leaves int64."""
    if (b < 0 and a > LLONG_MAX + b) or (b > 0 and a < LLONG_MIN + b):
        return False
    out[0] = a - b
    return True


cdef inline PyObject* _finish_of(PyObject* f, long long* t_ns):
    """The req_id of a ``(req_id, t)`` finish whose req_id is exactly a str (a dict look-up then runs no user
    code and cannot fail) and t an int64 (``*t_ns``); NULL otherwise."""
    if _type(f) != _TUPLE or _size(f) != 2 or _type(_item(f, 0)) != _STR or not _int64(_item(f, 1), t_ns):
        return NULL
    return _item(f, 0)


cdef inline bint _latency(PyObject* add, long long t_ns, long long t0_ns, long long* out):
    """``*out`` = t_ns - t0_ns - add (a request's latency from its add), unless ``add`` is not an int64 or that
    leaves int64."""
    cdef long long add_ns = 0
    return _int64(add, &add_ns) and _sub(t_ns, t0_ns, out) and _sub(out[0], add_ns, out)


cdef long long _EXACT = 2 ** 53  # ints up to this are doubles exactly: C's division is then Python's int / int


def request_errs(list finishes, dict r_add, dict s_fin, dict s_add, r0):
    """fidelity.compare's per-request errors: for each ``(req_id, t)`` of ``finishes`` whose req_id is in all
    three dicts, ``|lat_s - lat_r| / max(lat_r, 1)`` with ``lat_r = t - r0 - r_add[req_id]`` and ``lat_s =
    s_fin[req_id] - s_add[req_id]``, as a list. None where Python must compute: a req_id not exactly a str, a
    value not exactly an int64, a result past int64 or past 2**53 (a double would not hold it exactly)."""
    cdef list errs = []
    cdef long long t0_ns = 0, t_ns = 0, fin_ns = 0, lat_r = 0, lat_s = 0, num = 0
    cdef Py_ssize_t i
    cdef PyObject *rid
    cdef PyObject *a
    cdef PyObject *b
    cdef PyObject *c
    if not _int64(<PyObject*>r0, &t0_ns):
        return None
    for i in range(len(finishes)):
        rid = _finish_of(_list_item(<PyObject*>finishes, i), &t_ns)
        if rid == NULL:
            return None
        a = _dict_get(<PyObject*>s_fin, rid)
        if a == NULL:
            continue
        b = _dict_get(<PyObject*>r_add, rid)
        if b == NULL:
            continue
        c = _dict_get(<PyObject*>s_add, rid)
        if c == NULL:
            continue
        if not (_int64(a, &fin_ns) and _latency(b, t_ns, t0_ns, &lat_r) and _latency(c, fin_ns, 0, &lat_s)
                and _sub(lat_s, lat_r, &num)):
            return None
        if num > _EXACT or num < -_EXACT or lat_r > _EXACT:
            return None
        num = -num if num < 0 else num
        errs.append(<double>num / <double>(lat_r if lat_r > 1 else 1))
    return errs


def latencies_ms(list finishes, dict adds, t0):
    """fidelity's request latencies: ``(t - t0 - adds[req_id]) / 1e6`` for each ``(req_id, t)`` of ``finishes``
    whose req_id is in ``adds``, as a list. None where Python must compute (as in ``request_errs``)."""
    cdef list out = []
    cdef long long t0_ns = 0, t_ns = 0, lat_ns = 0
    cdef Py_ssize_t i
    cdef PyObject *rid
    cdef PyObject *a
    if not _int64(<PyObject*>t0, &t0_ns):
        return None
    for i in range(len(finishes)):
        rid = _finish_of(_list_item(<PyObject*>finishes, i), &t_ns)
        if rid == NULL:
            return None
        a = _dict_get(<PyObject*>adds, rid)
        if a == NULL:
            continue
        if not _latency(a, t_ns, t0_ns, &lat_ns):
            return None
        if lat_ns > _EXACT or lat_ns < -_EXACT:
            return None
        out.append(<double>lat_ns / 1e6)
    return out


cdef inline bint _plain(PyObject* v):
    """A value whose == cannot raise or run user code (what a trace read from a file holds)."""
    cdef void* t = _type(v)
    return t == _INT or t == _STR or v == _NONE or t == _BOOL or t == _FLOAT


def equal_batches_prefix(list rs, list ss, type sched_type, type req_type):
    """How many leading steps of two StepScheduled lists have equal compositions (step, then each entry's
    req_id, prefill_tokens, decode_tokens: fidelity's ``_batches_of``), stopping at the first step it cannot
    show equal: a difference, or anything but records exactly of ``sched_type`` / ``req_type`` whose fields
    are all plain values (``_plain``: then comparing whole entries, as fidelity's Python loop does first,
    cannot raise, so not doing it changes nothing). Fields are read in place, at the positions the types'
    ``_fields`` name."""
    cdef Py_ssize_t STEP = sched_type._fields.index("step"), REQS = sched_type._fields.index("reqs")
    cdef Py_ssize_t sched_min = max(STEP, REQS) + 1
    # the composition: what fidelity's _batches_of compares of each entry
    cdef Py_ssize_t[3] composition = [req_type._fields.index("req_id"), req_type._fields.index("prefill_tokens"),
                                      req_type._fields.index("decode_tokens")]
    cdef Py_ssize_t req_min = max(composition[0], composition[1], composition[2]) + 1
    cdef Py_ssize_t i, k, j, n = min(len(rs), len(ss))
    cdef PyObject *a
    cdef PyObject *b
    cdef PyObject *x
    cdef PyObject *y
    for i in range(n):
        a, b = _list_item(<PyObject*>rs, i), _list_item(<PyObject*>ss, i)
        if (_type(a) != <void*>sched_type or _type(b) != <void*>sched_type or _size(a) < sched_min
                or _size(b) < sched_min):
            return i
        x, y = _item(a, STEP), _item(b, STEP)
        if not (_plain(x) and _plain(y) and _eq(x, y, _Py_EQ)):
            return i
        a, b = _item(a, REQS), _item(b, REQS)  # the entries
        if _type(a) != _TUPLE or _type(b) != _TUPLE or _size(a) != _size(b):
            return i
        for k in range(_size(a)):
            x, y = _item(a, k), _item(b, k)
            if x == y:  # one object: equal without comparing, as in Python
                continue
            if _type(x) != <void*>req_type or _type(y) != <void*>req_type or _size(x) < req_min or _size(y) != _size(x):
                return i
            for j in range(_size(x)):
                if not (_plain(_item(x, j)) and _plain(_item(y, j))):
                    return i
            for j in range(3):
                if not _eq(_item(x, composition[j]), _item(y, composition[j]), _Py_EQ):
                    return i
    return n



def frames_of(records, procs):
    """The writer's frames of ``records``: ``(kind, record)``, or ``(kind, record, proc)`` where ``procs`` (None:
    all 0; else one per record) gives a non-zero process; ``kind`` is the record's ``KIND``. What
    ``TraceWriter.frames_of`` builds in Python (~90 ns a record, a third of writing a replay's trace), with the
    kind looked up once per run of one record type."""
    cdef list recs = records if type(records) is list else list(records)
    cdef Py_ssize_t i, n = len(recs)
    cdef list out = [None] * n
    cdef object r, t, proc, kind = None, last_type = None
    if procs is not None and len(procs) != n:
        raise ValueError(f"{len(procs)} processes for {n} records")
    for i in range(n):
        r = recs[i]
        t = type(r)
        if t is not last_type:
            kind, last_type = r.KIND, t
        if procs is not None:
            proc = procs[i]
            if proc:
                out[i] = (kind, r, proc)
                continue
        out[i] = (kind, r)
    return out
