"""Replay a recorded trace through the model.

What replay takes from the recording (the inputs), rebased so the first record is at t=0:

* engine configuration (header ``engine_config``: budget, max running requests, block size and count,
  chunked prefill, prefix caching, async scheduling);
* request arrivals: each engine-side ``add`` at its time, with prompt length, prompt digest, vLLM's prefix-cache
  keys of the full prompt blocks (``block_keys``: prompts sharing a prefix share blocks), max_tokens, group;
* each request's output length and finish reason (when to emit the stop token is the model's data, not the
  scheduler's decision), and its output token ids when recorded (blocks of identical outputs are shared);
* control events at their engine-side times: aborts, pauses (state; the mode when the client recorded it),
  resumes, cache resets, weight versions;
* exact replay: each engine input is also due before the engine action it preceded (``feed.py``), and each
  step's recorded schedule / forward / update times and the gaps between engine actions are used; fitted
  replay uses a fitted step-time model and delivers inputs by time alone.

What the model computes: every schedule (which requests, how many tokens, preemption, prefix hits, KV),
every update (which tokens, finishing, stale frames), the output path to the client, and all times.
Client-side records of the recording (adds, pause calls, weight writes) are carried over, rebased; its RL
loop (rewards, trainer consumption, drops) is replayed around the replayed engine by ``replay_loop.py``.
"""

from __future__ import annotations

import simpy
from simpy.events import URGENT, Event

from tracesim.format.records import (
    PAUSED_ALL, Aborted, CacheReset, OutputDelivered, OutReq, Paused, RequestAdded, Resumed, StepExecuted,
    StepScheduled, StepUpdated, WeightsUpdated,
)
from tracesim.format.trace import Trace
from tracesim.sim.engine import Engine, Pause
from tracesim.sim.feed import Feed, FeedItem
from tracesim.sim import simloop
from tracesim.sim.hooks import Hooks
from tracesim.sim.replay_inputs import ClientRecord, Input, VersionWrite
from tracesim.sim.replay_loop import LOOP_TYPES, ReplayLoop
from tracesim.sim.rollout import Rollout
from tracesim.gcpause import cyclic_gc_paused
from tracesim.sim.run import HEADER_KEYS, MAX_VIRTUAL_NS, RunInputs, StuckRunError, sim_header
from tracesim.sim.scenario import EngineConfig, Scenario, Workload, refuse_in_replay
from tracesim.sim.scheduler import SimReq
from tracesim.sim.steptime import step_table
import tracesim.sim.tuplenew as tuplenew
from tracesim.sim.timing import ModelTiming, RecordedTiming

NEVER = 1 << 40  # a stop length no request reaches

# Where OutReq's fields lie, by name (C integers where compiled, replay.pxd): _arrivals reads them in place with
# ``tuplenew.item`` for every request and step of the recording (an attribute of a NamedTuple is a descriptor call).
OUT_REQ_ID = OutReq._fields.index("req_id")
OUT_SAMPLED = OutReq._fields.index("sampled")
OUT_FINISH_REASON = OutReq._fields.index("finish_reason")
OUT_TOKEN_IDS = OutReq._fields.index("token_ids")
T_NS = StepScheduled._fields.index("t_ns")  # the same in every event record (format/index.py checks at import)
STEP = StepScheduled._fields.index("step")
if any(kind._fields[STEP] != "step" for kind in (StepExecuted, StepUpdated)):
    raise TypeError("_Scan reads every step record's step at one position: a step record type changed that")


# EngineConfig fields a replay takes from the recording's header (the others keep the scenario's values)
_FROM_HEADER = ("max_num_batched_tokens", "max_num_seqs", "block_size", "num_gpu_blocks", "enable_chunked_prefill",
                "enable_prefix_caching", "async_scheduling", "long_prefill_token_threshold", "reserve_full_sequence",
                "watermark", "max_concurrent_batches", "engine_loop")


