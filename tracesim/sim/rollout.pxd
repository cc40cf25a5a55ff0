# Compiled build of rollout.py (setup.py): C-level types for the client's per-frame path. rollout.py stays the
# source and runs as plain Python where the build is missing or stale (tracesim/sim/_compiled.py).
cimport cython

from tracesim.sim.engine cimport Frame
from tracesim.sim.records_hot cimport output_delivered



cdef class Sample:
    cdef public object req_id
    cdef public object group
    cdef public object idx
    cdef public list tokens
    cdef public list stamps
    cdef public object label
    cdef public bint finished
    cdef public object reason
    cdef public object digest
    cdef public long long retries
    cdef public object stop_len
    cdef public long long carried
    cdef public bint spans_kept


@cython.locals(spans=list, start=Py_ssize_t, i=Py_ssize_t, n=Py_ssize_t)
cpdef tuple spans_of(list versions)

@cython.locals(first_token=bint, sample=Sample, sample_tokens=list, start=Py_ssize_t, sampled=Py_ssize_t,
               samples=dict, frame=Frame)
cpdef _deliver(client, batch)
