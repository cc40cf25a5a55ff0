"""The engine-core process: vLLM V1's busy loop in virtual time.

Between two actions the core drains its input queue (adds, aborts, pause / resume, cache resets), then
either steps or, with nothing to do, sleeps until an input arrives. A synchronous step is schedule -> forward
pass on the GPU -> update_from_output. With async scheduling the core keeps a batch queue of depth 2: it
schedules and submits step N+1 before it blocks on step N and applies its output, so ``sched(N+1)`` precedes
``upd(N)`` (DESIGN §3).

Weights: ``weights_version`` is what is on the GPU (a forward pass runs with the value read when it starts);
``version`` is the label stamped on outputs by each update. A weight write changes the first, setting the
version changes the second: the client decides when (``rlloop.py``).

Output-path fault modes (``EngineConfig.fault_drop_inflight_frame`` / ``fault_duplicate_frame``, docs/simulator.md
"Engine fault modes") strike the frames of a request's stale share (output in flight when it was preempted,
``OutReq.stale`` with tokens): the update applied the token, but the frame is lost on its way to the client, or
sent twice. Final frames are left alone (the finish must reach the client for the loop to go on). Each frame
in the window is a draw of the run's fault generator, made only when the probability is above 0.
"""

from __future__ import annotations

import random
from collections import deque

from simpy.events import URGENT, Event

from tracesim.format.records import (
    PAUSED_ALL, PAUSED_NEW, UNPAUSED, Aborted, CacheReset, OutReq, Paused, RequestAdded, Resumed,
)
from tracesim.sim.records_hot import step_executed, step_scheduled, step_updated
import tracesim.sim.tuplenew as tuplenew  # item: a NamedTuple's field read in place where compiled
from tracesim.sim.scenario import batch_queue_depth
from tracesim.sim.scheduler import fault_hit, sched_reqs
from tracesim.sim.vllm_scheduler import make_scheduler

# Where OutReq's fields lie, by name (C integers where compiled, engine.pxd): _frames reads them in place with
# ``tuplenew.item`` once per request and step (an attribute of a NamedTuple is a descriptor call).
OUT_REQ_ID = OutReq._fields.index("req_id")
OUT_SAMPLED = OutReq._fields.index("sampled")
OUT_FINISH_REASON = OutReq._fields.index("finish_reason")
OUT_STALE = OutReq._fields.index("stale")


class InFlight:
    """A scheduled step whose output is not applied yet."""

    __slots__ = ("step", "planned", "done", "exec_version", "start_ns", "end_ns", "forward")

    def __init__(self, step, planned, done):
        self.step, self.planned, self.done, self.exec_version = step, planned, done, 0
        self.start_ns = self.end_ns = 0  # the forward pass on the GPU, once launched
        self.forward = False  # whether it runs one (an empty schedule does not)


class Frame:
    """One output frame as the engine core sends it to the client: one request's share of an update (or its
    abort). Made once per request and step: a C struct with a free list in the compiled build (``engine.pxd``).

    * ``req_id``;
    * ``sampled``: tokens this update appended to the request (0 for an abort or a stale frame);
    * ``tokens`` / ``stamps``: the token ids appended and their version stamps, copied when the frame is made
      (later updates append to the request's lists): the id and the stamp themselves when ``sampled`` is 1,
      the usual case, else tuples of them (a tuple per frame and field would double the objects made per
      request and step);
    * ``finish_reason``: "stop", "length", "abort", ... when the request finished here, else None."""

    __slots__ = ("req_id", "sampled", "tokens", "stamps", "finish_reason")

    def __init__(self, req_id: str, sampled: int, tokens, stamps, finish_reason):
        self.req_id = req_id
        self.sampled = sampled
        self.tokens = tokens
        self.stamps = stamps
        self.finish_reason = finish_reason

    def __repr__(self) -> str:
        return (f"Frame({self.req_id!r}, sampled={self.sampled}, tokens={self.tokens!r}, stamps={self.stamps!r}, "
                f"finish_reason={self.finish_reason!r})")


def new_frame(req_id, sampled, tokens, stamps, finish_reason):
    """A ``Frame`` from all its fields, without ``__init__``'s argument parsing (a C call where compiled)."""
    f = Frame.__new__(Frame)
    f.req_id = req_id
    f.sampled = sampled
    f.tokens = tokens
    f.stamps = stamps
    f.finish_reason = finish_reason
    return f


