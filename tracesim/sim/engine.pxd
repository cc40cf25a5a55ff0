# Compiled build of engine.py (setup.py): C-level types for the engine core's per-step path. engine.py stays
# the source and runs as plain Python where the build is missing or stale (tracesim/sim/_compiled.py).
cimport cython

cimport tracesim.sim.tuplenew as tuplenew
from tracesim.sim.records_hot cimport step_executed, step_scheduled, step_updated
from tracesim.sim.scheduler cimport Planned, SimReq

cdef Py_ssize_t OUT_REQ_ID, OUT_SAMPLED, OUT_FINISH_REASON, OUT_STALE


@cython.final
@cython.freelist(256)
cdef class Frame:
    cdef public str req_id
    cdef public Py_ssize_t sampled
    cdef public object tokens
    cdef public object stamps
    cdef public object finish_reason

@cython.locals(f=Frame)
cdef Frame new_frame(str req_id, Py_ssize_t sampled, tokens, stamps, finish_reason)


cdef class InFlight:
    cdef public long long step
    cdef public object planned
    cdef public object done
    cdef public object exec_version
    cdef public long long start_ns
    cdef public long long end_ns
    cdef public bint forward


cdef class Engine:
    cdef public object env
    cdef public object cfg
    cdef public object timing
    cdef public object emit
    cdef public object on_output
    cdef public object sched
    cdef public object version
    cdef public object weights_version
    cdef public long long step
    cdef public object inputs
    cdef public object queue
    cdef public object pause
    cdef public long long gpu_free_ns
    cdef public object progress
    cdef public object feed
    cdef public long long actions
    cdef public object hooks
    cdef public object _wake
    cdef public bint client_stepped
    cdef public object out_faults

    cpdef bint _feed_due(self)
    cpdef _drain_inputs(self)
    @cython.locals(step=cython.longlong, flight=InFlight)
    cpdef _submit(self, planned, preempted, t0)
    cpdef _apply_output(self, InFlight flight, t0)
    cpdef bint _can_schedule(self)
    cpdef _maybe_finish_pause(self)


cpdef Frame _frame(SimReq req, Py_ssize_t sampled, reason)

@cython.locals(frames=list, req=SimReq, p=Planned)
cpdef list _frames(planned, outs, faults)
