# Compiled build of timing.py (setup.py): RecordedTiming's look-ups read C arrays. timing.py stays the source and
# runs as plain Python where the build is missing or stale (tracesim/sim/_compiled.py).
cimport cython


cdef class RecordedTiming:
    cdef public long long first_step
    cdef public object rows
    cdef public Py_ssize_t num_rows
    cdef long long[::1] sched
    cdef long long[::1] upd
    cdef long long[::1] exec_
    cdef long long[::1] sched_gap
    cdef long long[::1] upd_gap
    cdef public object fallback

    @cython.locals(row=cython.longlong)
    cpdef Py_ssize_t _row(self, step)
    @cython.locals(row=Py_ssize_t)
    cpdef object exec_ns(self, step, reqs)
    @cython.locals(row=Py_ssize_t)
    cpdef object sched_ns(self, step)
    @cython.locals(row=Py_ssize_t)
    cpdef object upd_ns(self, step)
    @cython.locals(row=Py_ssize_t, v=cython.longlong)
    cpdef object gap_ns(self, kind, step)


cdef long long _MISSING