class Pause:
    """A pause as the engine core takes it (the "pause" input) and holds it until it completes.

    * ``mode``: "abort", "wait" or "keep" (DESIGN §3);
    * ``clear_cache``: reset the prefix cache when the pause completes;
    * ``done``: the SimPy event fired when it completes (the engine drained);
    * ``abort_all``: finish every live request when it is taken (mode "abort"; replay passes False: it replays
      the recorded aborts itself)."""

    __slots__ = ("mode", "clear_cache", "done", "abort_all")

    def __init__(self, mode: str, clear_cache: bool, done, abort_all: bool):
        self.mode, self.clear_cache, self.done, self.abort_all = mode, clear_cache, done, abort_all


class ResetCall:
    """The loop's own ``reset_prefix_cache(reset_running, reset_connector)`` call (a "reset" input whose
    result the caller awaits): ``done`` fires with ``ok``. A plain bool payload is a reset whose result nobody
    reads (explore's ``reset_cache`` perturbation, replay): vLLM's call with ``reset_connector = false``."""

    __slots__ = ("reset_running", "reset_connector", "done")

    def __init__(self, reset_running: bool, reset_connector: bool, done):
        self.reset_running, self.reset_connector, self.done = reset_running, reset_connector, done


# CacheReset.side of the record that says what became of the external KV tier at a reset (only where there is
# one): ok = true, emptied with the prefix cache (reset_connector); ok = false, it kept its blocks.
KV_TIER_SIDE = "kv_tier"


