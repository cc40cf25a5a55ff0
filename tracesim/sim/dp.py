"""Data-parallel engine cores (``[engine].data_parallel_size`` > 1): vLLM 0.32's DPEngineCoreProc ranks.

Each rank is an engine core of its own (``RankEngine``: the compiled ``Engine`` with its own scheduler and KV
pool), recorded as its own process (``ProcessInfo(role="engine-core", rank=r)``; the client is process 0).
``DPEngines`` stands where the single ``Engine`` stands for the client and the trainer (same calls):

* **routing** (``core_client.DPLBAsyncMPClient.get_core_engine_for_request``): each add goes to the rank of
  least score ``max(client's in-flight requests there, waiting + running) + waiting * 6 * max(0, kv - 0.5)``,
  the scan starting one rank later after each add so that ties rotate; aborts go to the rank of each id.
  vLLM's waiting/running counts are the coordinator's snapshot (every 100 ms); here they are read when routing.
* **waves** (``run_busy_loop`` / ``_has_global_unfinished_reqs``): while any rank has unfinished requests, a
  rank with nothing to schedule runs dummy batches (``execute_dummy_batch``: a one-token forward pass that keeps
  the ranks' collectives in step). A dummy batch holds the rank's GPU (a real step waits for it) and is not
  recorded (vLLM's scheduler never sees it). vLLM all-reduces the unfinished flag at step 1 and every
  ``dp_sync_interval`` steps; here each rank reads the others' state directly (an interval of one step).
* **pause** (``DPEngineCoreProc._pause_complete``): every rank takes the pause; a rank's pause completes when
  the rank itself has drained (as a single core's), no rank has unfinished requests (pause consensus), and its
  own last forward pass, real or dummy, has ended (``_finish_pause`` synchronises the device). The ranks'
  pauses therefore complete at different times: with async scheduling a rank still runs the forward pass it
  scheduled ahead while an idle rank's pause is already complete. vLLM's client awaits every rank; a loop
  that awaits only the first (``[loop].dp_pause_wait = "first"``) writes weights under a running forward.
* **fault** ``fault_dp_finish_no_output`` (vllm-project/tpu-inference#3362): the DP scheduler's
  ``finish_requests`` returned None, so an abort-mode pause aborts the rank's requests (its ``Aborted``
  record) but sends no abort outputs: the client never hears that they ended.

Perturbations that reorder or hold engine inputs and inject control actions act at rank 0 (its inputs and
actions), the others run unperturbed.
"""

from __future__ import annotations

import random

from tracesim.format.records import Aborted, ProcessInfo
from tracesim.sim.engine import Engine, Pause, ResetCall
from tracesim.sim.scheduler import fault_hit

RANK_ROLE = "engine-core"
CLIENT_PROC = 0  # the client, trainer and reward records' process (the single-engine run's only one)


def rank_process(rank: int) -> ProcessInfo:
    return ProcessInfo(RANK_ROLE, "sim", 0, rank)


def rank_proc(rank: int) -> int:
    """A rank's process index in the trace header (after the client's)."""
    return rank + 1


