"""Where to aim: the meeting points of a base run, and generators of perturbation lists aimed at them.

A binding breaks when two events that the base run kept apart cross: a reward bound after the version label
moved on, a final frame delivered after a pause began, a forward pass still running when the weights are
written, an add taken after the ``schedule()`` it used to precede, an abort landing between a step's schedule
and its update, a sample consumed after the update that followed its generation. ``MeetingPoints`` lists those events of one base trace (steps, batches in flight, preemptions,
pauses, weight writes and version sets, reward completions, deliveries, consumptions, engine inputs next to
engine actions);
``targeted`` builds a perturbation list that moves one event across its neighbour by the measured gap plus a
margin, ``random_list`` draws perturbations over the same targets without aiming. Both take a
``random.Random`` seeded by the run's index, so the same exploration seed gives the same runs.

Search spaces: ``env`` (the default) holds what a correct loop must tolerate (timings, delivery and reward
latencies, write durations, transport latency, races of engine inputs, client aborts and retries, cache
resets, extra updates, engine configuration); ``loop`` adds changes to the user's own protocol (write before
the drain completes, version label set after resume, another pause mode or cache setting, another value of
each protocol setting in ``perturb.CONFIG_KEYS``: abort handling, retry ids, timeouts, cache-reset calls...);
``faults`` adds the engine's output-accounting fault modes (``[engine].fault_*``), to ask whether the checkers
see what a faulty engine does to the loop's samples.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tracesim.format.records import (
    Aborted, OutputDelivered, Paused, RequestAdded, Resumed, RewardBound, SampleLogprobs, StepExecuted, StepScheduled,
    StepUpdated, TrainerConsumed, WeightsUpdated,
)
from tracesim.sim import perturb as P

SPACES = ("env", "loop", "faults")
MS = 1_000_000


@dataclass
class MeetingPoints:
    """The events of one base trace that perturbations aim at (times in ns, trace clock)."""

    steps: list = field(default_factory=list)  # step indices, schedule order
    sched_t: dict = field(default_factory=dict)  # step -> schedule() start
    upd_t: dict = field(default_factory=dict)  # step -> update start
    exec_span: dict = field(default_factory=dict)  # step -> (start, end) of its forward pass
    batch: dict = field(default_factory=dict)  # step -> req_ids scheduled
    inflight: list = field(default_factory=list)  # steps scheduled while an earlier one was in flight
    preempting: list = field(default_factory=list)  # steps that preempted a request
    pauses: list = field(default_factory=list)  # engine pause times, in order (ordinal = index + 1)
    resumes: list = field(default_factory=list)
    updates: list = field(default_factory=list)  # (write start, write end, label set) per client update
    rewards: list = field(default_factory=list)  # (t, req_id) reward bound
    finals: list = field(default_factory=list)  # (t, req_id, step) final frame delivered, and its step
    firsts: list = field(default_factory=list)  # (t, req_id, step) first token delivered, and its step
    inputs: list = field(default_factory=list)  # (t, kind, key) engine inputs (add / abort / pause / resume)
    actions: list = field(default_factory=list)  # sorted times of schedule() and update() starts
    req_ids: list = field(default_factory=list)  # every request scheduled
    longest_request: int = 0  # prompt + max_tokens of the longest request (bounds KV-capacity flips)
    block_size: int = 16
    has_loop: bool = False  # the run has a trainer (rewards, weight updates) to perturb
    has_client: bool = False  # the trace has client-side admissions
    # Client aborts and retries can be injected: in a scenario, or in a recording without a client side. A
    # replayed client side follows the recording, which cannot say what the user's loop does after an abort.
    client_actions: bool = True
    # Engine switches that change throughput (async scheduling, KV capacity, max_num_seqs, prefix caching) can
    # be flipped: not under a replayed client side, which keeps the recording's consumption schedule and
    # weight-update points, meaningless at another throughput.
    engine_flips: bool = True
    async_scheduling: bool = False
    prefix_caching: bool = True
    consumes: list = field(default_factory=list)  # (t, req_ids) trainer consumptions
    has_behaviour: bool = False  # the trainer records behaviour logprobs (SampleLogprobs of role "behaviour")
    # The base's value of each configuration switch (perturb.CONFIG_KEYS) and whether it accepts another value
    # (RunPlan fills both from the base; left empty, switches of the "loop" and "faults" spaces are not drawn)
    settings: dict = field(default_factory=dict)
    switch_ok: object = None  # callable(key, value) -> bool

    def crossings(self) -> list:
        """Times at which the loop moves a version on: pause starts, label sets, resumes."""
        out = list(self.pauses) + list(self.resumes) + [u[2] for u in self.updates]
        return sorted(out)


def meeting_points(trace) -> MeetingPoints:
    m = MeetingPoints()
    ec = trace.header.engine_config  # settings the trace does not state keep MeetingPoints' defaults
    m.block_size = ec.block_size or m.block_size
    m.async_scheduling = bool(ec.async_scheduling)
    m.prefix_caching = ec.enable_prefix_caching is not False
    seen_req, final_step, first_step, pause_n, resume_n = set(), {}, {}, 0, 0
    for r in trace.records:
        kind = type(r)
        if kind is StepScheduled:
            m.steps.append(r.step)
            m.sched_t[r.step] = r.t_ns
            m.actions.append(r.t_ns)
            ids = tuple(q.req_id for q in r.reqs)
            m.batch[r.step] = ids
            for i in ids:
                if i not in seen_req:
                    seen_req.add(i)
                    m.req_ids.append(i)
            if r.queue_depth > 1:
                m.inflight.append(r.step)
            if r.preempted:
                m.preempting.append(r.step)
        elif kind is StepUpdated:
            m.upd_t[r.step] = r.t_ns
            m.actions.append(r.t_ns)
            for o in r.outs:
                if o.finish_reason is not None:
                    final_step[o.req_id] = r.step
                if o.sampled and not o.stale:
                    first_step.setdefault(o.req_id, r.step)
        elif kind is StepExecuted:
            m.exec_span[r.step] = (r.t_ns, r.end_ns)
        elif kind is Paused and r.side == "engine":
            pause_n += 1
            m.pauses.append(r.t_ns)
            m.inputs.append((r.t_ns, "pause", str(pause_n)))
        elif kind is Resumed and r.side == "engine":
            resume_n += 1
            m.resumes.append(r.t_ns)
            m.inputs.append((r.t_ns, "resume", str(resume_n)))
        elif kind is WeightsUpdated:
            m.updates.append((r.t_ns, r.end_ns, r.set_ns if r.set_ns is not None else r.end_ns))
            m.has_loop = m.has_loop or r.side == "client"
        elif kind is RewardBound:
            m.rewards.append((r.t_ns, r.req_id))
        elif kind is OutputDelivered:
            if r.start_idx == 0 and r.num_tokens:
                m.firsts.append((r.t_ns, r.req_id, first_step.get(r.req_id)))
            if r.finished:
                m.finals.append((r.t_ns, r.req_id, final_step.get(r.req_id)))
        elif kind is TrainerConsumed:
            m.consumes.append((r.t_ns, tuple(x.req_id for x in r.samples)))
        elif kind is SampleLogprobs:
            m.has_behaviour = m.has_behaviour or r.role == "behaviour"
        elif kind is RequestAdded and r.side == "client":
            m.has_client = True
        elif kind is RequestAdded and r.side == "engine":
            m.inputs.append((r.t_ns, "add", r.req_id))
            m.longest_request = max(m.longest_request, (r.prompt_len or 0) + (r.max_tokens or 0))
        elif kind is Aborted and r.side == "engine" and r.req_ids and r.reason != "pause":
            m.inputs.append((r.t_ns, "abort", r.req_ids[0]))
    m.actions.sort()
    m.has_loop = m.has_loop and bool(m.rewards)
    return m


# --- generators ---------------------------------------------------------------------------------------------


def _ms(ns: float) -> int:
    return max(1, int(-(-ns // MS)))


def _margin(rng) -> int:
    """ms past the crossing: mostly just past it, sometimes well past it."""
    return rng.choice((0, 1, 1, 2, 3, 5, 10, 20))


def _near_step(m: MeetingPoints, t: int):
    """The last step scheduled at or before ``t`` (None before the first)."""
    ts = [m.sched_t[s] for s in m.steps]
    i = bisect.bisect_right(ts, t)
    return m.steps[i - 1] if i else None


def _next_after(times: list, t: int):
    i = bisect.bisect_right(times, t)
    return times[i] if i < len(times) else None


def _a_next(m: MeetingPoints, t: int, rng):
    """The next label set after ``t`` (most often), else the next pause start or resume: which of them matters
    depends on the loop (a label read at delivery crosses the set, a drain crosses the pause), and in a
    wait-mode pause they can be hundreds of ms apart."""
    sets = sorted(u[2] for u in m.updates)
    # the label set most often: what a sample is labelled with, or re-labelled with, changes there
    order = [sets, m.pauses, m.resumes] if rng.random() < 0.6 else [m.pauses, m.resumes, sets]
    for times in order:
        x = _next_after(times, t)
        if x is not None:
            return x
    return None


def _close_first(cands: list, gap, rng):
    """Most often one of the candidates with the smallest gaps (the smallest perturbation that crosses), else
    any of them."""
    if rng.random() < 0.7:
        near = sorted(cands, key=gap)[:8]
        return rng.choice(near)
    return rng.choice(cands)


def _reward_cross(m, rng):
    """A reward bound before a version move lands after it."""
    cands = [(t, rid, nxt) for t, rid in m.rewards if (nxt := _a_next(m, t, rng)) is not None]
    if not cands:
        return None
    t, rid, nxt = _close_first(cands, lambda c: c[2] - c[0], rng)
    return [P.RewardDelay(rid, _ms(nxt - t) + _margin(rng))]


def _delivery_cross(m, rng):
    """A first or final frame delivered before a pause or version move arrives after it (labels read at the
    first token or at the finish, rewards computed on delivery)."""
    frames = m.finals + m.firsts if rng.random() < 0.5 else m.finals
    cands = [(t, rid, s, nxt) for t, rid, s in frames if s is not None and (nxt := _a_next(m, t, rng)) is not None]
    if not cands:
        return None
    t, rid, step, nxt = _close_first(cands, lambda c: c[3] - c[0], rng)
    return [P.DelayDelivery(step, _ms(nxt - t) + _margin(rng), rid if rng.random() < 0.7 else "*")]


def _consume_cross(m, rng):
    """A sample consumed before a weight update is consumed after it: its reward (the one that completed its
    group) lands after the update's write ends, so a trainer that recomputes behaviour logprobs at consumption
    does it with the next version's weights."""
    rewarded = {rid: t for t, rid in m.rewards}
    ends = sorted(u[1] for u in m.updates)
    cands = []
    for t, rids in m.consumes:
        nxt = _next_after(ends, t)
        last = max(((rewarded[r], r) for r in rids if r in rewarded), default=None)
        if nxt is not None and last is not None:
            cands.append((last[0], last[1], nxt))
    if not cands:
        return None
    t, rid, nxt = _close_first(cands, lambda c: c[2] - c[0], rng)
    return [P.RewardDelay(rid, _ms(nxt - t) + _margin(rng))]