class Engine:
    """``emit(record)`` receives every engine-side record; ``on_output(step, frames)`` the output path: the
    ``Frame`` list of one update, or of aborts (step None)."""

    def __init__(self, env, cfg, timing, emit, on_output, progress=None, fault_rng=None):
        """``fault_rng``: the random.Random the fault modes draw from (the run's; a fixed one if None)."""
        self.env, self.cfg, self.timing, self.emit, self.on_output = env, cfg, timing, emit, on_output
        if fault_rng is None:
            fault_rng = random.Random("faults")
        # a SchedulerInterface: the native model, or vLLM's own scheduler
        self.sched = make_scheduler(cfg, fault_rng)
        self.out_faults = OutputFaults.of(cfg, fault_rng)  # None without output-path faults
        self.version = 0
        self.weights_version = 0
        self.step = 0
        self.inputs: deque = deque()  # (kind, payload) delivered to the core, applied between actions
        self.queue: deque = deque()  # batch queue of InFlight
        self.pause = None  # the Pause taken, until it completes
        self.gpu_free_ns = 0  # when the GPU finishes the last submitted forward pass
        self.progress = progress
        self.feed = None  # exact replay: a Feed of recorded inputs, each due before a given action
        self.actions = 0  # sched / upd actions performed (what a Feed's inputs are keyed by)
        self.hooks = None  # a run's perturbations (hooks.Hooks): hold / reorder inputs, inject control actions
        self._wake = env.event()
        if cfg.engine_loop not in ("busy", "client"):
            raise ValueError(f'engine.engine_loop must be "busy" or "client", got {cfg.engine_loop!r}')
        self.client_stepped = cfg.engine_loop == "client"

    # --- inputs (called by client processes) -------------------------------------------------------------

    def submit(self, kind: str, payload=None):
        """Queue an input for the core ("add", "abort", "pause", "resume", "reset", "version"); return nothing."""
        self.inputs.append((kind, payload))
        if not self._wake.triggered:
            self._wake.succeed()

    def request_pause(self, mode: str, clear_cache: bool, abort_all: bool | None = None):
        """Queue a pause; the returned event fires when the engine has drained (DESIGN §3). ``abort_all``
        defaults to ``mode == "abort"`` (replay passes False: it replays the recorded aborts itself)."""
        done = self.env.event()
        self.submit("pause", Pause(mode=mode, clear_cache=clear_cache, done=done,
                                   abort_all=mode == "abort" if abort_all is None else abort_all))
        return done

    def request_reset(self, reset_running: bool, reset_connector: bool):
        """Queue the loop's ``reset_prefix_cache`` call; the returned event fires with ``ok`` when the core
        has taken it (vLLM refuses it, ``ok`` false, while blocks are in use unless ``reset_running``)."""
        done = self.env.event()
        self.submit("reset", ResetCall(bool(reset_running), bool(reset_connector), done))
        return done

    def _take_inputs(self):
        """SimPy sub-process: apply the queued inputs; with a feed, also each one due before the next action,
        at its recorded time (so an add or pause lands when it did, even while the core waits out a gap).
        Only entered when a feed input is due (``_feed_due``); otherwise ``_drain_inputs`` is all there is
        to do, without a generator (this runs two or three times per step)."""
        while self._feed_due():
            yield from self.feed.deliver(self)
            self._drain_inputs()
        self._drain_inputs()

    def _feed_due(self) -> bool:
        return self.feed is not None and self.feed.is_due(self.actions)

    def _drain_inputs(self) -> None:
        if self.hooks is not None:
            self.hooks.gate(self)  # ordering perturbations: may hold back or reorder the queued inputs
        while self.inputs:
            kind, payload = self.inputs.popleft()
            getattr(self, "_on_" + kind)(payload)

    def _on_add(self, req) -> None:
        # vLLM 0.32 queues adds in the scheduler's waiting queue in every pause state; the scheduler admits
        # nothing from it until resume (``Scheduler.has_work`` / ``_admit``).
        self._record_add(req)
        self.sched.add(req)

    def _record_add(self, req) -> None:
        """The engine's ``RequestAdded`` of ``req``, at its arrival (or now, when it came earlier)."""
        t_ns = self.env.now if req.arrival_ns is None else min(req.arrival_ns, self.env.now)
        self.emit(RequestAdded(t_ns=t_ns, req_id=req.req_id, side="engine", group_id=req.group_id,
                               sample_idx=req.sample_idx, group_size=req.group_size, prompt_len=req.prompt_len,
                               max_tokens=req.max_tokens, prompt_digest=req.prompt_key,
                               block_keys=req.prompt_block_keys))

    def _on_abort(self, req_ids) -> None:
        live = self.sched.abort_requests(req_ids)
        if not live:
            return
        self.emit(Aborted(t_ns=self.env.now, req_ids=tuple(r.req_id for r in live), reason="client", side="engine"))
        self.on_output(None, [_frame(r, 0, "abort") for r in live])

    def _on_pause(self, pause) -> None:
        if pause.abort_all:
            aborted = self.sched.abort_all()
            if aborted:
                self.emit(Aborted(t_ns=self.env.now, req_ids=tuple(r.req_id for r in aborted), reason="pause",
                                   side="engine"))
                self.on_output(None, [_frame(r, 0, "abort") for r in aborted])
        state = PAUSED_ALL if pause.mode == "keep" else PAUSED_NEW
        self.sched.set_pause_state(state)
        self.emit(Paused(t_ns=self.env.now, side="engine", mode=pause.mode, clear_cache=pause.clear_cache, state=state))
        self.pause = pause
        if self.hooks is not None:
            self.hooks.action(self, "pause", 0)
        self._maybe_finish_pause()

    def _maybe_finish_pause(self) -> None:
        if self.pause is None or self.queue:
            return
        pause = self.pause
        if pause.mode != "keep" and self.sched.num_running():
            return
        self.pause = None
        if pause.clear_cache:
            # vLLM 0.32's pause resets with reset_running and reset_connector (EngineCore._reset_caches)
            self._reset(True, True)
        pause.done.succeed(self.env.now)

    def _on_resume(self, payload) -> None:
        self.sched.set_pause_state(UNPAUSED)
        self.emit(Resumed(t_ns=self.env.now, side="engine"))

    def _on_reset(self, payload) -> None:
        if type(payload) is ResetCall:
            ok = self._reset(payload.reset_running, payload.reset_connector)
            payload.done.succeed(ok)
        else:
            self._reset(bool(payload), False)

    def _on_version(self, version) -> None:
        # The loop's version publish reaching the core as an input (publisher.py, label_advance =
        # "after_resume"): taken between actions, so a forward pass already running is stamped the old version.
        self.version = version

    def _reset(self, reset_running: bool, reset_connector: bool) -> bool:
        """Reset the prefix cache (and the external KV tier with ``reset_connector``); record it."""
        had_running = self.sched.num_running() > 0
        ok, _ = self.sched.reset_prefix_cache(reset_running, reset_connector)
        self.emit(CacheReset(t_ns=self.env.now, ok=ok, side="engine", reset_running=reset_running and had_running))
        if self.sched.has_kv_tier():  # what the reset did to the tier, which outlives it unless reset too
            self.emit(CacheReset(t_ns=self.env.now, ok=reset_connector, side=KV_TIER_SIDE))
        return ok

    # --- the busy loop -----------------------------------------------------------------------------------

    def run(self):
        """SimPy process: runs until the environment stops.

        One action per turn: with a batch queue of depth 2 (async scheduling) the core schedules while fewer
        than two steps are in flight, else it waits for the oldest and applies its output; the synchronous
        core is the same loop with a queue of depth 1 (schedule, then update). One generator for the whole
        loop, not one per action: a step's actions are a handful of SimPy events apart."""
        env, kind = self.env, "sched"
        depth = batch_queue_depth(self.cfg)
        last_end = env.now
        while True:
            # The gap runs from the end of the previous action: time spent asleep counts towards it.
            gap = self.timing.gap_ns(kind, self.step if kind == "sched" or not self.queue else self.queue[0].step)
            if self.feed is not None:
                if self._feed_due():
                    yield from self._take_inputs()
                else:
                    self._drain_inputs()
            if last_end + gap > env.now:
                yield env.timeout(last_end + gap - env.now)
            if self._feed_due():
                yield from self._take_inputs()
            else:
                self._drain_inputs()
            kind = None
            if len(self.queue) < depth and self._can_schedule():
                t0 = env.now
                planned, preempted = self.sched.schedule()
                # An empty schedule() is only a step when it reports finished requests (as in vLLM).
                if planned or self.sched.has_finished():
                    dur = self.timing.sched_ns(self.step)
                    if dur:
                        yield env.timeout(dur)
                    self._submit(planned, preempted, t0)
                    if len(self.queue) < depth:
                        kind = "sched"
            if kind is None and self.queue:
                flight = self.queue[0]
                if not flight.done.triggered:
                    yield flight.done
                if self._feed_due():  # vLLM applies aborts that came during the forward pass before the update
                    yield from self._take_inputs()
                elif self.feed is not None:
                    self._drain_inputs()
                t0 = env.now
                dur = self.timing.upd_ns(flight.step)
                if dur:
                    yield env.timeout(dur)
                self._apply_output(flight, t0)
                kind = "sched" if len(self.queue) < depth else "upd"
            if kind is None and self.hooks is not None and self.hooks.release(self):
                kind = "sched"  # inputs held back by a perturbation: take them now rather than sleep
            if kind is None:  # nothing to do: sleep until an input arrives
                self._wake = env.event()
                if self.feed:  # idle: take the next input when it comes, whatever action it was due before
                    yield from self.feed.deliver(self)
                elif not self.inputs:
                    yield self._wake
                kind = "sched"
            else:
                last_end = env.now

    def _submit(self, planned, preempted, t0) -> None:
        """The end of a schedule() call that began at ``t0``: record it and submit its forward pass."""
        env, step = self.env, self.step
        self.step += 1
        self.actions += 1
        waiting, running = self.sched.counts()
        finished = self.sched.take_finished()
        reqs = sched_reqs(planned)
        self.emit(step_scheduled(t_ns=t0, end_ns=env.now, step=step, reqs=reqs, preempted=preempted,
                                 finished=finished, waiting=waiting, running=running, queue_depth=len(self.queue) + 1,
                                 pause_state=self.sched.pause_state, kv_usage=round(self.sched.kv_usage(), 6)))
        flight = InFlight(step, planned, env.event())
        self._launch(flight, reqs)
        self.queue.append(flight)
        if self.progress is not None and step % 1024 == 1023:
            self.progress.update(1024)
        if self.hooks is not None:
            self.hooks.action(self, "sched", step)

    def _launch(self, flight, reqs) -> None:
        """The forward pass runs on the GPU after the previous one; its end is known when it starts. An empty
        schedule (it only reports finished requests) runs no forward pass, but vLLM still makes the executor
        round trip: it takes what the timing says (nothing with a step-time model, the recorded time in
        exact replay) and emits no ``StepExecuted``."""
        dur = self.timing.exec_ns(flight.step, reqs)
        if not reqs and not dur:
            flight.done.succeed()
            return
        flight.start_ns = start = max(self.env.now, self.gpu_free_ns)
        flight.end_ns = end = start + dur
        flight.forward = bool(reqs)
        if reqs:
            self.gpu_free_ns = end
        # The forward pass is a chain of event callbacks, not a SimPy Process per step; the first event is
        # URGENT at now, like a Process's Initialize event, so every event keeps its place in SimPy's order.
        # Each event carries the InFlight as its value (no closure per event).
        env = self.env
        ev = Event(env)
        ev._ok, ev._value = True, flight
        ev.callbacks.append(self._exec_begin)
        env.schedule(ev, URGENT)

    def _exec_begin(self, ev) -> None:
        flight, env = ev._value, self.env
        if flight.start_ns > env.now:
            env.timeout(flight.start_ns - env.now, flight).callbacks.append(self._exec_run)
        else:
            self._exec_run(ev)

    def _exec_run(self, ev) -> None:
        flight = ev._value
        flight.exec_version = self.weights_version  # the weights on the GPU when the forward pass starts
        self.env.timeout(flight.end_ns - flight.start_ns, flight).callbacks.append(self._exec_end)

    def _exec_end(self, ev) -> None:
        flight = ev._value
        if flight.forward:
            self.emit(step_executed(t_ns=flight.start_ns, end_ns=flight.end_ns, step=flight.step,
                                    version=flight.exec_version))
        flight.done.succeed()

    def _apply_output(self, flight, t0) -> None:
        """The end of an update_from_output() call that began at ``t0``: apply the oldest step's output,
        record it and send the output frames."""
        self.queue.popleft()
        self.actions += 1
        outs = self.sched.update(flight.planned, flight.exec_version, self.version)
        self.emit(step_updated(t_ns=t0, end_ns=self.env.now, step=flight.step, outs=tuple(outs), version=self.version))
        frames = _frames(flight.planned, outs, self.out_faults)
        if frames:
            self.on_output(flight.step, frames)
        if self.hooks is not None:
            self.hooks.action(self, "upd", flight.step)
        self._maybe_finish_pause()

    def _can_schedule(self) -> bool:
        # vLLM's Scheduler.has_requests(): unfinished work, or finished ids not reported yet; the latter holds in
        # PAUSED_ALL too, so a keep-mode pause still makes an empty schedule() that reports them. An in-process
        # core is stepped only while its client awaits outputs: finished ids alone make no step.
        if self.client_stepped:
            return self.sched.has_work()
        return self.sched.has_work() or self.sched.has_finished()