def engine_config_from(header) -> EngineConfig:
    """EngineConfig from a header's engine settings (typed when read; settings the header lacks keep their
    defaults)."""
    settings = header.engine_config
    values = {}
    for name in _FROM_HEADER:
        v = getattr(settings, HEADER_KEYS.get(name, name))
        if v is not None:
            values[name] = v
    return EngineConfig(**values)


class _Arrival:
    """An engine-side add of the recording and what its request went on to produce."""

    def __init__(self, add: RequestAdded, index: int):
        self.add = add
        self.index = index  # position of the add in the recording's stream
        self.out_len = 0
        self.reason = None
        self.token_ids = None  # the sampled ids (a list), when the recorder recorded them


class _Scan:
    """What replay reads from a recording, gathered in one pass over its records: a long trace's records
    are mostly steps and output frames, and walking them once per question took a fifth of a replay.

    ``t0``: the trace start (the earliest t_ns); ``scheds`` / ``execs`` / ``upds``: step -> StepScheduled /
    StepExecuted / StepUpdated of the first engine process: what the trace index's ``engine_steps()`` gives
    (``Trace.index()``: the last record of each kind of each step);
    ``picked``: (stream index, record) of every StepUpdated and input / control record, in stream order;
    ``before``: stream index of each picked non-step record -> engine actions (sched / upd records) that
    preceded it (``feed.engine_actions_before``).

    The pass also collects a well-formed recording's steps (one engine process, each step scheduled once,
    then executed at most once and updated at most once, in that order) and hands them to the index
    (``TraceIndex.adopt_engine_steps``): in that case they are its ``engine_steps()``, and its pairing pass
    is not needed for replay (a check of the same trace pairs it when it needs it). Anything else (a
    repeated or out-of-order step record, several engines) the index pairs under its one rule."""

    def __init__(self, trace):
        t0 = trace.read_start()  # found while reading: no need to read every record's t_ns here
        try:
            if t0 is None:
                t0 = self._scan(trace.records, trace.procs, True)
            else:
                self._scan(trace.records, trace.procs, False)
        except (TypeError, OverflowError):  # a t_ns that is no int64 (the compiled build types it): again, without
            t0 = self._scan(trace.records, trace.procs, False)  # None: the index finds the start
        ix = trace.index(t0)
        self.t0 = ix.start_ns
        if self.scheds is not None:  # well formed (else the index's pairing decides)
            ix.adopt_engine_steps(self._proc, self.scheds, self._execs, self.upds)
        self._execs = None
        _proc, self.scheds, self.execs, self.upds = ix.engine_steps()

    def _scan(self, records, procs, find_t0: bool):
        """Fill ``picked``, ``before`` and, for a well-formed recording (class doc), ``scheds``, ``upds``,
        ``_execs`` (step -> StepExecuted) and ``_proc`` (else ``scheds`` is None) from ``records``; with
        ``find_t0`` return the earliest t_ns (every event record has it first), else None."""
        self.picked, self.before = [], {}
        picked, before = self.picked, self.before
        scheds, execs, upds = {}, {}, {}
        actions = 0
        proc0 = -1  # the engine process: that of the first step record
        paired = True
        t0 = tuplenew.item(records[0], T_NS) if find_t0 and records else 0
        for i, r in enumerate(records):
            if find_t0:
                t = tuplenew.item(r, T_NS)
                if t < t0:
                    t0 = t
            kind = type(r)
            if kind is OutputDelivered:  # most records: skipped first
                continue
            if kind is StepScheduled or kind is StepExecuted or kind is StepUpdated:
                if paired:
                    proc = procs[i] if procs else 0
                    if proc0 < 0:
                        proc0 = proc
                    step = tuplenew.item(r, STEP)
                    if proc != proc0:
                        paired = False
                    elif kind is StepScheduled:
                        paired = _first_of_step(scheds, step, r)
                    elif step not in scheds or step in upds:
                        paired = False
                    elif kind is StepExecuted:
                        paired = _first_of_step(execs, step, r)
                    else:
                        upds[step] = r
                if kind is StepExecuted:
                    continue
                if kind is StepUpdated:
                    picked.append((i, r))
                actions += 1
            elif kind in _INPUT_TYPES:
                picked.append((i, r))
                before[i] = actions
        if paired:
            self.scheds, self._execs, self.upds = scheds, execs, upds
            self._proc = proc0 if proc0 >= 0 else 0
        else:
            self.scheds = self._execs = self.upds = None
        return t0 if find_t0 else None

    def of_types(self, types) -> list:
        return [(i, r) for i, r in self.picked if type(r) in types]