class RankEngine(Engine):
    """One DP rank's engine core: a single core's loop, with the group's pause completion and fault."""

    def __init__(self, group, rank: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group, self.rank = group, rank

    def _maybe_finish_pause(self) -> None:
        # a rank's pause waits for the group's consensus and its own device (module docstring)
        if self.pause is not None and self.group.may_finish_pause(self):
            Engine._maybe_finish_pause(self)

    def _submit(self, planned, preempted, t0) -> None:
        Engine._submit(self, planned, preempted, t0)
        self.group.kick()  # a step started: the wave is running, idle ranks run dummy batches

    def _on_pause(self, pause) -> None:
        self.group.pauses_taken[self.rank] += 1
        if pause.abort_all and self.group.finish_drops_outputs():
            # tpu-inference#3362: the requests are finished as aborted, their abort outputs never sent
            aborted = self.sched.abort_all()
            if aborted:
                self.emit(Aborted(t_ns=self.env.now, req_ids=tuple(r.req_id for r in aborted), reason="pause",
                                  side="engine"))
            pause = Pause(pause.mode, pause.clear_cache, pause.done, False)
        Engine._on_pause(self, pause)
        self.group.kick()  # an idle rank runs one dummy batch towards the pause consensus


def _every_rank(name: str) -> property:
    """An engine attribute the trainer sets on the whole group: read from rank 0, written to every rank."""

    def set_all(self, value) -> None:
        for e in self.ranks:
            setattr(e, name, value)

    return property(lambda self: getattr(self.ranks[0], name), set_all)


class DPEngines:
    """The client's view of ``data_parallel_size`` engine cores (module docstring); ``ranks[r]`` is rank r."""

    def __init__(self, env, cfg, timing, emit_of, progress, fault_rng, pause_wait: str, dummy_ns: int):
        """``emit_of(rank)``: the record sink of rank r; ``pause_wait``: "all" (vLLM's client) or "first"
        (a loop that goes on when one rank's pause completes: a bug); ``dummy_ns``: one dummy batch."""
        self.env, self.cfg, self.pause_wait, self.dummy_ns = env, cfg, pause_wait, dummy_ns
        n = cfg.data_parallel_size
        # rank 0 draws from the run's fault generator, as the single core does; the others from their own
        self.ranks = [RankEngine(self, r, env, cfg, timing, emit_of(r), self._output_of(r), progress,
                                 fault_rng=fault_rng if r == 0 else random.Random(f"{fault_rng.random()}:rank{r}"))
                      for r in range(n)]
        self.fault_rng = random.Random(f"{fault_rng.random()}:dp")
        self.pauses_taken = [0] * n
        self.dummy_batches = [0] * n
        self.rank_of: dict = {}  # req_id -> rank it was routed to
        self.inflight = [0] * n  # the client's unfinished requests per rank (DPLBAsyncMPClient.engine_inflight)
        self._start = 0  # where the next routing scan starts (ties rotate)
        self.on_output = None  # the client's output handler (Rollout sets it, as on a single core)
        self._kicks = [env.event() for _ in range(n)]  # each rank's dummy-batch loop sleeps on its own

    # --- what the client and the trainer use of an engine ------------------------------------------------

    @property
    def hooks(self):
        return self.ranks[0].hooks

    @hooks.setter
    def hooks(self, h) -> None:
        self.ranks[0].hooks = h  # perturbations act at rank 0 (module docstring)

    version = _every_rank("version")
    weights_version = _every_rank("weights_version")

    @property
    def step(self) -> int:
        return sum(e.step for e in self.ranks)

    @property
    def sched(self):
        return _Requests(self.ranks)

    def submit(self, kind: str, payload=None) -> None:
        if kind == "add":
            r = self._route(payload.req_id)
            self.ranks[r].submit("add", payload)
        elif kind == "abort":
            by_rank: dict = {}
            for req_id in payload:
                r = self.rank_of.get(req_id)
                if r is not None:
                    by_rank.setdefault(r, []).append(req_id)
            for r in sorted(by_rank):
                self.ranks[r].submit("abort", tuple(by_rank[r]))
        elif kind == "reset" and type(payload) is ResetCall:
            done = self.request_reset(payload.reset_running, payload.reset_connector)
            done.callbacks.append(lambda ev: payload.done.succeed(ev.value))
        else:  # pause, resume, a reset nobody awaits: every rank
            for e in self.ranks:
                e.submit(kind, payload)
        self.kick()

    def request_pause(self, mode: str, clear_cache: bool, abort_all: bool | None = None):
        """Pause every rank; the event fires when every rank's pause completed (``pause_wait`` "all") or
        the first one's ("first")."""
        events = [e.request_pause(mode, clear_cache, abort_all) for e in self.ranks]
        self.kick()
        return self.env.all_of(events) if self.pause_wait == "all" else self.env.any_of(events)

    def request_reset(self, reset_running: bool, reset_connector: bool):
        """Every rank resets; the event fires with ``ok`` when all have (ok: every rank's was)."""
        events = [e.request_reset(reset_running, reset_connector) for e in self.ranks]
        done = self.env.event()
        self.env.all_of(events).callbacks.append(lambda ev: done.succeed(all(x.value for x in events)))
        self.kick()
        return done

    def run(self):
        """SimPy process: start every rank's core loop and dummy-batch loop."""
        for e in self.ranks:
            self.env.process(e.run())
            self.env.process(self._dummies(e))
        return
        yield

    # --- routing -----------------------------------------------------------------------------------------

    def _route(self, req_id: str) -> int:
        n = len(self.ranks)
        best, best_score = 0, None
        for i in range(n):
            r = (self._start + i) % n
            e = self.ranks[r]
            waiting, running = e.sched.counts()
            waiting += sum(1 for kind, _ in e.inputs if kind == "add")  # sent, not taken yet
            score = max(self.inflight[r], waiting + running)
            if waiting:
                score += waiting * 6.0 * max(0.0, e.sched.kv_usage() - 0.5)
            if best_score is None or score < best_score:
                best, best_score = r, score
        self._start = (self._start + 1) % n
        self.rank_of[req_id] = best
        self.inflight[best] += 1
        return best

    def _output_of(self, rank: int):
        def output(step, frames) -> None:
            for f in frames:  # a final frame ends the client's in-flight request there
                if f.finish_reason is not None and self.rank_of.get(f.req_id) == rank:
                    self.inflight[rank] -= 1
                    del self.rank_of[f.req_id]
            self.on_output(step, frames)
        return output

    # --- waves and pause consensus -----------------------------------------------------------------------

    def kick(self) -> None:
        for ev in self._kicks:
            if not ev.triggered:
                ev.succeed()

    def unfinished(self) -> bool:
        """Whether any rank has unfinished requests (the all-reduced flag; not its batch queue)."""
        return any(e.sched.has_work() for e in self.ranks)

    def _pause_pending(self) -> bool:
        return any(e.pause is not None for e in self.ranks)

    def may_finish_pause(self, rank: RankEngine) -> bool:
        """Whether ``rank``'s pause may complete, its own drain aside: every rank took the pause, none has
        unfinished requests, and its last forward pass (real or dummy) has ended."""
        taken = self.pauses_taken
        return (all(t == taken[0] for t in taken) and not self.unfinished()
                and rank.gpu_free_ns <= self.env.now)

    def finish_drops_outputs(self) -> bool:
        return fault_hit(self.fault_rng, float(self.cfg.fault_dp_finish_no_output))

    def _finish_pauses(self) -> None:
        for e in self.ranks:
            if e.pause is not None:
                e._maybe_finish_pause()

    def _dummies(self, rank: RankEngine):
        """SimPy process: ``rank``'s dummy batches. While the wave runs (any rank has unfinished requests) or
        a pause awaits consensus, an idle rank runs one dummy forward pass after another; a busy one is looked
        at again after a dummy batch's time. Pauses are looked at after each."""
        env = self.env
        while True:
            if not (self.unfinished() or self._pause_pending()):
                self._finish_pauses()
                self._kicks[rank.rank] = ev = env.event()
                yield ev
                continue
            if not rank.queue and not rank.sched.has_work() and not rank.inputs:
                start = max(env.now, rank.gpu_free_ns)
                rank.gpu_free_ns = start + self.dummy_ns
                self.dummy_batches[rank.rank] += 1
            yield env.timeout(max(rank.gpu_free_ns - env.now, self.dummy_ns))
            self._finish_pauses()


class _Requests:
    """``engine.sched`` as the client reads it (``requests``: every rank's live requests by id)."""

    def __init__(self, ranks):
        self.requests = {}
        for e in ranks:
            self.requests.update(e.sched.requests)


def dummy_batch_ns(steptime) -> int:
    """One dummy batch: a forward pass of one decode token (the step-time model's base cost and one token)."""
    return int(steptime.base_us * 1000 + steptime.decode_us * 1000)


def build_dp(env, s, timing, records: list, progress, fault_rng):
    """The DP engines of scenario ``s`` for ``simulate``: ``(engines, client emit, procs, processes)``;
    ``procs`` is filled with the process of each record appended to ``records``."""
    from tracesim.sim.run import SIM_PROCESS

    procs: list = []

    def emit_of(proc: int):
        def emit(record) -> None:
            records.append(record)
            procs.append(proc)
        return emit

    engines = DPEngines(env, s.engine, timing, lambda r: emit_of(rank_proc(r)), progress, fault_rng,
                        s.loop.dp_pause_wait, dummy_batch_ns(s.steptime))
    processes = (SIM_PROCESS,) + tuple(rank_process(r) for r in range(s.engine.data_parallel_size))
    return engines, emit_of(CLIENT_PROC), procs, processes
