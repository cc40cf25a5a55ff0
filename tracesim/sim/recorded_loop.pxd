# Compiled build of recorded_loop.py (setup.py): C-level types for gathering a recording's loop (one pass over its
# millions of deliveries) and counting its version labels. recorded_loop.py stays the source and runs as plain
# Python where the build is missing or stale (tracesim/sim/_compiled.py).
cimport cython

cimport tracesim.sim.tuplenew as tuplenew

cdef Py_ssize_t T_NS, DELIVERED_REQ_ID, DELIVERED_FINISHED, DELIVERED_SPANS, DELIVERED_DIGEST
cdef Py_ssize_t ADDED_REQ_ID, ADDED_SIDE, ADDED_VERSION, REWARD_REQ_ID, REWARD_DIGEST, REWARD_VERSION
cdef Py_ssize_t CONSUMED_SAMPLES, SAMPLE_REQ_ID, SAMPLE_VERSION, SPAN_VERSION


@cython.final
cdef class _Req:
    cdef public object req_id
    cdef public list adds
    cdef public list firsts
    cdef public list incs
    cdef public list rewarded


@cython.final
cdef class _Incarnation:
    cdef public object fin
    cdef public long long t
    cdef public object digest
    cdef public object admission
    cdef public object first_token
    cdef public object finish
    cdef public object spans


@cython.final
cdef class _Fit:
    cdef public long long matched
    cdef public long long known
    cdef public long long rest_matched
    cdef public long long rest_known


@cython.final
cdef class _Seen:
    cdef public long long labels
    cdef public long long on_rewards
    cdef public _Fit admission
    cdef public _Fit first_token
    cdef public _Fit finish
    cdef public _Fit spans
    cdef public long long crossing
    cdef public long long kept
    cdef public long long late_known
    cdef public long long late_matched
    cdef public long long checked
    cdef public long long differ
    cdef public object first_differ


cdef _Req _req(dict reqs, req_id)

@cython.locals(req=_Req)
cdef _client_adds(added, dict reqs, list order)

@cython.locals(open_=dict, done=dict, reward_reqs=list, i=Py_ssize_t, n=Py_ssize_t, req=_Req)
cdef list _deliveries(delivered, list rewards, dict reqs, list delivering, list finishing, list set_t, list set_v)

@cython.locals(req=_Req)
cdef _Req _rewarded(r, dict reqs, dict done)

@cython.locals(inc=_Incarnation)
cdef _Incarnation _incarnation(list set_t, list set_v, _Req req, k, fin)

@cython.locals(lo=Py_ssize_t, hi=Py_ssize_t, mid=Py_ssize_t)
cdef _version_at(list set_t, list set_v, t)

@cython.locals(i=Py_ssize_t)
cdef _last_reward_before(list rewarded, t)

@cython.locals(k=Py_ssize_t, inc=_Incarnation)
cdef Py_ssize_t _final_index(list incs, long long t) except? -2

@cython.locals(i=Py_ssize_t, at=cython.longlong, before=cython.longlong)
cdef _admission(list adds, t)

@cython.locals(seen=_Seen, set_t=list, set_v=list, rewards=list, reward_reqs=list, reqs=dict, waiting=dict,
               i=Py_ssize_t, n=Py_ssize_t, req=_Req, k=Py_ssize_t, inc=_Incarnation)
cdef _Seen _gather(rec)

@cython.locals(k=Py_ssize_t, inc=_Incarnation)
cdef _count_reward(_Seen seen, list set_t, list set_v, r, _Req req, dict waiting)

@cython.locals(crossing=bint)
cdef _count(_Seen seen, label, _Incarnation inc, at_read)

@cython.locals(matched=bint)
cdef _tally(_Fit fit, label, v, bint crossing)

@cython.locals(i=Py_ssize_t, k=Py_ssize_t, req=_Req, t=cython.longlong)
cdef list _reward_finals(list rewards, list reward_reqs)