def _first_of_step(records: dict, step, record) -> bool:
    """Keep ``record`` as ``step``'s, unless the step has one already (then False: not well formed)."""
    if step in records:
        return False
    records[step] = record
    return True


def _arrivals(scan: _Scan) -> list:
    """Engine-side adds in stream order, each with the output length and finish reason it reached."""
    arrivals, current = [], {}
    for i, r in scan.picked:
        if type(r) is RequestAdded:
            if r.side == "engine":
                current[r.req_id] = a = _Arrival(r, i)
                arrivals.append(a)
            continue
        if type(r) is not StepUpdated:
            continue
        for o in r.outs:
            req_id, sampled = tuplenew.item(o, OUT_REQ_ID), tuplenew.item(o, OUT_SAMPLED)
            reason, token_ids = tuplenew.item(o, OUT_FINISH_REASON), tuplenew.item(o, OUT_TOKEN_IDS)
            a = current.get(req_id)
            if a is None or a.reason is not None:
                continue
            if sampled:
                a.out_len += sampled  # tokens vLLM appended, a stale frame's included (recorder's meaning)
                if token_ids is not None and len(token_ids) == sampled:
                    a.token_ids = (a.token_ids or []) + list(token_ids)
            if reason is not None:
                a.reason = reason
    return arrivals


_CONTROL_TYPES = frozenset((Paused, Resumed, CacheReset, Aborted, WeightsUpdated))
_CLIENT_TYPES = frozenset((RequestAdded, Paused, Resumed, WeightsUpdated, Aborted))
_INPUT_TYPES = _CONTROL_TYPES | _CLIENT_TYPES | LOOP_TYPES  # the loop's records: for replay_loop.py


def _controls(scan: _Scan, t0: int) -> list:
    """The engine ``Input``s of the recording's control records."""
    out, client_mode, pauses = [], None, 0
    for i, r in scan.of_types(_CONTROL_TYPES):
        kind = type(r)
        if kind is Paused and r.side == "client":
            client_mode = r.mode
        elif kind is Paused and r.side == "engine":
            mode = r.mode or client_mode or ("keep" if r.state == PAUSED_ALL else "wait")
            if mode == "abort":
                mode = "wait"  # its aborts are replayed from the recorded Aborted records
            out.append(tuplenew.new_tuple(Input, (r.t_ns - t0, i, "pause", mode)))
        elif kind is Resumed and r.side == "engine":
            out.append(tuplenew.new_tuple(Input, (r.t_ns - t0, i, "resume", None)))
        elif kind is CacheReset and r.side == "engine":
            out.append(tuplenew.new_tuple(Input, (r.t_ns - t0, i, "reset", r.reset_running)))
        elif kind is Aborted and r.side == "engine":
            out.append(tuplenew.new_tuple(Input, (r.t_ns - t0, i, "abort", tuple(r.req_ids))))
        elif kind is WeightsUpdated:
            # with the write's duration and the engine pauses before it: a perturbed replay writes only after
            # that pause has drained (``_set_version``)
            write = tuplenew.new_tuple(VersionWrite, (r.version, max(0, r.end_ns - r.t_ns), pauses))
            out.append(tuplenew.new_tuple(Input, ((r.set_ns if r.set_ns is not None else r.end_ns) - t0, i, "version",
                                                  write)))
        if kind is Paused and r.side == "engine":
            pauses += 1
    return out


