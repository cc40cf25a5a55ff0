# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled columnizer: decoded msgpack frames -> numpy columns, as the unpacker produces them.

This is the fast path of ``tracesim.format.columns``. ``ColumnBuilder.add`` takes each frame straight from
the unpacker and writes its fields into row-major buffers while the frame's objects are still hot in the
cache; the frame is then freed at once, into the interpreter's free lists. It handles well-formed frames,
the evolution rules included (trailing fields dropped, missing ones defaulted), and raises ``Unusual`` the
moment anything is off (a wrong type, a short record, an int outside int64, a second header, ...). The
caller then reads the file again with the pure-Python columnizer, which is the reference: it raises the one
clear error, or accepts the odd value exactly as it always did. So this module never reproduces an error
message, and its tables are the pure-Python ones (tests compare the two on every bundled trace).

Why compiled: numpy converts Python values one cell at a time through generic paths (~150 ns a cell with
the checks); this typed loop costs a few ns a cell.
"""

import numpy as np

# Column kinds, chosen in columns.py from the field annotations (see _field_plan there).
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
    CHUNK_ROWS = 4096  # rows per buffer chunk: growing never copies, finishing copies each column once

cdef double NAN = float("nan")


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
    """Rows of one record kind (or one nested field) in row-major int64 / float64 buffers and object lists.

    Int slots 0 (and 1) hold ``index`` and ``proc`` of a record table, or ``row`` of a nested table.
    """

    cdef str path
    cdef tuple names
    cdef Py_ssize_t n, nfields, required, ni, nf, nkeys
    cdef Py_ssize_t chunk_end  # self.n at which the current chunk is full
    cdef tuple defaults
    cdef int tcode[MAX_FIELDS]
    cdef int mask[MAX_FIELDS]
    cdef int slot[MAX_FIELDS]
    cdef list ichunks, fchunks  # full and current row-major chunks; never copied while rows are added
    cdef long long* ip  # next row of the current chunks
    cdef double* fp
    cdef list olists
    cdef list children  # per field: _Table of a nested field, else None

    def __cinit__(self, str path, tuple fields, Py_ssize_t required, tuple defaults, int nkeys):
        cdef Py_ssize_t j
        if len(fields) > MAX_FIELDS:
            raise Unusual(path)
        self.path, self.required, self.defaults, self.nkeys = path, required, defaults, nkeys
        self.nfields = len(fields)
        self.names = tuple([f[0] for f in fields])
        self.ni, self.nf = nkeys, 0
        self.olists, self.children = [], []
        for j in range(self.nfields):
            name, tcode, mask, sub = fields[j]
            self.tcode[j], self.mask[j] = tcode, mask
            child = None
            if tcode == T_INT or tcode == T_BOOL or tcode == T_NESTED:
                self.slot[j] = self.ni
                self.ni += 1
                if tcode == T_NESTED:
                    sub_fields, sub_required, sub_defaults = sub
                    child = _Table(f"{path}.{name}", sub_fields, sub_required, sub_defaults, 1)
            elif tcode == T_FLOAT or tcode == T_OPTNUM:
                self.slot[j] = self.nf
                self.nf += 1
            else:
                self.slot[j] = len(self.olists)
                self.olists.append([])
            self.children.append(child)
        self.n, self.chunk_end = 0, 0
        self.ichunks, self.fchunks = [], []

    cdef _new_chunk(self):
        cdef long long[:, ::1] iv
        cdef double[:, ::1] fv
        ichunk = np.empty((CHUNK_ROWS, max(self.ni, 1)), dtype=np.int64)
        fchunk = np.empty((CHUNK_ROWS, max(self.nf, 1)), dtype=np.float64)
        self.ichunks.append(ichunk)
        self.fchunks.append(fchunk)
        iv, fv = ichunk, fchunk
        self.ip, self.fp = &iv[0, 0], &fv[0, 0]
        self.chunk_end = self.n + CHUNK_ROWS

    cdef object _column(self, list chunks, Py_ssize_t slot):
        """One column out of the row-major chunks, contiguous."""
        if not chunks:  # a nested table whose parents never held an entry
            return np.empty(0, dtype=np.int64 if chunks is self.ichunks else np.float64)
        last = len(chunks) - 1  # (no negative indexing: wraparound is off in this module)
        parts = [c[:, slot] for c in chunks[:last]]
        parts.append(chunks[last][:self.n - last * CHUNK_ROWS, slot])
        return np.concatenate(parts) if len(parts) != 1 else parts[0].copy()

    cdef add(self, tuple rec, long long key0, long long key1):
        cdef Py_ssize_t j, k, nrec = len(rec), count
        cdef int t
        cdef long long* irow
        cdef double* frow
        cdef tuple entries
        cdef _Table child
        if nrec < self.required:
            raise Unusual(self.path)
        if self.n == self.chunk_end:
            self._new_chunk()
        irow = self.ip
        frow = self.fp
        irow[0] = key0
        if self.nkeys == 2:
            irow[1] = key1
        for j in range(self.nfields):
            v = rec[j] if j < nrec else self.defaults[j - self.required]
            t = self.tcode[j]
            if t == T_INT:
                if type(v) is not int:
                    raise Unusual(self.path)
                try:
                    irow[self.slot[j]] = v
                except OverflowError:
                    raise Unusual(self.path)
            elif t == T_OBJ:
                if not (_type_bit(v) & self.mask[j]):
                    raise Unusual(self.path)
                (<list>self.olists[self.slot[j]]).append(v)
            elif t == T_FLOAT or t == T_OPTNUM:
                if type(v) is float or type(v) is int:
                    frow[self.slot[j]] = v
                elif v is None and t == T_OPTNUM:
                    frow[self.slot[j]] = NAN
                else:
                    raise Unusual(self.path)
            elif t == T_BOOL:
                if v is True:
                    irow[self.slot[j]] = 1
                elif v is False:
                    irow[self.slot[j]] = 0
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
                        child.add(<tuple>e, self.n, 0)
                irow[self.slot[j]] = count
        self.n += 1
        self.ip += self.ni
        self.fp += self.nf

    cdef finish(self, dict tables):
        """Insert this table (after its nested tables, the reference order) into ``tables``."""
        cdef Py_ssize_t j, r, n = self.n
        cdef object[::1] objs
        cdef list lst
        if self.nkeys == 2:
            table = {"index": self._column(self.ichunks, 0), "proc": self._column(self.ichunks, 1)}
        else:
            table = {"row": self._column(self.ichunks, 0)}
        for j in range(self.nfields):
            t = self.tcode[j]
            if t == T_INT or t == T_NESTED:
                col = self._column(self.ichunks, self.slot[j])
                if t == T_NESTED:
                    (<_Table>self.children[j]).finish(tables)
            elif t == T_BOOL:
                col = self._column(self.ichunks, self.slot[j]).astype(np.bool_)
            elif t == T_FLOAT or t == T_OPTNUM:
                col = self._column(self.fchunks, self.slot[j])
            else:
                lst = <list>self.olists[self.slot[j]]
                col = np.empty(n, dtype=object)
                objs = col
                for r in range(n):
                    objs[r] = lst[r]
            table[self.names[j]] = col
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
