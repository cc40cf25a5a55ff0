"""Builders of the records the simulator makes on its hot paths (per step, per request and step, per frame).

Each builder takes every field of its record by name (the parameters are the record's fields, in order) and
builds it without the NamedTuple's Python-level ``__new__`` (``tuplenew.new_tuple``): callers pass fields by
keyword, so no value goes by anonymous position, and the field order lives here alone.
``tests/test_sim_records_hot.py`` checks each builder against its record's ``_fields`` in both builds.
Compiled by setup.py (typed by ``records_hot.pxd``); other compiled modules call the builders in C. Records
made off the hot paths are built with their NamedTuple's keywords.
"""

from __future__ import annotations

from tracesim.format.records import (
    OutputDelivered, OutReq, RewardBound, SchedReq, StepExecuted, StepScheduled, StepUpdated,
)
import tracesim.sim.tuplenew as tuplenew


def sched_req(req_id, prefill_tokens, decode_tokens, resumed, cached_tokens, spec_tokens, computed_tokens,
              placeholders):
    """A ``SchedReq``."""
    return tuplenew.new_tuple(SchedReq, (req_id, prefill_tokens, decode_tokens, resumed, cached_tokens, spec_tokens,
                                         computed_tokens, placeholders))


def out_req(req_id, sampled, finish_reason, stale, token_ids, logprobs):
    """An ``OutReq``."""
    return tuplenew.new_tuple(OutReq, (req_id, sampled, finish_reason, stale, token_ids, logprobs))


def step_scheduled(t_ns, end_ns, step, reqs, preempted, finished, waiting, running, queue_depth, pause_state,
                   kv_usage):
    """A ``StepScheduled``."""
    return tuplenew.new_tuple(StepScheduled, (t_ns, end_ns, step, reqs, preempted, finished, waiting, running,
                                              queue_depth, pause_state, kv_usage))


def step_executed(t_ns, end_ns, step, version):
    """A ``StepExecuted``."""
    return tuplenew.new_tuple(StepExecuted, (t_ns, end_ns, step, version))


def step_updated(t_ns, end_ns, step, outs, version):
    """A ``StepUpdated``."""
    return tuplenew.new_tuple(StepUpdated, (t_ns, end_ns, step, outs, version))


def output_delivered(t_ns, req_id, start_idx, num_tokens, finished, finish_reason, spans, digest):
    """An ``OutputDelivered``."""
    return tuplenew.new_tuple(OutputDelivered, (t_ns, req_id, start_idx, num_tokens, finished, finish_reason, spans,
                                                digest))


def reward_bound(t_ns, req_id, digest, version, reward, group_id, worker):
    """A ``RewardBound`` (a replayed loop binds one per recorded reward: replay_loop.py)."""
    return tuplenew.new_tuple(RewardBound, (t_ns, req_id, digest, version, reward, group_id, worker))


BUILDERS = {SchedReq: sched_req, OutReq: out_req, StepScheduled: step_scheduled, StepExecuted: step_executed,
            StepUpdated: step_updated, OutputDelivered: output_delivered, RewardBound: reward_bound}

__all__ = ["sched_req", "out_req", "step_scheduled", "step_executed", "step_updated", "output_delivered",
           "reward_bound", "BUILDERS"]
