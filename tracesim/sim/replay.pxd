# Compiled build of replay.py (setup.py): C-level types for reading a recording's inputs (one pass over
# millions of records). replay.py stays the source and runs as plain Python where the build is missing or
# stale (tracesim/sim/_compiled.py).
cimport cython

cimport tracesim.sim.tuplenew as tuplenew


cdef class _Arrival:
    cdef public object add
    cdef public Py_ssize_t index
    cdef public long long out_len
    cdef public object reason
    cdef public object token_ids


cdef class _Scan:
    cdef public object t0
    cdef public dict scheds
    cdef public dict upds
    cdef public dict execs
    cdef public list picked
    cdef public dict before
    cdef dict _execs
    cdef Py_ssize_t _proc

    @cython.locals(i=Py_ssize_t, actions=Py_ssize_t, t=cython.longlong, t0=cython.longlong, proc=Py_ssize_t,
                   proc0=Py_ssize_t, paired=bint, scheds=dict, execs=dict, upds=dict)
    cpdef object _scan(self, records, procs, bint find_t0)


cdef bint _first_of_step(dict records, step, record)

cdef Py_ssize_t OUT_REQ_ID, OUT_SAMPLED, OUT_FINISH_REASON, OUT_TOKEN_IDS, T_NS, STEP

@cython.locals(a=_Arrival, current=dict)
cpdef list _arrivals(_Scan scan)