def _rebased(r, t0: int):
    """``r`` with its times (t_ns and, when set, end_ns / set_ns) moved back by ``t0``."""
    values = list(r)
    for j in _time_fields(type(r)):
        if values[j] is not None:
            values[j] -= t0
    return tuple.__new__(type(r), values)  # as r._replace(...), without its keyword machinery


_TIME_FIELDS: dict = {}  # record type -> positions of its t_ns / end_ns / set_ns fields


def _time_fields(kind) -> tuple:
    if kind not in _TIME_FIELDS:
        _TIME_FIELDS[kind] = tuple(j for j, name in enumerate(kind._fields) if name in ("t_ns", "end_ns", "set_ns"))
    return _TIME_FIELDS[kind]


def _client_records(scan: _Scan, t0: int) -> list:
    """Client-side records carried over unchanged except for the rebased times (``ClientRecord``s), in time
    order."""
    keep = []
    for i, r in scan.of_types(_CLIENT_TYPES):
        if r.side == "client":
            keep.append(tuplenew.new_tuple(ClientRecord, (r.t_ns - t0, i, _rebased(r, t0))))
    return sorted(keep)


@cyclic_gc_paused()  # see tracesim/gcpause.py: about 40% of a run otherwise
def replay(trace: Trace, *, timing: str = "exact", steptime=None, seed: int = 0, scenario: Scenario | None = None,
           perturbations: tuple = (), progress=None, scheduler_backend: str | None = None,
           loop_policy=None) -> Trace:
    """Replay ``trace``; ``timing`` is "exact" (recorded durations) or "fitted" (``steptime``, a FitResult or
    a Scenario's StepTime); ``scheduler_backend`` ("native" | "vllm") overrides the scenario's. A recorded RL
    loop (rewards, consumption) is replayed by ``replay_loop.ReplayLoop`` with ``loop_policy`` (a LoopPolicy;
    None: inferred from the recording). Returns the simulated trace; raises StuckRunError."""
    scan = _Scan(trace)
    t0 = scan.t0
    hooks = Hooks(perturbations)
    cfg = engine_config_from(trace.header)
    if scenario is not None:
        cfg = scenario.engine.__class__(**{**scenario.engine.__dict__, **{
            k: getattr(cfg, k) for k in ("max_num_batched_tokens", "max_num_seqs", "block_size", "num_gpu_blocks",
                                         "enable_chunked_prefill", "enable_prefix_caching", "async_scheduling",
                                         "max_concurrent_batches", "engine_loop")}})
    if scheduler_backend is not None:
        cfg = cfg.__class__(**{**cfg.__dict__, "scheduler_backend": scheduler_backend})
    cfg = hooks.engine_config(cfg)
    refuse_in_replay(cfg, "replay")
    base = scenario or Scenario(workload=Workload(), engine=cfg)
    scen = base.replace(engine=cfg, name=f"replay:{trace.path or 'trace'}")
    loop = ReplayLoop.from_recording(trace, scan, loop_policy)  # None: the recording has no RL loop
    if loop is not None:
        scen = scen.replace(loop=loop.policy)
    model = ModelTiming(scen.steptime if steptime is None else getattr(steptime, "steptime", steptime), cfg)
    if steptime is not None and hasattr(steptime, "sched_us"):
        cfg_t = cfg.__class__(**{**cfg.__dict__, "sched_us": steptime.sched_us, "update_us": steptime.update_us,
                                 "step_gap_us": steptime.step_gap_us})
        model = ModelTiming(steptime.steptime, cfg_t)
    if timing == "exact":
        model = RecordedTiming(step_table(scan.scheds, scan.upds, scan.execs, t0), model)
    elif timing != "fitted":
        raise ValueError(f"timing must be 'exact' or 'fitted', got {timing!r}")

    env = simloop.Environment()
    records: list = []
    emit = records.append
    engine = Engine(env, cfg, hooks.timing(model), emit, None, progress)
    # the stand-in client tracks every request it hears of (its adds are the recording's); a recorded RL loop
    # follows its first and final frames
    client = Rollout(env, scen, engine, emit, None, lambda s: None, lambda g: None, stand_in=True,
                     on_first_frame=None if loop is None else loop.first_frame,
                     on_final_frame=None if loop is None else loop.final_frame)
    if hooks:
        hooks.install(env, engine, client, loop=loop, engine_always=True)
    if loop is not None:
        loop.attach(env, engine, client, emit)
    inputs = sorted([tuplenew.new_tuple(Input, (a.add.t_ns - t0, a.index, "add", a)) for a in _arrivals(scan)]
                    + _controls(scan, t0))
    if timing == "exact":  # engine inputs are due before the engine action they preceded (feed.py)
        before = scan.before  # what feed.engine_actions_before(trace.records) gives at these indices
        engine.feed = Feed([FeedItem(x.t_ns, before[x.order], x.kind, x.payload)
                            for x in sorted(inputs, key=_by_order) if x.kind != "version"], _to_engine)
        inputs = [x for x in inputs if x.kind == "version"]
    env.process(_drive(env, engine, client, inputs, _client_records(scan, t0), emit))
    env.process(engine.run())
    done = env.event()
    _until_idle(env, engine, inputs, done)
    env.run(until=simpy.AnyOf(env, [done, env.timeout(MAX_VIRTUAL_NS)]))
    if not done.triggered:
        raise StuckRunError(f"replay did not finish within {MAX_VIRTUAL_NS} virtual ns (step {engine.step})")
    if loop is not None:
        loop.finish()  # the rewards, consumptions and drops still due after the engine's last frame
    inputs_rec = RunInputs(scen, seed, tuple(perturbations), trace.path)
    hdr_inputs = {**inputs_rec.header_inputs(), "timing": timing}
    return Trace(sim_header(inputs_rec, scen.engine)._replace(inputs=hdr_inputs), records, [], None)