def _step_cross(m, rng):
    """A forward pass that ended before a pause or a write runs into it."""
    cross = sorted(m.crossings() + [u[0] for u in m.updates])
    cands = []
    for step, (start, end) in m.exec_span.items():
        nxt = _next_after(cross, end)
        if nxt is not None and nxt - end < 50 * MS and end > start:
            cands.append((step, start, end, nxt))
    if not cands:
        return None
    step, start, end, nxt = rng.choice(sorted(cands))
    factor = round(1.0 + (nxt - start + _margin(rng) * MS) / (end - start), 2)
    return [P.StepTimeScale(step, min(factor, 1000.0), rng.choice((1, 1, 2, 4)))]


def _input_race(m, rng):
    """An engine input taken just before an engine action is taken after it (or after its neighbour)."""
    cands = []
    inputs = sorted(m.inputs)
    for i, (t, kind, key) in enumerate(inputs):
        nxt = _next_after(m.actions, t)
        if nxt is not None and nxt - t < 2 * MS:
            cands.append(("defer", kind, key))
        if i + 1 < len(inputs) and inputs[i + 1][0] - t < 2 * MS:
            cands.append(("swap", kind, key))
    if not cands:
        return None
    how, kind, key = rng.choice(cands)
    if how == "swap":
        return [P.SwapInputs(kind, key)]
    return [P.DeferInput(kind, key, rng.choice((1, 1, 2, 3)))]


