# Compiled build of scheduler.py (setup.py): C-level types for the request and the scheduling loops.
# scheduler.py stays the source and runs as plain Python where the build is missing or stale
# (tracesim/sim/_compiled.py). Fields a recording may leave unset (None) stay Python objects.
cimport cython

from tracesim.sim.kvcache cimport BlockPool
from tracesim.sim.records_hot cimport out_req, sched_req


cpdef bint fault_hit(rng, double p)


cdef class SimReq:
    cdef public str req_id
    cdef public long long prompt_len
    cdef public long long max_tokens
    cdef public long long stop_len
    cdef public object prompt_key
    cdef public object group_id
    cdef public object sample_idx
    cdef public object group_size
    cdef public long long status
    cdef public long long num_computed
    cdef public long long placeholders
    cdef public long long inflight
    cdef public long long incarnation
    cdef public bint preempted
    cdef public bint drop_inflight
    cdef public long long stale_share
    cdef public long long preempt_out_len
    cdef public list blocks
    cdef public long long committed
    cdef public object arrival_ns
    cdef public object prompt_block_keys
    cdef public object known_output
    cdef public list _output_keys
    cdef public list out_tokens
    cdef public list stamp_versions
    cdef public object finish_reason
    cdef public long long hash
    cdef public object sampled_out

    @cython.locals(keys=list, first=Py_ssize_t, j=Py_ssize_t, lo=Py_ssize_t, hi=Py_ssize_t)
    cpdef object block_key(self, Py_ssize_t i, Py_ssize_t block_size)
    cpdef list block_keys(self, Py_ssize_t upto, Py_ssize_t block_size)


@cython.final
@cython.freelist(256)
cdef class Planned:
    cdef public SimReq req
    cdef public long long num_tokens
    cdef public long long computed_before
    cdef public bint resumed
    cdef public long long cached
    cdef public long long incarnation
    cdef public bint samples
    cdef public bint admitted


@cython.locals(p=Planned)
cpdef Planned new_planned(SimReq req, long long num_tokens, long long computed_before, bint resumed, long long cached,
                          long long incarnation, bint samples, bint admitted)

@cython.locals(p=Planned, req=SimReq, n=cython.longlong, before=cython.longlong, decode=cython.longlong, out=list)
cpdef tuple sched_reqs(planned)


cdef class Scheduler:
    cdef public object cfg
    cdef public BlockPool pool
    cdef public long long watermark_blocks
    cdef public object waiting
    cdef public list running
    cdef public dict requests
    cdef public long long pause_state
    cdef public list finished_since
    cdef public double p_new_incarnation
    cdef public double p_missing_context
    cdef public object fault_rng

    cpdef _finish(self, SimReq req, str reason)
    @cython.locals(live=list, req=SimReq)
    cpdef list abort_requests(self, req_ids)
    cpdef set_pause_state(self, long long state)
    cpdef bint has_finished(self)
    cpdef tuple take_finished(self)
    cpdef Py_ssize_t num_running(self)
    cpdef double kv_usage(self)
    cpdef preempt(self, SimReq req, bint drop_inflight)
    @cython.locals(running=list, budget=cython.longlong, threshold=cython.longlong, bs=cython.longlong,
                   async_sched=bint, planned=list, preempted=list, req=SimReq, victim=SimReq,
                   computed=cython.longlong, ph=cython.longlong, num_tokens=cython.longlong, n=cython.longlong,
                   total=cython.longlong, samples=bint, n_running=Py_ssize_t)
    cpdef tuple schedule(self)
    cpdef long long _cap(self, long long n, long long budget, long long threshold)
    @cython.locals(bs=cython.longlong, skipped=list, req=SimReq, hits=list, cached=cython.longlong,
                   n=cython.longlong, reserve=cython.longlong, whole=cython.longlong, keys=list,
                   loaded=cython.longlong)
    cpdef long long _admit(self, list planned, long long budget, long long threshold)
    @cython.locals(bs=cython.longlong, have=cython.longlong, base=cython.longlong, total=cython.longlong,
                   need=cython.longlong)
    cpdef bint _allocate(self, SimReq req, long long n, list hits, long long reserve=*, long long loaded=*)
    @cython.locals(bs=cython.longlong, full=cython.longlong, i=cython.longlong)
    cpdef _commit(self, SimReq req, long long upto)
    @cython.locals(req=SimReq)
    cpdef _after_schedule(self, Planned p)
    cpdef _resume_context(self, SimReq req)
    @cython.locals(p_apply_stale=double, share=bint, async_sched=bint, bs=cython.longlong, version_term=cython.longlong, outs=list,
                   req=SimReq, stale=bint, status=cython.longlong, out_tokens=list, n_out=cython.longlong,
                   upto=cython.longlong, incarnation=cython.longlong, samples=bint, p=Planned)
    cpdef list update(self, list planned, long long exec_version, long long stamp_version)
