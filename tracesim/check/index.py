"""One pass over a trace that gathers what every checker needs.

Checkers share this index instead of re-scanning the records: per-request state for the engine side (one
``EngineInc`` per incarnation, i.e. per engine ``RequestAdded`` of an id) and the client side (one ``ClientInc``
per client ``RequestAdded``), the steps by ``(proc, step)`` (paired once per trace by ``Trace.index()``,
format/index.py, with their faults and the trace start), and the few facts that depend on the interleaving of
events (which incarnation scheduled an output frame). The index records facts; the invariant modules judge
them and word the violations.

Stream order is the order of facts: a merged trace is sorted by time, a single-process trace is written in the
order things happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracesim.format.index import Step, index_trace  # noqa: F401 - Step: re-exported for checkers
from tracesim.format.records import (
    Aborted, CacheReset, OutputDelivered, ParentAdded, Paused, RecorderLost, RequestAdded, Resumed, RewardBound,
    SampleContinued, SampleDropped, SampleLogprobs, SampleSettings, StepScheduled, StepUpdated, TrainerConsumed,
    WeightsFingerprint, WeightsUpdated, KvTransfer,
)


# A group-wide SampleDropped is recorded on each member at most this many times: the drops a member can
# collect stay bounded when a hostile trace drops one big group over and over.
MAX_GROUP_DROPS = 4


class EngineInc:
    """One incarnation of a request inside the engine: from its engine-side add to its finish or abort."""

    __slots__ = ("req_id", "add", "proc", "outs", "ended", "end_rec", "client", "resume")

    def __init__(self, req_id: str, add, proc: int):
        self.req_id, self.add, self.proc = req_id, add, proc
        self.resume = None  # (sched record, SchedReq, tokens emitted before it) of a resume not yet sampled
        self.outs: list = []  # (step, sampled, upd record) of every applied, non-stale output with tokens
        self.ended: str | None = None  # "finished" or "aborted"
        self.end_rec = None
        self.client: ClientInc | None = None


class ClientInc:
    """One incarnation of a sample on the client side: admission, deliveries, rewards, consumption, drops."""

    __slots__ = ("req_id", "add", "frames", "final", "rewards", "consumed", "dropped", "aborted", "engine",
                 "superseded_by", "continues", "carried")

    def __init__(self, req_id: str, add):
        self.req_id, self.add = req_id, add  # add is None for a sample seen without a client admission
        self.frames: list = []  # OutputDelivered, in stream order
        self.final = None  # the first finished frame
        self.rewards: list = []  # RewardBound
        self.consumed: list = []  # (TrainerConsumed, ConsumedSample)
        self.dropped: list = []  # SampleDropped
        self.aborted: list = []  # Aborted (either side)
        self.engine: EngineInc | None = None
        self.superseded_by = None  # the client RequestAdded that re-admitted the same id
        # a continuation (SampleContinued before its add): the incarnation whose tokens it carries, and how many;
        # its frames count output positions from ``carried``, its engine incarnation's from 0
        self.continues: ClientInc | None = None
        self.carried = 0


@dataclass
class Index:
    header: object
    steps: dict = field(default_factory=dict)  # (proc, step) -> Step (the trace index's)
    step_order: list = field(default_factory=list)  # Steps in schedule order
    engine: dict = field(default_factory=dict)  # req_id -> [EngineInc, ...]
    client: dict = field(default_factory=dict)  # req_id -> [ClientInc, ...]
    client_order: list = field(default_factory=list)  # every ClientInc, in order of first sight
    groups: dict = field(default_factory=dict)  # group_id -> [ClientInc with a client add, ...]
    weights: list = field(default_factory=list)
    resets: list = field(default_factory=list)
    pauses: list = field(default_factory=list)
    resumes: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    consumes: list = field(default_factory=list)
    timeline: list = field(default_factory=list)  # (proc, record) for sched/add(engine)/abort/reset/weights/kv_transfer
    n_exec = n_upd = n_deliver = n_client_adds = n_engine_adds = 0
    n_kv_transfers = 0  # KvTransfer records (prefill/decode disaggregation)
    lost: list = field(default_factory=list)  # RecorderLost
    sampling: list = field(default_factory=list)  # SampleSettings, in stream order (logprobs.py)
    sample_logprobs: list = field(default_factory=list)  # SampleLogprobs, in stream order (logprobs.py)
    fingerprints: list = field(default_factory=list)  # WeightsFingerprint, in stream order
    parent_of: dict = field(default_factory=dict)  # child request id -> ParentAdded naming it (n > 1 requests)
    # facts for the sequential engine invariants: (code, Step or None, record, detail...)
    step_faults: list = field(default_factory=list)
    frame_faults: list = field(default_factory=list)
    # resumes whose rebuilt context is not prompt + emitted tokens: (inc, resume sched, its SchedReq, tokens
    # emitted before it, sched of the chunk that sampled, its SchedReq, context length fed by then, upd)
    resume_faults: list = field(default_factory=list)
    twice_live: list = field(default_factory=list)  # (side, new add record, old incarnation)
    in_flight_at_end: dict = field(default_factory=dict)  # proc -> steps scheduled, never updated, at the end
    t0_ns: int | None = None  # the first record's time: the trace start that messages count from
    derived: dict = field(default_factory=dict)  # values computed once and shared by checkers

    @property
    def has_client(self) -> bool:
        return bool(self.n_client_adds or self.n_deliver or self.rewards or self.consumes)

    @property
    def has_engine(self) -> bool:
        return bool(self.steps)


def build_index(trace) -> Index:
    """Index ``trace`` (a ``tracesim.format.Trace``) in one pass; never raises on odd content. The steps come
    from ``trace.index()`` (built once per trace, shared with plots)."""
    tix = trace.index() if hasattr(trace, "index") else index_trace(trace)
    ix = Index(trace.header, steps=tix.steps, step_order=tix.step_order, step_faults=tix.step_faults,
               in_flight_at_end=tix.in_flight_at_end, t0_ns=tix.first_ns)
    ix.n_exec, ix.n_upd = tix.n_exec, tix.n_upd
    scan = _Scanner(ix)
    handlers = {
        StepScheduled: scan.sched, StepUpdated: scan.upd, RequestAdded: scan.add,
        OutputDelivered: scan.deliver, RewardBound: scan.reward, TrainerConsumed: scan.consume,
        SampleDropped: scan.drop, Aborted: scan.abort, WeightsUpdated: scan.weights, CacheReset: scan.reset,
        Paused: ix.pauses.append, Resumed: ix.resumes.append, RecorderLost: ix.lost.append,
        SampleSettings: ix.sampling.append, SampleLogprobs: ix.sample_logprobs.append,
        WeightsFingerprint: ix.fingerprints.append, SampleContinued: scan.continued,
        ParentAdded: lambda rec: ix.parent_of.update(dict.fromkeys(rec.child_ids, rec)),
        KvTransfer: scan.kv_transfer,
    }
    get = handlers.get
    if trace.procs:
        for proc, rec in zip(trace.procs, trace.records):
            h = get(type(rec))
            if h is not None:
                scan.proc = proc
                h(rec)
    else:
        for rec in trace.records:
            h = get(type(rec))
            if h is not None:
                h(rec)
    scan.finish()
    return ix


_NO_RESETS = (0, None)


class _Scanner:
    def __init__(self, ix: Index):
        self.ix = ix
        self.proc = 0
        # (proc, step) -> ({req_id: EngineInc}, resets) from the schedule the trace index took until the update
        # it took: the records it did not take (repeats, out of order) are its faults and change nothing here
        self.pending: dict = {}
        self.scheduled: set = set()  # keys whose taken schedule was seen (the first of the key in the stream)
        self.resets = 0  # effective cache resets that preempted running requests (their in-flight output is void)
        self.last_reset = None
        # engine-side ones per engine process: a data-parallel rank's reset voids only that rank's steps
        self.proc_resets: dict = {}  # proc -> (count, last such CacheReset)
        self.adopted: set = set()  # ClientIncs replaced by the admission they preceded: out of client_order
        # group id -> members a group-wide drop still applies to (not superseded, dropped fewer than
        # MAX_GROUP_DROPS times): each drop walks these only, so 100k drops of a big group stay linear
        self.group_live: dict = {}
        self.continuing: dict = {}  # req_id -> (ClientInc continued, tokens carried) until the id's client add

    # --- engine ------------------------------------------------------------------------------------------

    def _live_engine(self, req_id: str, proc: int, add=None) -> EngineInc:
        incs = self.ix.engine.get(req_id)
        if incs is None:
            inc = EngineInc(req_id, add, proc)
            self.ix.engine[req_id] = [inc]
            return inc
        return incs[-1]

    def sched(self, rec: StepScheduled) -> None:
        ix, proc = self.ix, self.proc
        key = (proc, rec.step)
        if key in self.scheduled:
            return
        self.scheduled.add(key)
        ix.timeline.append((proc, rec))
        engine = ix.engine
        snap = {}
        for q in rec.reqs:
            incs = engine.get(q.req_id)
            inc = snap[q.req_id] = incs[-1] if incs is not None else self._live_engine(q.req_id, proc)
            if q.resumed:  # judged at the resume's first sampled output (resumed_context_complete)
                inc.resume = (rec, q, sum(n for _s, n, _u in inc.outs))
        self.pending[key] = (snap, self.resets, self.proc_resets.get(proc, _NO_RESETS)[0])

    def upd(self, rec: StepUpdated) -> None:
        ix = self.ix
        key = (self.proc, rec.step)
        pend = self.pending.pop(key, None)
        if pend is None:
            return
        st = ix.steps[key]
        snap, resets, own = pend
        count, last_own = self.proc_resets.get(self.proc, _NO_RESETS)
        reset_since = last_own if own != count else self.last_reset if resets != self.resets else None
        engine = ix.engine
        for out in rec.outs:
            incs = engine.get(out.req_id)
            cur = incs[-1] if incs is not None else None
            if out.sampled > 0:
                # Tokens were appended to the request. A frame from before a plain preemption still
                # delivers its tokens (vLLM does: the position was sampled from valid KV; it marks the frame
                # stale only for its counters). A frame from before an abort, a re-add of the id, or a cache
                # reset that preempted running requests (they resume and resample that position) is void.
                inc = snap.get(out.req_id)
                if inc is None:
                    ix.frame_faults.append(("unscheduled", st, rec, out, None, None))
                elif inc is not cur or cur.ended == "aborted":
                    ix.frame_faults.append(("other_incarnation", st, rec, out, inc, None))
                elif reset_since is not None:
                    ix.frame_faults.append(("reset", st, rec, out, inc, reset_since))
                if cur is not None:
                    if cur.resume is not None and inc is cur and rec.step >= cur.resume[0].step:
                        self._resumed(cur, st, rec)
                    cur.outs.append((rec.step, out.sampled, rec))
            if out.finish_reason is not None and cur is not None and cur.ended is None:
                cur.ended, cur.end_rec = ("aborted" if out.finish_reason == "abort" else "finished"), rec

    def _resumed(self, inc: EngineInc, st, upd: StepUpdated) -> None:
        """The first output with tokens since ``inc``'s resume: the chunk that sampled it fed the context up to
        ``computed_tokens + scheduled``, which is the prompt plus every token emitted before the resume."""
        sched, q, emitted = inc.resume
        inc.resume = None
        prompt_len = inc.add.prompt_len if inc.add is not None else 0
        q2 = next((r for r in st.sched.reqs if r.req_id == inc.req_id), None)
        if not prompt_len or q2 is None:
            return  # no engine add with the prompt length: nothing to compare with
        fed = q2.computed_tokens + q2.prefill_tokens + q2.decode_tokens
        if fed != prompt_len + emitted:
            self.ix.resume_faults.append((inc, sched, q, emitted, st.sched, q2, fed, upd))

    def add(self, rec: RequestAdded) -> None:
        if rec.side == "client":
            self._client_add(rec)
            return
        ix = self.ix
        ix.n_engine_adds += 1
        ix.timeline.append((self.proc, rec))
        inc = EngineInc(rec.req_id, rec, self.proc)
        incs = ix.engine.get(rec.req_id)
        if incs is None:
            ix.engine[rec.req_id] = [inc]
        else:
            old = incs[-1]
            if old.add is None and not old.outs and old.ended is None:
                incs[-1] = inc  # placeholder made by a schedule seen before the add
            else:
                if old.ended is None:
                    ix.twice_live.append(("engine", rec, old))
                incs.append(inc)
        c = ix.client.get(rec.req_id)
        if c is not None and c[-1].engine is None:
            c[-1].engine, inc.client = inc, c[-1]

    def kv_transfer(self, rec: KvTransfer) -> None:
        # P/D transfers take their place among the engine's aborts (check/pd.py)
        self.ix.timeline.append((self.proc, rec))
        self.ix.n_kv_transfers += 1

    def abort(self, rec: Aborted) -> None:
        ix = self.ix
        ix.timeline.append((self.proc, rec))
        for req_id in rec.req_ids:
            # A client-side abort is only the client's request: the engine ends the incarnation when it
            # processes it (its own Aborted record), possibly after a step in flight applied its output.
            incs = ix.engine.get(req_id) if rec.side != "client" else None
            if incs is not None:
                inc = incs[-1]
                if inc.ended is None:
                    inc.ended, inc.end_rec = "aborted", rec
            c = ix.client.get(req_id)
            if c is not None:
                c[-1].aborted.append(rec)

    def weights(self, rec: WeightsUpdated) -> None:
        self.ix.weights.append(rec)
        self.ix.timeline.append((self.proc, rec))

    def reset(self, rec: CacheReset) -> None:
        if rec.ok and rec.reset_running:
            if rec.side == "engine":
                self.proc_resets[self.proc] = (self.proc_resets.get(self.proc, _NO_RESETS)[0] + 1, rec)
            else:  # not the engine's own record: it may void any engine's steps
                self.resets += 1
                self.last_reset = rec
        self.ix.resets.append(rec)
        self.ix.timeline.append((self.proc, rec))

    # --- client ------------------------------------------------------------------------------------------

    def continued(self, rec: SampleContinued) -> None:
        if type(rec.from_req_id) is not str or type(rec.req_id) is not str:
            return  # odd content: nothing to join
        incs = self.ix.client.get(rec.from_req_id)
        if incs is not None and type(rec.carried_tokens) is int and rec.carried_tokens >= 0:
            self.continuing[rec.req_id] = (incs[-1], rec.carried_tokens)

    def _client_add(self, rec: RequestAdded) -> None:
        ix = self.ix
        ix.n_client_adds += 1
        inc = ClientInc(rec.req_id, rec)
        if self.continuing:
            cont = self.continuing.pop(rec.req_id, None)
            if cont is not None:
                inc.continues, inc.carried = cont
        incs = ix.client.get(rec.req_id)
        if incs is None:
            ix.client[rec.req_id] = [inc]
        else:
            old = incs[-1]
            if old.add is None:
                # records about the id arrived before its admission (merged clocks): adopt them
                inc.frames, inc.final, inc.rewards = old.frames, old.final, old.rewards
                inc.consumed, inc.dropped, inc.aborted = old.consumed, old.dropped, old.aborted
                incs[-1] = inc
                self.adopted.add(old)  # removed from client_order at the end (list.remove is O(n) each)
            else:
                if old.final is None and not old.aborted and not old.consumed and not old.dropped:
                    ix.twice_live.append(("client", rec, old))
                old.superseded_by = rec
                incs.append(inc)
        ix.client_order.append(inc)
        if rec.group_id is not None:
            ix.groups.setdefault(rec.group_id, []).append(inc)
            self.group_live.setdefault(rec.group_id, []).append(inc)
        e = ix.engine.get(rec.req_id)
        if e is not None and e[-1].client is None and e[-1].ended is None:
            e[-1].client, inc.engine = inc, e[-1]

    def _client(self, req_id: str) -> ClientInc:
        incs = self.ix.client.get(req_id)
        if incs is not None:
            return incs[-1]
        inc = ClientInc(req_id, None)
        self.ix.client[req_id] = [inc]
        self.ix.client_order.append(inc)
        return inc

    def deliver(self, rec: OutputDelivered) -> None:
        self.ix.n_deliver += 1
        inc = self._client(rec.req_id)
        inc.frames.append(rec)
        if rec.finished and inc.final is None:
            inc.final = rec

    def reward(self, rec: RewardBound) -> None:
        self.ix.rewards.append(rec)
        self._client(rec.req_id).rewards.append(rec)

    def consume(self, rec: TrainerConsumed) -> None:
        self.ix.consumes.append(rec)
        for sample in rec.samples:
            self._client(sample.req_id).consumed.append((rec, sample))

    def drop(self, rec: SampleDropped) -> None:
        if rec.req_ids:
            for req_id in rec.req_ids:
                self._client(req_id).dropped.append(rec)
        elif rec.group_id is not None:  # the whole group, every member admitted so far
            live = self.group_live.get(rec.group_id)
            if live:
                keep = []
                for inc in live:
                    if inc.superseded_by is None and len(inc.dropped) < MAX_GROUP_DROPS:
                        inc.dropped.append(rec)
                        keep.append(inc)
                self.group_live[rec.group_id] = keep

    def finish(self) -> None:
        """Link client and engine incarnations left unlinked by stream order (engine add seen first)."""
        ix = self.ix
        if self.adopted:
            adopted = self.adopted
            ix.client_order = [c for c in ix.client_order if c not in adopted]
        for req_id, cincs in ix.client.items():
            eincs = ix.engine.get(req_id)
            if not eincs:
                continue
            free = [e for e in eincs if e.client is None]
            taken = 0
            for c in cincs:
                if c.engine is None and taken < len(free):
                    c.engine = free[taken]
                    c.engine.client = c
                    taken += 1