def _steps_near_moves(m) -> list:
    """Steps scheduled within 20 ms before a version move, with batches in flight, or preempting."""
    cross = m.crossings()
    near = [s for s in m.steps if (nxt := _next_after(cross, m.sched_t[s])) is not None
            and nxt - m.sched_t[s] < 20 * MS]
    return sorted(set(near) | set(m.inflight) | set(m.preempting))


def _client_action(m, rng):
    """A client abort or retry of a request in flight at a step near a version move, or during a pause."""
    if not m.client_actions:
        return None
    steps = [s for s in _steps_near_moves(m) if m.batch.get(s)]
    options = []
    if steps:
        step = rng.choice(steps)
        at = f"{rng.choice(('sched', 'sched', 'upd'))}:{step}"
        options.append((at, rng.choice(m.batch[step])))
    if m.finals:  # the client acts while the request's final frame is on its way (finished in the engine)
        _t, rid, step = rng.choice(m.finals)
        if step is not None:
            options.append((f"upd:{step}", rid))
    if m.pauses:
        n = rng.randrange(len(m.pauses)) + 1
        before = _near_step(m, m.pauses[n - 1])
        if before is not None and m.batch.get(before):
            options.append((f"pause:{n}", rng.choice(m.batch[before])))
    if not options:
        return None
    at, req = rng.choice(options)
    if rng.random() < 0.6:
        return [P.Abort(at, req, rng.choice(("request", "group")))]
    return [P.Retry(at, req)]


