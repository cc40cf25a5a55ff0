"""Mutation corpus for the invariant checkers (issue 14).

Two clean bases, the real vLLM abort-mode recording (``traces/vllm-abort.msgpack``) and a simulated run of
``scenarios/default.toml``, are corrupted the way a real bug in an RL loop or in the engine would corrupt them.
Every case names the invariant that must fire and, where it can, the request or step it must name. Controls
(a constant time shift, consistent renames, permutations of concurrent records, a consistent change of reward
values, token ids recorded consistently) must keep the report clean, and must not change what a corruption
breaks. A corruption that no invariant catches is a finding: it stays in the table as a strict xfail.

The absences of issue 14 (a reward, a final frame, a step's update; token content across the two sides; a
finished sample re-admitted) are rows like the others: the invariants added for them must fire.

Some mutations cannot be expressed on a base: the recording has no ``StepExecuted`` records (so no "forward
pass executed twice"), and the simulated default run drops only samples that the engine aborted (so no
"finished sample dropped silently" with a plain finish there, its aborted counterpart is used instead, and no
group dropped as stale, so "stale group consumed" runs on the recording only).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import pytest
from conftest import REPO, TRACES
from hypothesis import given, settings
from hypothesis import strategies as st

from tracesim.check import Policy, check_trace
from tracesim.format import (
    Aborted, CacheReset, OutputDelivered, OutReq, RequestAdded, RewardBound, SampleDropped, StepExecuted,
    StepScheduled, StepUpdated, Trace, TrainerConsumed, WeightsUpdated, read_trace, token_digest,
)

sim_run = pytest.importorskip("tracesim.sim.run")
scenario_mod = pytest.importorskip("tracesim.sim.scenario")

REWARD = "reward_bound_to_own_tokens"
CONSUMED = "consumed_sample_matches_binding"
LABEL = "tokens_from_labelled_version"
KV = "no_stale_kv"
ONCE = "tokens_delivered_exactly_once"
FRAMES = "output_applies_to_scheduling_incarnation"
WRITE = "no_weight_write_during_forward"
ENDS = "sample_ends_exactly_once"
LIVE = "request_ids_live_once"
GROUPS = "groups_whole_and_consistent"
LAG = "version_lag_within_bound"
STEPS = "steps_well_formed"
ORIGINAL = (REWARD, CONSUMED, LABEL, KV, ONCE, FRAMES, WRITE, ENDS, LIVE, GROUPS, LAG, STEPS)
# Invariants added for issue 14 (absence made a violation).
REWARDED = "reward_bound_before_consumption"
DELIVERED = "finished_output_delivered"
TOKENS = "client_tokens_match_engine"

POLICY = Policy()  # both bases are clean under the strict policy (tests/expected_checks.json, test_check_sim.py)
SIM_SEED = 0

# --- bases ------------------------------------------------------------------------------------------------

_BASES: dict = {}


def base(name: str) -> Trace:
    """The clean base trace ``name`` ("rec": the real abort-mode recording, "sim": a simulated default run)."""
    if name not in _BASES:
        if name == "rec":
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                _BASES[name] = read_trace(TRACES / "vllm-abort.msgpack")
        else:
            scenario = scenario_mod.load_scenario(REPO / "scenarios" / "default.toml")
            _BASES[name] = sim_run.simulate(sim_run.RunInputs(scenario, SIM_SEED, ()))
    return _BASES[name]


class _Lists(dict):
    """req_id / group_id -> list; a missing key reads as an empty list (and is not inserted)."""

    def __missing__(self, key):
        return []

    def add(self, key, value) -> None:
        self.setdefault(key, []).append(value)


class Facts:
    """What the mutations need to know about a base, gathered once from its records (not from the checkers)."""

    def __init__(self, trace: Trace):
        self.frames, self.rewards = _Lists(), _Lists()
        self.consumed: dict = {}  # req_id -> (TrainerConsumed, ConsumedSample)
        self.batches: list = []
        self.client_add, self.engine_add, self.dropped = {}, {}, {}
        self.members = _Lists()  # group_id -> client-admitted req_ids, in order
        self.sched, self.version = {}, {}  # step -> StepScheduled / weight version
        self.sched_steps, self.out_steps = _Lists(), _Lists()  # req_id -> steps
        self.finished_at: dict = {}  # req_id -> step whose output finished it (not by abort)
        self.aborted_at: dict = {}  # req_id -> time of the first Aborted naming it
        self.weights = [r for r in trace.records if type(r) is WeightsUpdated]
        self.windows = forward_windows(trace)
        exec_version = {}
        for r in trace.records:
            t = type(r)
            if t is OutputDelivered:
                self.frames.add(r.req_id, r)
            elif t is RewardBound:
                self.rewards.add(r.req_id, r)
            elif t is TrainerConsumed:
                self.batches.append(r)
                for s in r.samples:
                    self.consumed[s.req_id] = (r, s)
            elif t is RequestAdded and r.side == "client":
                self.client_add[r.req_id] = r
                self.members.add(r.group_id, r.req_id)
            elif t is RequestAdded:
                self.engine_add[r.req_id] = r
            elif t is Aborted:
                for q in r.req_ids:
                    self.aborted_at.setdefault(q, r.t_ns)
            elif t is SampleDropped:
                self.dropped.update((q, r) for q in r.req_ids)
            elif t is StepScheduled:
                self.sched[r.step] = r
                for q in r.reqs:
                    self.sched_steps.add(q.req_id, r.step)
            elif t is StepExecuted:
                exec_version[r.step] = r.version
            elif t is StepUpdated:
                self.version[r.step] = exec_version.get(r.step, r.version)
                for o in r.outs:
                    if o.sampled > 0:
                        self.out_steps.add(o.req_id, r.step)
                    if o.finish_reason not in (None, "abort"):
                        self.finished_at[o.req_id] = r.step
        self.steps = sorted(self.sched)

    def final(self, req: str):
        return next((f for f in self.frames[req] if f.finished), None)

    def siblings(self, req: str) -> list:
        return [m for m in self.members[self.client_add[req].group_id] if m != req]

    def sibling_final(self, req: str):
        """A group sibling's final frame with other tokens than ``req``'s, or None."""
        own = self.final(req)
        finals = [self.final(m) for m in self.siblings(req)]
        return next((f for f in finals if f is not None and f.digest and own and f.digest != own.digest), None)

    def later_batch(self, req: str, newer: bool = False):
        """The first trainer batch after ``req``'s (with a higher trainer version when ``newer``), or None."""
        tc = self.consumed[req][0]
        later = self.batches[self.batches.index(tc) + 1:]
        return next((b for b in later if not newer or (b.trainer_version or 0) > (tc.trainer_version or 0)), None)