def _by_order(x) -> int:
    return x.order


def _drive(env, engine, client, inputs, client_records, emit):
    """Feed the recording's ``Input``s to the engine (and its ``ClientRecord``s to the output) at their times."""
    ci = 0
    if engine.hooks is not None:  # perturbed: _set_version writes the client's WeightsUpdated with its own times
        client_records = [x for x in client_records if type(x.record) is not WeightsUpdated]
        # a write starts when it was recorded to start: its set time less its duration
        inputs = sorted(x._replace(t_ns=x.t_ns - x.payload.write_ns) if x.kind == "version" else x for x in inputs)
    for t, _, kind, payload in inputs:
        while ci < len(client_records) and client_records[ci].t_ns <= t:
            emit(client_records[ci].record)
            ci += 1
        if t > env.now:
            yield env.timeout(t - env.now)
        if kind == "version":
            if engine.hooks is not None:  # perturbed: the write starts when recorded, once the pause drained
                env.process(_set_version(env, engine, emit, *payload))
            else:
                engine.weights_version = engine.version = payload.version
        else:
            engine.submit(*_to_engine(kind, payload, engine))
    for _, _, rec in client_records[ci:]:  # ClientRecords
        if rec.t_ns > env.now:
            yield env.timeout(rec.t_ns - env.now)
        emit(rec)


DRAIN_WAIT_NS = 10 ** 10  # a perturbed replay waits at most 10 s (virtual) for the pause before a write