def _frame(req, sampled: int, reason) -> Frame:
    """The ``Frame`` of ``req`` after an update that appended ``sampled`` tokens (or an abort: 0)."""
    if sampled == 1:
        return new_frame(req_id=req.req_id, sampled=1, tokens=req.out_tokens[-1], stamps=req.stamp_versions[-1],
                         finish_reason=reason)
    if sampled:
        return new_frame(req_id=req.req_id, sampled=sampled, tokens=tuple(req.out_tokens[-sampled:]),
                         stamps=tuple(req.stamp_versions[-sampled:]), finish_reason=reason)
    return new_frame(req_id=req.req_id, sampled=0, tokens=(), stamps=(), finish_reason=reason)


class OutputFaults:
    """The output-path fault modes of a run (module docstring): probabilities and the generator they draw from."""

    __slots__ = ("p_drop", "p_duplicate", "rng")

    def __init__(self, p_drop: float, p_duplicate: float, rng):
        self.p_drop, self.p_duplicate, self.rng = p_drop, p_duplicate, rng

    @classmethod
    def of(cls, cfg, rng):
        p_drop, p_dup = float(cfg.fault_drop_inflight_frame), float(cfg.fault_duplicate_frame)
        return cls(p_drop, p_dup, rng) if p_drop > 0 or p_dup > 0 else None

    def send(self, frames: list, frame) -> None:
        """Append a stale-share frame with tokens to ``frames`` zero (dropped), one or two (duplicated) times."""
        if fault_hit(self.rng, self.p_drop):
            return
        frames.append(frame)
        if fault_hit(self.rng, self.p_duplicate):
            frames.append(frame)