_FACTS: dict = {}


def facts(trace: Trace) -> Facts:
    if id(trace) not in _FACTS:
        _FACTS[id(trace)] = (trace, Facts(trace))
    return _FACTS[id(trace)][1]


# --- editing a record stream --------------------------------------------------------------------------------

_ENGINE_TYPES = (StepScheduled, StepExecuted, StepUpdated, CacheReset)


def is_(cls, **fields) -> Callable:
    return lambda r: type(r) is cls and all(getattr(r, k) == v for k, v in fields.items())


def holding(req: str) -> Callable:
    """Matches the trainer batch that consumed ``req``."""
    return lambda r: type(r) is TrainerConsumed and any(s.req_id == req for s in r.samples)


class Edit:
    """A mutable copy of a trace's record stream (records and the parallel process list); ``done()`` rebuilds."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.recs = list(trace.records)
        self.procs = list(trace.procs) or [0] * len(self.recs)
        pairs = list(zip(self.procs, self.recs))
        self.engine_proc = next((p for p, r in pairs if type(r) is StepScheduled), 0)
        self.client_proc = next((p for p, r in pairs if type(r) is RequestAdded and r.side == "client"), 0)

    def done(self) -> Trace:
        return dataclasses.replace(self.trace, records=self.recs, procs=self.procs if self.trace.procs else [])

    def find(self, pred, start: int = 0) -> int:
        return next(i for i in range(start, len(self.recs)) if pred(self.recs[i]))

    def find_all(self, pred) -> list:
        return [i for i, r in enumerate(self.recs) if pred(r)]

    def insert(self, i: int, rec) -> None:
        engine = isinstance(rec, _ENGINE_TYPES) or getattr(rec, "side", None) == "engine"
        self.recs.insert(i, rec)
        self.procs.insert(i, self.engine_proc if engine else self.client_proc)

    def delete(self, i: int):
        del self.procs[i]
        return self.recs.pop(i)

    def update(self, i: int, **fields) -> None:
        self.recs[i] = self.recs[i]._replace(**fields)

    def edit_sample(self, req: str, **fields) -> None:
        """Change the ConsumedSample of ``req`` in the batch that consumed it."""
        i = self.find(holding(req))
        samples = tuple(s._replace(**fields) if s.req_id == req else s for s in self.recs[i].samples)
        self.update(i, samples=samples)

    def take_sample(self, req: str):
        """Remove ``req``'s ConsumedSample from its batch and return it."""
        i = self.find(holding(req))
        sample = next(s for s in self.recs[i].samples if s.req_id == req)
        self.update(i, samples=tuple(s for s in self.recs[i].samples if s.req_id != req))
        return sample

    def add_sample(self, batch: TrainerConsumed, sample) -> None:
        """Append ``sample`` to ``batch`` (found by its train step, so earlier edits of it are kept)."""
        i = self.find(lambda r: type(r) is TrainerConsumed and r.train_step == batch.train_step)
        self.update(i, samples=self.recs[i].samples + (sample,))