def _set_version(env, engine, emit, version, write_ns, pauses):
    """SimPy process, started when a recorded weight write began: write a recorded version in a perturbed
    replay. The recording's loop wrote only once its pause had drained; when perturbations delay that pause
    (slower steps, deferred inputs), the write waits for it and then takes its recorded time, and the engine's
    resume waits for the new version, so no write overlaps a forward pass the recording did not overlap. The
    client's ``WeightsUpdated`` is written with the replayed times. An unperturbed replay sets each version
    at its recorded time and carries the recorded record over."""
    hooks = engine.hooks
    hooks.hold_resumes = True
    give_up = env.now + DRAIN_WAIT_NS
    while (hooks.pauses < pauses or engine.pause is not None) and env.now < give_up:
        if engine.pause is not None:
            yield engine.pause.done
        else:
            yield env.timeout(100_000)  # the pause is still on its way to the engine
    t_write = env.now
    if write_ns:
        yield env.timeout(write_ns)
    engine.weights_version = engine.version = version
    emit(WeightsUpdated(t_ns=t_write, end_ns=env.now, version=version, side="client", set_ns=env.now))
    hooks.hold_resumes = False
    for item in hooks.take_held_resumes():
        engine.submit(*item)


def _to_engine(kind, payload, engine) -> tuple:
    """A recorded input as the engine takes it, made at delivery: (kind, engine payload)."""
    if kind == "add":
        r = payload.add
        stop = payload.out_len if payload.reason == "stop" else NEVER
        max_tokens = r.max_tokens if r.max_tokens is not None else NEVER
        req = SimReq(r.req_id, r.prompt_len, max_tokens, stop, r.prompt_digest or f"req:{r.req_id}",
                     r.group_id, r.sample_idx, r.group_size)
        req.arrival_ns = engine.env.now
        req.prompt_block_keys = r.block_keys
        if payload.token_ids is not None and len(payload.token_ids) == payload.out_len:
            req.known_output = tuple(payload.token_ids)
        return "add", req
    if kind == "pause":  # replay's aborts are the recorded ones, so the pause itself aborts nothing
        return "pause", Pause(mode=payload, clear_cache=False, done=engine.env.event(), abort_all=False)
    return kind, payload


def _until_idle(env, engine, inputs, done) -> None:
    """Succeed ``done`` once every input was fed and the engine has nothing left: from the last driven input
    on, polled every 1 ms of virtual time; when idle, again after the last frames could land.

    Event callbacks rather than a SimPy process (a replay makes several polls per step): the first event is
    URGENT at now like a process's Initialize event, and each poll schedules the next while it is processed,
    so every event keeps its place in SimPy's order. While exact replay's feed still holds inputs a poll
    can only find work left, so the polls on that stretch are skipped: the first poll to find the feed
    non-empty parks, and the feed's emptying resumes polling at the next time on the same 1 ms grid."""
    last = inputs[-1].t_ns if inputs else 0
    poll_ns, settle_ns = 1_000_000, engine.cfg.output_latency_us * 1000 + 1
    parked_ns = []  # the time of the poll that parked, while parked

    def idle() -> bool:
        return (not engine.inputs and not engine.queue and not engine.sched.has_work()
                and (engine.hooks is None or not engine.hooks.holding()))

    def poll(_ev) -> None:
        if engine.feed:
            parked_ns.append(env.now)
            engine.feed.on_empty = resume
        elif idle():
            env.timeout(settle_ns).callbacks.append(confirm)  # let the last frames land
        else:
            env.timeout(poll_ns).callbacks.append(poll)

    def resume() -> None:
        # Called while the engine takes the feed's last input: the next grid time from here on (at now when it
        # falls on now, as that poll would still be pending; ties of that kind are the only place where this
        # can order a poll differently from polling all along).
        since = parked_ns.pop()
        due = since + -(-(env.now - since) // poll_ns) * poll_ns
        env.timeout(due - env.now).callbacks.append(poll)

    def confirm(_ev) -> None:
        if idle():
            done.succeed(env.now)
        else:
            env.timeout(poll_ns).callbacks.append(poll)

    def begin(_ev) -> None:
        if last > env.now:
            env.timeout(last).callbacks.append(poll)
        else:
            poll(None)

    start = Event(env)
    start._ok, start._value = True, None
    start.callbacks.append(begin)
    env.schedule(start, URGENT)