def _frames(planned, outs, faults) -> list:
    """The output frames (``_frame``) of an update's ``outs``: those that carry a token or a finish (the
    scheduler gives a discarded stale frame no tokens), through the output-path ``faults`` (None: none)."""
    frames = []
    if len(planned) == len(outs):  # the usual case, one out per planned entry in order: one loop
        for p, o in zip(planned, outs):
            req = p.req
            req_id, sampled = tuplenew.item(o, OUT_REQ_ID), tuplenew.item(o, OUT_SAMPLED)
            reason, stale = tuplenew.item(o, OUT_FINISH_REASON), tuplenew.item(o, OUT_STALE)
            if req.req_id != req_id:
                break
            if sampled or reason:
                if faults is not None and stale and sampled and reason is None:
                    faults.send(frames, _frame(req, sampled, reason))
                else:
                    frames.append(_frame(req, sampled, reason))
        else:
            return frames
        frames = []
    for p, o in zip(_applied(planned, outs), outs):
        if o.sampled or o.finish_reason:
            if faults is not None and o.stale and o.sampled and o.finish_reason is None:
                faults.send(frames, _frame(p.req, o.sampled, o.finish_reason))
            else:
                frames.append(_frame(p.req, o.sampled, o.finish_reason))
    return frames


def _applied(planned, outs):
    """The Planned entries that produced ``outs`` (update skips requests finished while in flight)."""
    by_id = {}
    for p in planned:
        by_id.setdefault(p.req.req_id, p)
    return [by_id[o.req_id] for o in outs]