def mid(xs: list):
    return xs[len(xs) // 2]


def edited(fn: Callable) -> Callable:
    """Decorator: ``fn(edit, facts, target)`` becomes ``mutation(trace, target) -> Trace``."""

    def mutation(trace: Trace, target) -> Trace:
        e = Edit(trace)
        fn(e, facts(trace), target)
        return e.done()

    mutation.__name__, mutation.__doc__ = fn.__name__, fn.__doc__
    return mutation


# --- targets: which requests / steps / weight updates a mutation applies to --------------------------------


class Weights(NamedTuple):
    """A weight update as a mutation target (the violation must name its version)."""

    index: int
    version: int


def rewarded(f: Facts) -> list:
    return sorted(r for r in f.rewards if f.out_steps[r])


def not_last_reward(f: Facts) -> list:
    """Requests scored once, with another reward bound after theirs."""
    last = max((rw for rws in f.rewards.values() for rw in rws), key=lambda rw: rw.t_ns)
    return [r for r in rewarded(f) if r != last.req_id and len(f.rewards[r]) == 1]


def with_spans(f: Facts) -> list:
    return [r for r in rewarded(f) if f.final(r) is not None and f.final(r).spans]


def with_other_sibling(f: Facts) -> list:
    return [r for r in rewarded(f) if f.sibling_final(r) is not None]


def consumed(f: Facts) -> list:
    return sorted(f.consumed)


def consumed_with_other_sibling(f: Facts) -> list:
    return [r for r in consumed(f) if f.sibling_final(r) is not None]


def consumed_with_other_reward(f: Facts) -> list:
    return [r for r in consumed(f) if any(f.rewards[m] and f.rewards[m][-1].reward != f.rewards[r][-1].reward
                                          for m in f.siblings(r))]


def consumed_before_a_batch(f: Facts) -> list:
    return [r for r in consumed(f) if f.later_batch(r) is not None]


def consumed_before_an_update(f: Facts) -> list:
    return [r for r in consumed(f) if f.later_batch(r, newer=True) is not None]


def dropped_as_stale(f: Facts) -> list:
    return sorted(r for r, d in f.dropped.items() if d.reason.startswith("stale") and f.rewards[r]
                  and any(b.t_ns > d.t_ns for b in f.batches))


def dropped_not_retried(f: Facts) -> list:
    """Dropped samples that no later member of their group (same sample_idx) retried."""
    out = []
    for r in f.dropped:
        add = f.client_add[r]
        later = f.members[add.group_id][f.members[add.group_id].index(r) + 1:]
        if not any(f.client_add[m].sample_idx == add.sample_idx for m in later):
            out.append(r)
    return sorted(out)


def streamed(f: Facts) -> list:
    """Requests with a non-final, non-empty second frame (and so at least three frames)."""
    return sorted(r for r, fs in f.frames.items() if len(fs) >= 3 and fs[1].num_tokens > 0 and not fs[1].finished)


def streaming(f: Facts) -> list:
    """Streamed requests still live (not aborted) when their second frame arrives."""
    return [r for r in streamed(f) if f.frames[r][1].t_ns < f.aborted_at.get(r, float("inf"))]


def finished(f: Facts) -> list:
    """Requests the engine finished (stop / length) and whose final frame reached the client."""
    return sorted(r for r in f.finished_at if f.final(r) is not None and f.final(r).num_tokens > 0)


def finished_mid_trace(f: Facts) -> list:
    return [r for r in finished(f) if f.finished_at[r] < f.steps[-1]]


def multi_step(f: Facts) -> list:
    return sorted(r for r, steps in f.out_steps.items() if len(steps) >= 3)


def token_steps(f: Facts) -> list:
    """Steps (not the last) whose output gave tokens to some request."""
    return sorted({s for steps in f.out_steps.values() for s in steps} - {f.steps[-1]})


def inner_steps(f: Facts) -> list:
    return f.steps[1:-1]


def swap_steps(f: Facts) -> list:
    """Steps k before a weight update (some later step runs a newer version) at which a request that already
    has KV from an earlier step produces a labelled token."""
    newest = max(v for v in f.version.values() if v is not None)
    out = []
    for k in f.steps[1:]:
        v = f.version.get(k)
        if v is None or v >= newest:
            continue
        if any(k in f.out_steps[r] and f.rewards[r] and min(f.sched_steps[r]) < k for r in f.out_steps):
            out.append(k)
    return out


def first_with_prompt_after_update(f: Facts) -> list:
    """Requests first scheduled under a newer version than step 0's, before any other request with the same
    prompt in that version (so a prefix hit could only be on KV of older weights)."""
    first_v, seen, out = f.version[f.steps[0]], set(), []
    for s in f.steps:
        v = f.version.get(s)
        for q in f.sched[s].reqs:
            pd = f.engine_add[q.req_id].prompt_digest if q.req_id in f.engine_add else None
            if min(f.sched_steps[q.req_id]) != s or pd is None:
                continue
            if v != first_v and (v, pd) not in seen:
                out.append(q.req_id)
            seen.add((v, pd))
    return out


def weight_updates(f: Facts) -> list:
    return [Weights(i, w.version) for i, w in enumerate(f.weights)]


def updates_before_a_step(f: Facts) -> list:
    return [w for w in weight_updates(f) if any(s >= f.weights[w.index].end_ns for s, _e in f.windows)]


# --- mutations: reward_bound_to_own_tokens -------------------------------------------------------------------


@edited
def reward_scores_sibling(e, f, r):
    """r's reward is computed on a group sibling's final tokens (a reward worker reads the wrong slot)."""
    e.update(e.find_all(is_(RewardBound, req_id=r))[-1], digest=f.sibling_final(r).digest)


@edited
def rewards_matched_by_arrival(e, f, r):
    """Two rewards swap samples: the loop binds each score to whichever request it popped, not its own."""
    i = e.find(is_(RewardBound, req_id=r))
    j = e.find(lambda x: type(x) is RewardBound and x.req_id != r, i + 1)
    other = e.recs[j].req_id
    e.update(i, req_id=other)
    e.update(j, req_id=r)


@edited
def reward_before_final_frame(e, f, r):
    """r is scored on its streamed output before its final frame arrived."""
    rw = e.delete(e.find(is_(RewardBound, req_id=r)))
    i = e.find(lambda x: type(x) is OutputDelivered and x.req_id == r and x.finished)
    e.insert(i, rw._replace(t_ns=e.recs[i].t_ns - 1))


@edited
def final_frame_lost(e, f, r):
    """r's final frame never reaches the client (the stream is cut), yet r is scored and trained on."""
    e.delete(e.find(lambda x: type(x) is OutputDelivered and x.req_id == r and x.finished))


# --- consumed_sample_matches_binding ---------------------------------------------------------------------------


@edited
def trained_on_sibling_tokens(e, f, r):
    """The trainer batch carries a sibling's tokens in r's slot."""
    e.edit_sample(r, digest=f.sibling_final(r).digest)


@edited
def trained_with_sibling_reward(e, f, r):
    """The trainer batch carries a sibling's reward for r (rewards zipped to samples in the wrong order)."""
    other = next(f.rewards[m][-1].reward for m in f.siblings(r)
                 if f.rewards[m] and f.rewards[m][-1].reward != f.rewards[r][-1].reward)
    e.edit_sample(r, reward=other)


@edited
def label_reread_at_consumption(e, f, r):
    """The trainer re-reads the (already bumped) policy version as r's label at consumption."""
    e.edit_sample(r, version=f.rewards[r][-1].version + 1)


@edited
def consumed_without_reward(e, f, r):
    """r is trained on although no reward was ever bound to it (its reward record was lost)."""
    for i in reversed(e.find_all(is_(RewardBound, req_id=r))):
        e.delete(i)


@edited
def reward_bound_after_consumption(e, f, r):
    """r's reward is bound only after the trainer consumed r (the batch used a placeholder reward)."""
    rws = [e.delete(i) for i in reversed(e.find_all(is_(RewardBound, req_id=r)))]
    i = e.find(holding(r))
    for rw in rws:
        e.insert(i + 1, rw._replace(t_ns=e.recs[i].t_ns + 1))


# --- tokens_from_labelled_version ------------------------------------------------------------------------------


@edited
def label_reread_after_update(e, f, r):
    """Every label of r (admission, reward, consumption) names the next version: read after an update."""
    v = f.rewards[r][-1].version + 1
    e.update(e.find(is_(RequestAdded, req_id=r, side="client")), version=v)
    for i in e.find_all(is_(RewardBound, req_id=r)):
        e.update(i, version=v)
    if r in f.consumed:
        e.edit_sample(r, version=v)


@edited
def spans_misreport_version(e, f, r):
    """The engine stamps r's delivered version spans with the next version (a stale counter)."""
    i = e.find(lambda x: type(x) is OutputDelivered and x.req_id == r and x.finished)
    e.update(i, spans=tuple(sp._replace(version=sp.version + 1) for sp in e.recs[i].spans))


@edited
def weights_hot_swapped_at_step(e, f, k):
    """New weights are loaded into the running engine at step k (a keep-mode update without pause or reset):
    steps from k on run the next version while running requests keep their KV and their old labels."""
    v = f.version[k]
    steps = set()
    for s in f.steps[f.steps.index(k):]:
        if f.version.get(s) != v:
            break
        steps.add(s)
    for i, x in enumerate(e.recs):
        if type(x) in (StepExecuted, StepUpdated) and x.step in steps and x.version is not None:
            e.update(i, version=v + 1)


# --- no_stale_kv ------------------------------------------------------------------------------------------------


def _prefix_hit(e, r) -> None:
    i = e.find(lambda x: type(x) is StepScheduled and any(q.req_id == r for q in x.reqs))
    reqs = tuple(q._replace(cached_tokens=max(q.cached_tokens, 16)) if q.req_id == r else q
                 for q in e.recs[i].reqs)
    e.update(i, reqs=reqs)


@edited
def reset_refused_then_prefix_hit(e, f, r):
    """The cache reset at each update is refused (ok=False) and r, admitted after the update, reuses
    prefix-cached blocks computed by the old weights."""
    for i in e.find_all(lambda x: type(x) is CacheReset):
        e.update(i, ok=False)
    _prefix_hit(e, r)


@edited
def reset_skipped_then_prefix_hit(e, f, r):
    """The loop never resets the prefix cache on update, and r, admitted after it, hits old-weight blocks."""
    for i in reversed(e.find_all(lambda x: type(x) is CacheReset)):
        e.delete(i)
    _prefix_hit(e, r)


# --- tokens_delivered_exactly_once --------------------------------------------------------------------------------


def _frame(e, r, n: int) -> int:
    return e.find_all(is_(OutputDelivered, req_id=r))[n]


@edited
def frame_delivered_twice(e, f, r):
    """The stream re-delivers r's second frame after a reconnect."""
    i = _frame(e, r, 1)
    e.insert(i + 1, e.recs[i])


@edited
def frame_lost(e, f, r):
    """r's second frame is lost between the engine and the client."""
    e.delete(_frame(e, r, 1))


@edited
def frame_after_final(e, f, r):
    """The final frame of r is delivered twice (the last message is replayed)."""
    i = _frame(e, r, -1)
    e.insert(i + 1, e.recs[i])


@edited
def final_frame_drops_last_token(e, f, r):
    """The client's final frame of r lacks the last token the engine appended (trimmed by the detokenizer)."""
    i = _frame(e, r, -1)
    e.update(i, num_tokens=e.recs[i].num_tokens - 1)


@edited
def final_frame_and_reward_lost(e, f, r):
    """r's final frame never reaches the client and no reward is bound, yet the trainer consumes r."""
    e.delete(_frame(e, r, -1))
    for i in reversed(e.find_all(is_(RewardBound, req_id=r))):
        e.delete(i)


def _with_token_ids(e, f, r, changed: bool) -> None:
    """Record token ids on r's engine outputs; the client digests are computed on them (one token changed on
    the client side when ``changed``)."""
    ids = []
    for i, x in enumerate(e.recs):
        if type(x) is StepUpdated and any(o.req_id == r and o.sampled for o in x.outs):
            outs = []
            for o in x.outs:
                if o.req_id == r and o.sampled:
                    o = o._replace(token_ids=tuple(range(1000 + len(ids), 1000 + len(ids) + o.sampled)))
                    ids.extend(o.token_ids)
                outs.append(o)
            e.update(i, outs=tuple(outs))
    client = list(ids)
    if changed:
        client[len(client) // 2] += 1
    digest = token_digest(client)
    e.update(_frame(e, r, -1), digest=digest)
    for i in e.find_all(is_(RewardBound, req_id=r)):
        e.update(i, digest=digest)
    if r in f.consumed:
        e.edit_sample(r, digest=digest)


@edited
def client_token_changed(e, f, r):
    """With token ids recorded, one token of r differs on the client; every later digest uses the change."""
    _with_token_ids(e, f, r, changed=True)


# --- output_applies_to_scheduling_incarnation --------------------------------------------------------------------


@edited
def output_row_for_finished_request(e, f, r):
    """The step after r finished still gives r a token (an output row mapped to the wrong request)."""
    i = e.find(lambda x: type(x) is StepUpdated and x.step > f.finished_at[r])
    e.update(i, outs=e.recs[i].outs + (OutReq(r, 1),))


@edited
def abort_applied_before_output(e, f, r):
    """The engine processes an abort of r while a step is in flight and still applies the step's output."""
    i = e.find(is_(StepUpdated, step=mid(f.out_steps[r])))
    e.insert(i, Aborted(e.recs[i].t_ns - 1, (r,), "client disconnected", "engine"))


@edited
def reset_running_while_step_in_flight(e, f, k):
    """reset_prefix_cache(reset_running_requests=True) runs while step k is in flight; k's output is still
    applied to the requests it preempted."""
    i = e.find(is_(StepUpdated, step=k))
    e.insert(i, CacheReset(e.recs[i].t_ns - 1, True, "engine", True))


@edited
def id_readded_while_step_in_flight(e, f, r):
    """r's id is added again while a step that scheduled r is in flight; the output lands on the new one."""
    i = e.find(is_(StepUpdated, step=mid(f.out_steps[r])))
    e.insert(i, f.engine_add[r]._replace(t_ns=e.recs[i].t_ns - 1))


# --- no_weight_write_during_forward ---------------------------------------------------------------------------


def forward_windows(trace: Trace) -> list:
    """(start, end) of every forward pass: executions, else schedule-returned .. update-entered."""
    execs = [(x.t_ns, x.end_ns) for x in trace.records if type(x) is StepExecuted]
    if execs:
        return sorted(execs)
    sched = {x.step: x for x in trace.records if type(x) is StepScheduled}
    return sorted((sched[x.step].end_ns, x.t_ns) for x in trace.records if type(x) is StepUpdated)


@edited
def write_before_drain(e, f, w):
    """The weight write starts before the engine drained: mid-way through the last forward pass."""
    i = e.find_all(lambda x: type(x) is WeightsUpdated)[w.index]
    start, end = [win for win in f.windows if win[0] < e.recs[i].t_ns][-1]
    e.update(i, t_ns=(start + end) // 2)


@edited
def resume_before_write_done(e, f, w):
    """The engine resumes before the weight write has finished: the write runs into the next forward pass."""
    i = e.find_all(lambda x: type(x) is WeightsUpdated)[w.index]
    start, end = next(win for win in f.windows if win[0] >= e.recs[i].end_ns)
    e.update(i, end_ns=(start + end) // 2)


# --- request_ids_live_once ------------------------------------------------------------------------------------


@edited
def engine_readds_live_id(e, f, r):
    """The client retries r under the same id while r still runs in the engine (between two steps)."""
    i = e.find(is_(StepUpdated, step=mid(f.out_steps[r])))
    e.insert(i + 1, f.engine_add[r]._replace(t_ns=e.recs[i].end_ns + 1))


@edited
def client_readmits_live_id(e, f, r):
    """The RL loop admits r's id again while r is still streaming."""
    i = _frame(e, r, 1)
    e.insert(i + 1, f.client_add[r]._replace(t_ns=e.recs[i].t_ns + 1))


# --- sample_ends_exactly_once ------------------------------------------------------------------------------------


@edited
def consumed_twice(e, f, r):
    """r stays in the replay buffer after consumption and is trained on again in the next batch."""
    later = f.later_batch(r) or f.consumed[r][0]
    e.add_sample(later, f.consumed[r][1])


@edited
def consumed_then_dropped(e, f, r):
    """The end-of-run flush also drops r, which the trainer had already consumed."""
    e.insert(len(e.recs), SampleDropped(max(x.t_ns for x in e.recs) + 1, (r,), "run finished"))


@edited
def drop_not_recorded(e, f, r):
    """r is discarded by the buffer without a SampleDropped: it is neither consumed nor dropped."""
    i = e.find(lambda x: type(x) is SampleDropped and r in x.req_ids)
    rest = tuple(q for q in e.recs[i].req_ids if q != r)
    if rest:
        e.update(i, req_ids=rest)
    else:
        e.delete(i)


@edited
def finished_sample_readmitted(e, f, r):
    """After r finished and was scored, its id is admitted again; the trainer then consumes that new r."""
    i = e.find_all(is_(RewardBound, req_id=r))[-1]
    e.insert(i + 1, f.client_add[r]._replace(t_ns=e.recs[i].t_ns + 1))


@edited
def consumed_sample_readmitted_and_consumed_again(e, f, r):
    """r is consumed, re-admitted under its id, and consumed again by the next batch."""
    tc = f.consumed[r][0]
    i = e.find(lambda x: x is tc)
    e.insert(i + 1, f.client_add[r]._replace(t_ns=tc.t_ns + 1))
    e.add_sample(f.later_batch(r), f.consumed[r][1])


# --- groups_whole_and_consistent -----------------------------------------------------------------------------


@edited
def member_missing_from_batch(e, f, r):
    """r's group is consumed without r (lost between reward and batch assembly)."""
    e.take_sample(r)


@edited
def member_admitted_with_other_prompt(e, f, r):
    """r is admitted into its group with another group's prompt (a dataloader index bug)."""
    own = f.client_add[r]
    other = next(a.prompt_digest for a in f.client_add.values() if a.prompt_digest != own.prompt_digest)
    e.update(e.find(is_(RequestAdded, req_id=r, side="client")), prompt_digest=other)


@edited
def group_split_across_batches(e, f, r):
    """r is held back and trained one batch after the rest of its group."""
    e.add_sample(f.later_batch(r), e.take_sample(r))


@edited
def consumed_under_wrong_group(e, f, r):
    """The trainer files r under another group (group ids reassigned when the batch is assembled)."""
    other = next(g for g in f.members if g != f.client_add[r].group_id)
    e.edit_sample(r, group_id=other)


# --- version_lag_within_bound --------------------------------------------------------------------------------------


@edited
def trainer_version_one_ahead(e, f, r):
    """The batch holding r is stamped with the trainer's next version (off by one)."""
    i = e.find(holding(r))
    e.update(i, trainer_version=e.recs[i].trainer_version + 1)


@edited
def group_held_back_past_update(e, f, r):
    """r's whole group waits in the buffer past a weight update and is trained by a newer trainer."""
    later = f.later_batch(r, newer=True)
    for m in f.members[f.client_add[r].group_id]:
        if m in f.consumed:
            e.add_sample(later, e.take_sample(m))


@edited
def stale_group_consumed(e, f, r):
    """The stale-group filter is off: r's group, dropped as stale, is trained by the next batch instead."""
    drop = f.dropped[r]
    e.delete(e.find(lambda x: x is drop))
    batch = next(b for b in f.batches if b.t_ns > drop.t_ns)
    for m in drop.req_ids:
        rw = f.rewards[m][-1]
        e.add_sample(batch, batch.samples[0]._replace(req_id=m, group_id=drop.group_id, version=rw.version,
                                                      digest=rw.digest, reward=rw.reward))


# --- steps_well_formed ---------------------------------------------------------------------------------------


@edited
def update_applied_twice(e, f, k):
    """The output of step k is applied twice (the output processor replays a message)."""
    i = e.find(is_(StepUpdated, step=k))
    e.insert(i + 1, e.recs[i])


@edited
def step_counter_skips(e, f, k):
    """The engine's step counter skips a number at step k (every later step is numbered one higher)."""
    for i, x in enumerate(e.recs):
        if type(x) in (StepScheduled, StepExecuted, StepUpdated) and x.step >= k:
            e.update(i, step=x.step + 1)


@edited
def updates_out_of_order(e, f, k):
    """The output of step k is applied after that of step k + 1."""
    upd = e.delete(e.find(is_(StepUpdated, step=k)))
    e.insert(e.find(is_(StepUpdated, step=k + 1)) + 1, upd)


@edited
def step_executed_twice(e, f, k):
    """The executor runs step k's forward pass twice (a retried RPC)."""
    i = e.find(is_(StepExecuted, step=k))
    e.insert(i + 1, e.recs[i]._replace(t_ns=e.recs[i].end_ns, end_ns=2 * e.recs[i].end_ns - e.recs[i].t_ns))


@edited
def write_in_step_with_lost_exec_record(e, f, w):
    """The write of update w starts while the last step before it is in flight (the engine did not drain),
    and that step's StepExecuted record is missing (the executor hook skipped it)."""
    i = e.find_all(lambda x: type(x) is WeightsUpdated)[w.index]
    j = [j for j in e.find_all(lambda x: type(x) is StepExecuted) if e.recs[j].end_ns <= e.recs[i].t_ns][-1]
    k = e.delete(j).step
    upd = e.recs[e.find(is_(StepUpdated, step=k))]
    e.update(i, t_ns=(f.sched[k].end_ns + upd.t_ns) // 2)


@edited
def step_never_updated(e, f, k):
    """Step k is scheduled (and executed) but its output is never applied; the engine carries on."""
    e.delete(e.find(is_(StepUpdated, step=k)))


# --- the table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    invariant: str  # the invariant that must fire
    base: str  # "rec" or "sim"
    mutate: Callable  # (trace, target) -> trace
    targets: Callable  # Facts -> eligible targets (request ids, steps or Weights)
    gap: str | None = None  # why no invariant catches it yet: a strict xfail

    @property
    def id(self) -> str:
        return f"{self.invariant}:{self.mutate.__name__}:{self.base}"

    def eligible(self) -> list:
        return self.targets(facts(base(self.base)))

    def apply(self, target) -> Trace:
        return self.mutate(base(self.base), target)


def both(invariant: str, mutate: Callable, targets: Callable, gap: str | None = None) -> list:
    return [Case(invariant, b, mutate, targets, gap) for b in ("rec", "sim")]


CASES = [
    *both(REWARD, reward_scores_sibling, with_other_sibling),
    *both(REWARD, rewards_matched_by_arrival, not_last_reward),
    *both(REWARD, reward_before_final_frame, rewarded),
    *both(REWARD, final_frame_lost, consumed),  # without the new invariants, only the reward's digest says so
    *both(CONSUMED, trained_on_sibling_tokens, consumed_with_other_sibling),
    *both(CONSUMED, trained_with_sibling_reward, consumed_with_other_reward),
    *both(CONSUMED, label_reread_at_consumption, consumed),
    *both(REWARDED, consumed_without_reward, consumed),
    *both(REWARDED, reward_bound_after_consumption, consumed),
    *both(LABEL, label_reread_after_update, rewarded),
    *both(LABEL, spans_misreport_version, with_spans),
    *both(LABEL, weights_hot_swapped_at_step, swap_steps),
    *both(KV, weights_hot_swapped_at_step, swap_steps),
    *both(KV, reset_refused_then_prefix_hit, first_with_prompt_after_update),
    *both(KV, reset_skipped_then_prefix_hit, first_with_prompt_after_update),
    *both(ONCE, frame_delivered_twice, streamed),
    *both(ONCE, frame_lost, streamed),
    *both(ONCE, frame_after_final, finished),
    *both(ONCE, final_frame_drops_last_token, finished),
    *both(DELIVERED, final_frame_and_reward_lost, consumed),
    *both(TOKENS, client_token_changed, consumed),
    *both(FRAMES, output_row_for_finished_request, finished_mid_trace),
    *both(FRAMES, abort_applied_before_output, multi_step),
    *both(FRAMES, reset_running_while_step_in_flight, token_steps),
    *both(FRAMES, id_readded_while_step_in_flight, multi_step),
    *both(WRITE, write_before_drain, weight_updates),
    *both(WRITE, resume_before_write_done, updates_before_a_step),
    Case(WRITE, "sim", write_in_step_with_lost_exec_record, weight_updates,
         "finding: once a trace has StepExecuted records, a step without its own has no forward window"),
    *both(ENDS, consumed_twice, consumed),
    *both(ENDS, consumed_then_dropped, consumed),
    *both(ENDS, drop_not_recorded, dropped_not_retried),
    *both(ENDS, finished_sample_readmitted, consumed),
    *both(GROUPS, consumed_sample_readmitted_and_consumed_again, consumed_before_a_batch),
    *both(LIVE, engine_readds_live_id, multi_step),
    *both(LIVE, client_readmits_live_id, streaming),
    *both(LIVE, id_readded_while_step_in_flight, multi_step),
    *both(GROUPS, member_missing_from_batch, consumed),
    *both(GROUPS, member_admitted_with_other_prompt, consumed),
    *both(GROUPS, group_split_across_batches, consumed_before_a_batch),
    *both(GROUPS, consumed_under_wrong_group, consumed),
    *both(LAG, trainer_version_one_ahead, consumed),
    *both(LAG, group_held_back_past_update, consumed_before_an_update),
    Case(LAG, "rec", stale_group_consumed, dropped_as_stale),  # the simulated run drops no group as stale
    *both(STEPS, update_applied_twice, inner_steps),
    *both(STEPS, step_counter_skips, inner_steps),
    *both(STEPS, updates_out_of_order, inner_steps),
    Case(STEPS, "sim", step_executed_twice, token_steps),  # the recording has no StepExecuted records
    *both(STEPS, step_never_updated, token_steps),
]
FIRING = [c for c in CASES if c.gap is None]


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.gap)] if case.gap else []
    return pytest.param(case, id=case.id, marks=marks)


def names_target(v, target, case: Case) -> bool:
    """Whether violation ``v`` names the mutated request, step or weight update (a group invariant may name
    the request's group instead)."""
    if case.invariant == GROUPS and re.search(rf"\bgroup {facts(base(case.base)).client_add[target].group_id}\b",
                                              v.message):
        return True
    if isinstance(target, Weights):
        return f"version {target.version} weights" in v.message
    if isinstance(target, int):
        return v.step == target or re.search(rf"\bstep {target}\b", v.message) is not None
    return v.req_id == target or re.search(rf"\b{re.escape(target)}\b", v.message) is not None


def _summary(report) -> str:
    return "\n".join(f"  {v.invariant}: {v.req_id} step {v.step}: {v.message}" for v in report.violations[:12])


# --- tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rec", "sim"])
def test_bases_are_clean(name):
    report = check_trace(base(name), POLICY)
    assert report.violations == [], _summary(report)
    assert not set(report.not_checkable) & set(ORIGINAL), report.not_checkable


def test_the_table_covers_every_invariant_with_two_corruptions_on_each_base():
    for name in ORIGINAL:
        for b in ("rec", "sim"):
            n = len({c.mutate for c in FIRING if c.invariant == name and c.base == b})
            assert n >= 2, f"{name} on {b}: {n} corruption(s)"


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_corruption_fires_its_invariant(case):
    targets = case.eligible()
    assert targets, f"{case.id}: no eligible target in the base"
    target = mid(targets)
    report = check_trace(case.apply(target), POLICY)
    hits = [v for v in report.violations if v.invariant == case.invariant]
    assert hits, f"{case.id} on {target!r} fired only {report.violated()}:\n{_summary(report)}"
    assert any(names_target(v, target, case) for v in hits), f"{case.id}: no violation names {target!r}:\n" + \
        _summary(report)


@settings(max_examples=100, deadline=None, database=None)
@given(st.data())
def test_a_random_corruption_of_a_random_target_fires_its_invariant(data):
    case = data.draw(st.sampled_from(FIRING), label="case")
    target = data.draw(st.sampled_from(case.eligible()), label="target")
    report = check_trace(case.apply(target), POLICY)
    hits = [v for v in report.violations if v.invariant == case.invariant]
    assert any(names_target(v, target, case) for v in hits), f"{case.id} on {target!r}:\n{_summary(report)}"


# --- controls: must not fire --------------------------------------------------------------------------------


def _map_fields(rec, fn: Callable):
    """``rec`` with ``fn(name, value)`` applied to every field, nested entries included."""
    changes = {}
    for name, value in zip(rec._fields, rec):
        if isinstance(value, tuple) and value and hasattr(value[0], "_fields"):
            new = tuple(_map_fields(x, fn) for x in value)
        else:
            new = fn(name, value)
        if new is not value:
            changes[name] = new
    return rec._replace(**changes) if changes else rec


def _map_records(trace: Trace, fn: Callable) -> Trace:
    return dataclasses.replace(trace, records=[_map_fields(r, fn) for r in trace.records])


def shift_times(trace: Trace, delta: int = 1_234_567_891) -> Trace:
    """Every timestamp moved by the same constant (another clock origin)."""
    return _map_records(trace, lambda n, v: v + delta if n.endswith("_ns") and v is not None else v)


def _values(rec):
    """``(name, value)`` of every field of ``rec``, nested entries included."""
    for name, value in zip(rec._fields, rec):
        if isinstance(value, tuple) and value and hasattr(value[0], "_fields"):
            for x in value:
                yield from _values(x)
        else:
            yield name, value


def _ids(trace: Trace, names: tuple) -> set:
    """Every id held by a field in ``names``: a string, or a tuple of them (``OutputDelivered.finished`` is a
    bool, ``StepScheduled.finished`` a tuple of request ids)."""
    seen: set = set()
    for rec in trace.records:
        for name, value in _values(rec):
            if name in names and isinstance(value, tuple):
                seen.update(value)
            elif name in names and isinstance(value, str):
                seen.add(value)
    return seen


def rename_requests(trace: Trace) -> Trace:
    """Every request id renamed consistently, in every record and nested entry that names it."""
    ids = sorted(_ids(trace, ("req_id", "req_ids", "preempted", "finished")))
    new = {old: f"req-{i:04d}" for i, old in enumerate(reversed(ids))}

    def fn(name, value):
        if name == "req_id":
            return new[value]
        if name in ("req_ids", "preempted", "finished") and isinstance(value, tuple):
            return tuple(new[x] for x in value)
        return value

    return _map_records(trace, fn)


def rename_groups(trace: Trace) -> Trace:
    """Every group id renamed consistently."""
    ids = sorted(_ids(trace, ("group_id",)))
    new = {old: f"grp-{i:03d}" for i, old in enumerate(reversed(ids))}
    return _map_records(trace, lambda n, v: new[v] if n == "group_id" and v is not None else v)


def remap_rewards(trace: Trace) -> Trace:
    """Every reward value changed the same way wherever it appears (a rescaled reward function)."""
    return _map_records(trace, lambda n, v: 1.0 - 2.0 * v if n == "reward" and v is not None else v)


def _concurrent(a, b, pa, pb) -> bool:
    return type(a) is type(b) and a.t_ns == b.t_ns and pa == pb and a.req_id != b.req_id and \
        getattr(a, "side", None) == getattr(b, "side", None)


def swap_concurrent(trace: Trace, kind) -> Trace:
    """Swap every adjacent pair of ``kind`` records of different requests at the same time, by one process
    (deliveries of different requests, or adds of one batch: neither depends on the other)."""
    e = Edit(trace)
    i = 0
    while i + 1 < len(e.recs):
        a, b = e.recs[i], e.recs[i + 1]
        if type(a) is kind and _concurrent(a, b, e.procs[i], e.procs[i + 1]):
            e.recs[i], e.recs[i + 1] = b, a
            i += 2
        else:
            i += 1
    return e.done()


def token_ids_recorded(trace: Trace) -> Trace:
    """Token ids recorded on the engine outputs of every consumed sample, and the client digests computed on
    exactly those ids (the clean counterpart of ``client_token_changed``)."""
    e, f = Edit(trace), facts(trace)
    for r in consumed(f):
        _with_token_ids(e, f, r, changed=False)
    return e.done()


def prefix_hits_after_effective_resets(trace: Trace) -> Trace:
    """Requests admitted after an update hit the prefix cache, but every update cleared it first (the clean
    counterpart of the stale-hit corruptions)."""
    e = Edit(trace)
    for r in first_with_prompt_after_update(facts(trace)):
        _prefix_hit(e, r)
    return e.done()


def client_aborts_in_flight(trace: Trace) -> Trace:
    """The client aborts samples it will drop while a step that schedules them is in flight; the engine
    processes each abort after that step's update (vLLM applies the step's output), and nothing about them
    follows: correct handling of client-side aborts (the false positive issue 14 describes)."""
    e, f = Edit(trace), facts(trace)
    for r in [r for r in dropped_not_retried(f) if len(f.out_steps[r]) >= 3]:
        u = e.find(is_(StepUpdated, step=mid(f.out_steps[r])))
        for i in range(len(e.recs) - 1, u, -1):
            x = e.recs[i]
            if type(x) in (OutputDelivered, RewardBound) and x.req_id == r:
                e.delete(i)
            elif type(x) is StepScheduled and any(q.req_id == r for q in x.reqs):
                e.update(i, reqs=tuple(q for q in x.reqs if q.req_id != r))
            elif type(x) is StepUpdated and any(o.req_id == r for o in x.outs):
                e.update(i, outs=tuple(o for o in x.outs if o.req_id != r))
        e.insert(u + 1, Aborted(e.recs[u].end_ns + 1, (r,), "client abort", "engine"))
        e.insert(u, Aborted(e.recs[u].t_ns - 1, (r,), "client abort", "client"))
    return e.done()


CONTROLS = {
    "shift every timestamp": shift_times,
    "rename every request id": rename_requests,
    "rename every group id": rename_groups,
    "swap concurrent deliveries": lambda t: swap_concurrent(t, OutputDelivered),
    "swap concurrent adds": lambda t: swap_concurrent(t, RequestAdded),
    "change every reward consistently": remap_rewards,
    "record token ids consistently": token_ids_recorded,
    "prefix hits after effective resets": prefix_hits_after_effective_resets,
    "client aborts while a step is in flight": client_aborts_in_flight,
}


@pytest.mark.parametrize("name", ["rec", "sim"])
@pytest.mark.parametrize("control", list(CONTROLS))
def test_control_keeps_the_report_clean(control, name):
    trace = base(name)
    changed = CONTROLS[control](trace)
    assert changed.records != trace.records, f"{control} changed nothing on {name}"
    report = check_trace(changed, POLICY)
    assert report.violations == [], _summary(report)
    assert not set(report.not_checkable) & set(ORIGINAL), report.not_checkable


METAMORPHIC = ["shift every timestamp", "rename every request id", "rename every group id",
               "change every reward consistently"]


@pytest.mark.parametrize("control", METAMORPHIC)
def test_control_keeps_what_a_corruption_breaks(control):
    for case in {(c.invariant, c.base): c for c in reversed(FIRING)}.values():  # the first of each
        mutated = case.apply(mid(case.eligible()))
        before = check_trace(mutated, POLICY).violated()
        assert check_trace(CONTROLS[control](mutated), POLICY).violated() == before, case.id


# Found by this corpus: a step without its update record got the weight timeline's version, "initial" before the
# first update, which no_stale_kv took for a change from version 0 (now: the version before the first update).
@pytest.mark.parametrize("k", [10, 30])
def test_a_lost_update_record_is_not_reported_as_stale_kv(k):
    report = check_trace(step_never_updated(base("rec"), k), POLICY)
    assert KV not in report.violated(), _summary(report)
