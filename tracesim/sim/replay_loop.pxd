# Compiled build of replay_loop.py (setup.py): C-level types for the replayed RL loop's per-sample path (a
# final frame, a reward scheduled and bound, a consumption waiting). replay_loop.py stays the source and runs
# as plain Python where the build is missing or stale (tracesim/sim/_compiled.py).
cimport cython

from tracesim.sim.records_hot cimport reward_bound


cdef int LABEL_ADMISSION, LABEL_SPANS, LABEL_FIRST_TOKEN, LABEL_FINISH


@cython.final
cdef class _Sample:
    cdef public object digest
    cdef public object label
    cdef public Py_ssize_t finals
    cdef public Py_ssize_t n_bound
    cdef public object last_bound_ns
    cdef public object last_reward
    cdef public Py_ssize_t pending
    cdef public bint idle
    cdef public list waiters


@cython.final
cdef class ReplayLoop:
    cdef public object rec
    cdef public object policy
    cdef public list reasons
    cdef public object extra_ns
    cdef public object t0
    cdef public bint arrival
    cdef public bint late
    cdef public int label_mode
    cdef public dict _attached
    cdef public list _loose
    cdef public dict _last_add
    cdef public dict _samples
    cdef public dict _first
    cdef public object _handed
    cdef public Py_ssize_t _pending
    cdef public bint _ended
    cdef public object _quiet
    cdef public list _events
    cdef public object env
    cdef public object engine
    cdef public object client
    cdef public object emit

    cpdef _Sample _state(self, req_id)
    @cython.locals(st=_Sample, k=Py_ssize_t, mode=int, todo=list)
    cpdef _final(self, sample, reason, digest)
    @cython.locals(st=_Sample)
    cpdef _schedule(self, scored, r, delay_ns)
    @cython.locals(st=_Sample)
    cpdef _bind(self, ev)
    @cython.locals(st=_Sample)
    cpdef _digest_now(self, req_id)
    cpdef _set_idle(self, _Sample st)
    @cython.locals(keep=list)
    cpdef _wake(self, _Sample st)
    @cython.locals(st=_Sample)
    cpdef _wait(self, req_id, n)
