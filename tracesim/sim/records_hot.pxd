# Compiled build of records_hot.py (setup.py): the hot records' builders, called in C by the modules that
# cimport this one. Values pass through as Python objects (no coercion: a record holds what it was given).
cimport tracesim.sim.tuplenew as tuplenew


cpdef object sched_req(req_id, prefill_tokens, decode_tokens, resumed, cached_tokens, spec_tokens, computed_tokens,
                       placeholders)
cpdef object out_req(req_id, sampled, finish_reason, stale, token_ids, logprobs)
cpdef object step_scheduled(t_ns, end_ns, step, reqs, preempted, finished, waiting, running, queue_depth, pause_state,
                            kv_usage)
cpdef object step_executed(t_ns, end_ns, step, version)
cpdef object step_updated(t_ns, end_ns, step, outs, version)
cpdef object output_delivered(t_ns, req_id, start_idx, num_tokens, finished, finish_reason, spans, digest)
cpdef object reward_bound(t_ns, req_id, digest, version, reward, group_id, worker)