def _control(m, rng):
    """A cache reset or an extra weight update injected next to a step."""
    steps = _steps_near_moves(m) or m.steps
    if not steps:
        return None
    at = f"{rng.choice(('sched', 'upd'))}:{rng.choice(steps)}"
    if m.has_loop and rng.random() < 0.5:
        return [P.ExtraUpdate(at)]
    return [P.ResetCache(at)]


def _write_time(m, rng):
    if not m.has_loop or not m.updates:
        return None
    return [P.WriteTime(rng.randrange(len(m.updates)) + 1, rng.choice((5, 20, 50, 200)))]


def _config(m, rng):
    if not m.engine_flips:
        return [P.Latency(rng.choice((0, 500, 2000, 10000)), rng.choice((500, 2000, 10000, 50000)))]
    choices = [P.SetConfig("async_scheduling", not m.async_scheduling),
               P.SetConfig("enable_prefix_caching", not m.prefix_caching),
               P.Latency(rng.choice((0, 500, 2000, 10000)), rng.choice((500, 2000, 10000, 50000)))]
    if m.longest_request:
        need = -(-m.longest_request // m.block_size) + 1
        choices.append(P.SetConfig("num_gpu_blocks", need * rng.choice((1, 2, 3, 6))))
    choices.append(P.SetConfig("max_num_seqs", rng.choice((1, 2, 4, 8))))
    if m.has_loop:
        choices.append(P.SetConfig("reward_workers", rng.choice((1, 2, 16))))
    return [rng.choice(choices)]


def _loop_change(m, rng):
    """What-if changes of the user's own loop protocol (search space "loop"): the update's timing and label,
    or another value of one of the loop's protocol settings."""
    if not m.has_loop or not m.updates:
        return None
    if rng.random() < 0.5:
        switch = _switch(m, rng, _protocol_keys())
        if switch is not None:
            return [switch]
    u = rng.randrange(len(m.updates)) + 1
    return [rng.choice((P.WriteEarly(u, rng.choice((0, 1, 2, 5))), P.VersionShift(u, rng.choice((1, 5, 20, 50))),
                        P.VersionShift(u, -rng.choice((1, 5, 20))), P.SetConfig("pause_mode", rng.choice(("wait", "keep"))),
                        P.SetConfig("clear_cache", False)))]


def _engine_fault(m, rng):
    """An engine output-accounting fault switched on (search space "faults"): would the loop, and the
    checkers, notice an engine that drops, duplicates or misroutes a frame, or rebuilds a context wrongly?

    A fault acts only in its window (a frame in flight when a request is preempted, a reset of running
    requests, a resume), which a correct base may never open: the fault comes with what opens one, batches in
    flight (async scheduling) and a preemption (a reset of the running requests near a version move, or a KV
    pool tight enough to preempt). Shrinking drops whatever the failure does not need."""
    fault = _switch(m, rng, _fault_keys())
    if fault is None:
        return None
    out = [fault]
    opener = FAULT_WINDOWS.get(fault.key)
    if opener is not None:  # a fault of a structure the base may not have: data-parallel ranks, KV transfers
        key, value = opener
        if m.settings.get(key) in (0, 1):
            out.append(P.SetConfig(key, value))
        return out
    if m.engine_flips and not m.async_scheduling and m.switch_ok("async_scheduling", True):
        out.append(P.SetConfig("async_scheduling", True))
    steps = _steps_near_moves(m) or m.steps
    if m.engine_flips and m.longest_request and rng.random() < 0.5:
        need = -(-m.longest_request // m.block_size) + 1
        out.append(P.SetConfig("num_gpu_blocks", need * rng.choice((1, 2, 3))))
    elif steps:
        out.append(P.ResetCache(f"{rng.choice(('sched', 'upd'))}:{rng.choice(steps)}", running=True))
    return out


# Loop settings in CONFIG_KEYS that are the environment the loop runs in, not its protocol ("env" space).
ENV_LOOP_KEYS = ("reward_workers",)
# Values an integer protocol setting is tried with (a key without an entry is not drawn).
INT_SWITCH_VALUES = {"request_timeout_ms": (20, 100, 500), "version_reset_at": (2, 3)}
FAULT_PROBABILITIES = (0.25, 1.0)
# Faults of an engine structure a base may lack, and the switch that gives it: the window of the other faults
# is opened by batches in flight and a preemption (_engine_fault).
FAULT_WINDOWS = {"fault_dp_finish_no_output": ("data_parallel_size", 2),
                 "fault_pd_free_in_transfer": ("pd_transfer_us", 100_000)}


def _protocol_keys() -> list:
    return [k for k, (part, _) in P.CONFIG_KEYS.items() if part == "loop" and k not in ENV_LOOP_KEYS
            and k not in ("pause_mode", "clear_cache")]  # those two are drawn by _loop_change's own list


def _fault_keys() -> list:
    return [k for k, (part, kind) in P.CONFIG_KEYS.items() if part == "engine" and k.startswith("fault_")]


def _switch_values(key: str) -> tuple:
    from tracesim.sim.scenario import _CHOICES

    kind = P.CONFIG_KEYS[key][1]
    if kind is bool:
        return (False, True)
    if kind is str:
        return tuple(_CHOICES.get(key, ()))
    if kind is float:
        return FAULT_PROBABILITIES if key.startswith("fault_") else ()
    return INT_SWITCH_VALUES.get(key, ())


def _switch(m, rng, keys: list):
    """``SetConfig`` of one of ``keys`` to a value other than the base's and that the base accepts; None when
    the base states none of them (a recording without its loop) or no other value is valid."""
    if not m.settings or m.switch_ok is None:
        return None
    options = [(k, v) for k in sorted(keys) if k in m.settings
               for v in _switch_values(k) if v != m.settings[k]]
    rng.shuffle(options)
    for key, value in options[:8]:  # a few tries: validity costs a scenario validation each
        also = {}
        if key in FAULT_WINDOWS and m.settings.get(FAULT_WINDOWS[key][0]) in (0, 1):
            also = dict([FAULT_WINDOWS[key]])  # judged with the structure it is drawn with (_engine_fault)
        if m.switch_ok(key, value, also):
            return P.SetConfig(key, value)
    return None


# generator -> weight, per space
_TARGETED = {_reward_cross: 4, _delivery_cross: 4, _step_cross: 3, _input_race: 3, _client_action: 3, _control: 1,
             _write_time: 1}
_RANDOM_EXTRA = {_config: 1}


def targeted(m: MeetingPoints, rng, spaces=("env",)) -> tuple:
    """One to three perturbations, the first aimed at a meeting point of ``m``."""
    gens = dict(_TARGETED)
    if m.has_behaviour:  # only then: runs of other bases keep the same draws
        gens[_consume_cross] = 4
    if "loop" in spaces:
        gens[_loop_change] = 2
    if "faults" in spaces:
        gens[_engine_fault] = 2
    out = []
    for _ in range(8):  # some generators have no target in a given run
        got = _pick(gens, rng)(m, rng)
        if got:
            out.extend(got)
            break
    while out and len(out) < 3 and rng.random() < 0.3:
        extra = _pick({**gens, **_RANDOM_EXTRA}, rng)(m, rng)
        if extra:
            out.extend(extra)
    return tuple(out)


def random_list(m: MeetingPoints, rng, spaces=("env",)) -> tuple:
    """One to three perturbations drawn without aiming: random steps, requests, delays and switches."""
    out = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.choice(("step", "delivery", "reward", "input", "action", "control", "config", "write"))
        p = _random_one(m, rng, kind)
        if p is not None:
            out.append(p)
    if "loop" in spaces and rng.random() < 0.2:
        out.extend(_loop_change(m, rng) or ())
    if "faults" in spaces and rng.random() < 0.2:
        out.extend(_engine_fault(m, rng) or ())
    return tuple(out)


def _random_one(m, rng, kind):
    if not m.steps:
        return None
    step = rng.choice(m.steps)
    ms = rng.choice((1, 2, 5, 10, 20, 50, 100))
    if kind == "step":
        return P.StepTimeScale(step, rng.choice((0.5, 2.0, 4.0, 10.0)), rng.choice((1, 4, 16)))
    if kind == "delivery":
        return P.DelayDelivery(step, ms, rng.choice(m.batch.get(step) or ("*",)))
    if kind == "reward" and m.rewards:
        return P.RewardDelay(rng.choice(m.rewards)[1], ms)
    if kind == "input" and m.inputs:
        _, k, key = rng.choice(m.inputs)
        return P.DeferInput(k, key, rng.choice((1, 2, 4))) if rng.random() < 0.7 else P.SwapInputs(k, key)
    if kind == "action" and m.client_actions and m.batch.get(step):
        at, req = f"{rng.choice(('sched', 'upd'))}:{step}", rng.choice(m.batch[step])
        return P.Abort(at, req, rng.choice(("request", "group"))) if rng.random() < 0.6 else P.Retry(at, req)
    if kind == "control":
        return (P.ExtraUpdate if m.has_loop and rng.random() < 0.5 else P.ResetCache)(f"sched:{step}")
    if kind == "config":
        return _config(m, rng)[0]
    if kind == "write" and m.has_loop and m.updates:
        return P.WriteTime(rng.randrange(len(m.updates)) + 1, ms)
    return None


def _pick(weights: dict, rng):
    total = sum(weights.values())
    x = rng.random() * total
    for gen, w in weights.items():
        x -= w
        if x < 0:
            return gen
    return next(iter(weights))
