"""The native scheduling policy, after vLLM V1's ``Scheduler`` / ``AsyncScheduler`` (0.32).

One ``schedule()`` call: running requests first, in order, each getting ``num_tokens + placeholders -
num_computed`` tokens capped by the token budget (chunked prefill); when KV blocks run out the last running
request is preempted (recompute: its KV is freed and it goes back to the front of the waiting queue). If
nothing was preempted and the engine is not paused, waiting requests are admitted in order while the budget,
``max_num_seqs`` and the KV blocks allow (the whole sequence must fit, not just its first chunk, plus the
watermark while others run), with prefix-cache hits counted on admission (full blocks only, and never the
last token). ``update()`` applies one step's output: a sampled token per request that caught
up with its tokens, finishing at the stop length or ``max_tokens``.

Async scheduling adds one output placeholder per scheduled non-chunk request, resolved by the update. Output
in flight when a request is preempted is its stale share (vLLM's ``num_stale_output_tokens``): after a plain
(KV-pressure) preemption it is still applied and delivered, marked ``stale``, and the request resumes only once
the share has drained; after a reset (abort, or a cache reset preempting running requests) it is dropped.

Engine fault modes (``EngineConfig.fault_*``, docs/simulator.md "Engine fault modes") that live in the
scheduler: a dropped stale frame applied to the new incarnation instead (``fault_frame_to_new_incarnation``;
``discard_stale_frames = false`` is the same at probability 1), and a resumed request rebuilt without the
tokens its stale share delivered (``fault_resume_context_missing_tokens``). Each is drawn per occurrence from
the run's fault generator, and only when its probability is above 0: a run without faults draws nothing.
"""

from __future__ import annotations

import zlib
from collections import deque

from tracesim.format.records import PAUSED_ALL, PAUSED_NEW, UNPAUSED
from tracesim.sim.kvcache import BlockPool
from tracesim.sim.records_hot import out_req, sched_req

WAITING, RUNNING, FINISHED = 0, 1, 2


def token_id(req_hash: int, pos: int, version: int) -> int:
    """Deterministic pseudo token id: differs when another weight version produced the position."""
    return (req_hash * 1_000_003 + pos * 7_919 + version * 104_729) % 50_257


def fault_hit(rng, p: float) -> bool:
    """Whether a fault of probability ``p`` strikes this occurrence: never draws at 0 (a run without faults
    stays byte-identical) nor at 1."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return rng.random() < p


class SimReq:
    """One request as the engine model sees it. A plain class with every field set in ``__init__`` (not a
    dataclass) so that the compiled build (``scheduler.pxd``) can make it a C-level type; equality is
    identity."""

    def __init__(self, req_id: str, prompt_len: int, max_tokens: int, stop_len: int, prompt_key: str,
                 group_id: str | None = None, sample_idx: int = 0, group_size: int = 1):
        self.req_id = req_id
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.stop_len = stop_len  # output length at which the sample emits its stop token
        self.prompt_key = prompt_key  # samples with equal keys share the prompt (prefix-cache hits)
        self.group_id = group_id
        self.sample_idx = sample_idx
        self.group_size = group_size
        self.status = WAITING
        self.num_computed = 0
        self.placeholders = 0
        self.inflight = 0  # steps scheduled and not yet updated
        self.incarnation = 0  # bumped when in-flight output must be dropped (abort, cache-reset preemption)
        self.preempted = False  # next admission is a resume
        self.drop_inflight = False  # in-flight output of the last preemption is dropped, not delivered
        self.stale_share = 0  # entries in flight at the last preemption, not yet updated (vLLM: stale output)
        self.preempt_out_len = 0  # output tokens at the last preemption: the stale share appends past it
        self.blocks: list = []
        self.committed = 0  # leading blocks already given their content key
        self.arrival_ns = None  # replay: the recorded time the engine core added it
        self.prompt_block_keys = None  # replay: vLLM's prefix-cache keys of the full prompt blocks
        self.known_output = None  # replay: the output token ids the recording sampled (block keys)
        self._output_keys: list = []
        self.out_tokens: list = []
        self.stamp_versions: list = []  # version stamped by the update (what vLLM reports)
        self.finish_reason = None
        self.hash = zlib.crc32(req_id.encode())
        # The OutReq of an update that sampled one token and did not finish it: the same at every decode step,
        # so one immutable instance serves them all (an update makes one OutReq per request per step).
        self.sampled_out = out_req(req_id=req_id, sampled=1, finish_reason=None, stale=False, token_ids=None,
                                   logprobs=None)

    def __repr__(self) -> str:
        return f"SimReq({self.req_id!r}, status={self.status}, computed={self.num_computed})"

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + len(self.out_tokens)

    def block_key(self, i: int, block_size: int):
        """Content key of full block ``i``: vLLM's own key of a prompt block when the recording has it (prompts
        with a common prefix share those), else ``(prompt_key, i)``. A block holding output tokens is keyed by
        the request, ``(req_id, i)`` (sampled outputs differ), unless replay knows the output token ids: then
        by the prompt and the outputs so far, so samples that generated the same tokens share it as in vLLM."""
        if i < self.prompt_len // block_size:
            if self.prompt_block_keys is not None and i < len(self.prompt_block_keys):
                return self.prompt_block_keys[i]
            return (self.prompt_key, i)
        if self.known_output is None:
            return (self.req_id, i)
        keys = self._output_keys
        first = self.prompt_len // block_size
        while len(keys) <= i - first:  # chained: each key holds the previous one and its block's outputs
            j = first + len(keys)
            lo, hi = max(0, j * block_size - self.prompt_len), (j + 1) * block_size - self.prompt_len
            keys.append((keys[-1] if keys else self.prompt_key, tuple(self.known_output[lo:hi])))
        return keys[i - first]

    def block_keys(self, upto: int, block_size: int) -> list:
        """Content keys of the full blocks among the first ``upto`` tokens."""
        return [self.block_key(i, block_size) for i in range(upto // block_size)]


class Planned:
    """One request's share of a schedule (an entry of ``SchedulerInterface.schedule()``'s list), before it
    becomes a ``SchedReq``. Made once per request per step: a C struct with a free list in the compiled build
    (``scheduler.pxd``), read by field there.

    * ``req``: the SimReq;
    * ``num_tokens``: tokens scheduled for it in this step;
    * ``computed_before``: its ``num_computed`` before this step;
    * ``resumed``: re-admitted after a preemption by this schedule;
    * ``cached``: prefix-cache hit tokens, when this schedule admitted it (else 0);
    * ``incarnation``: its incarnation when scheduled (an update for an older one is stale);
    * ``samples``: the step samples a token for it (not a prefill chunk);
    * ``admitted``: admitted from the waiting queue by this schedule (new or resumed).

    Built only by ``new_planned`` (one way, every field given): no ``__init__``, whose argument parsing a C
    call skips (the native scheduler makes one per request per step)."""

    __slots__ = ("req", "num_tokens", "computed_before", "resumed", "cached", "incarnation", "samples", "admitted")

    def __repr__(self) -> str:
        return (f"Planned({self.req.req_id!r}, num_tokens={self.num_tokens}, computed_before={self.computed_before}, "
                f"resumed={self.resumed}, cached={self.cached}, incarnation={self.incarnation}, "
                f"samples={self.samples}, admitted={self.admitted})")


def new_planned(req, num_tokens, computed_before, resumed, cached, incarnation, samples, admitted):
    """The ``Planned`` with these fields (see the class): a C call from the compiled native scheduler, a
    Python one (keywords accepted) from the vLLM backend."""
    p = Planned.__new__(Planned)
    p.req = req
    p.num_tokens = num_tokens
    p.computed_before = computed_before
    p.resumed = resumed
    p.cached = cached
    p.incarnation = incarnation
    p.samples = samples
    p.admitted = admitted
    return p


def sched_reqs(planned) -> tuple:
    """The ``SchedReq`` of each planned entry, in one loop. The recorder's split (tracesim/record/convert.py):
    one fed token of a running request past its prompt is a decode; new, resumed and multi-token shares are
    prefill."""
    out = []
    for p in planned:
        req, n, before = p.req, p.num_tokens, p.computed_before
        decode = 1 if (n == 1 and not p.admitted and before >= req.prompt_len) else 0
        out.append(sched_req(req_id=req.req_id, prefill_tokens=n - decode, decode_tokens=decode, resumed=p.resumed,
                             cached_tokens=p.cached, spec_tokens=0, computed_tokens=before,
                             placeholders=req.placeholders))
    return tuple(out)


class Scheduler:
    """The native scheduling backend (``interface.SchedulerInterface``; see the module docstring)."""

    def __init__(self, cfg, fault_rng=None):
        self.cfg = cfg
        # Fault probabilities (see the module docstring); fault_rng is drawn only where one is above 0.
        self.p_new_incarnation = 1.0 if not cfg.discard_stale_frames else float(cfg.fault_frame_to_new_incarnation)
        self.p_missing_context = float(cfg.fault_resume_context_missing_tokens)
        self.fault_rng = fault_rng
        self.pool = BlockPool(cfg.num_gpu_blocks, cfg.block_size, cfg.enable_prefix_caching,
                              getattr(cfg, "kv_offload_blocks", 0))
        self.watermark_blocks = int(cfg.watermark * cfg.num_gpu_blocks)
        self.waiting: deque = deque()
        self.running: list = []
        self.requests: dict = {}  # req_id -> SimReq, live ones (insertion ordered)
        self.pause_state = UNPAUSED
        self.finished_since: list = []  # req_ids finished since the previous schedule

    # --- requests ----------------------------------------------------------------------------------------

    def add(self, req: SimReq) -> None:
        self.requests[req.req_id] = req
        self.waiting.append(req)

    def has_work(self) -> bool:
        if self.pause_state == PAUSED_ALL:
            return False
        return bool(self.running) or (self.pause_state == UNPAUSED and bool(self.waiting))

    def _finish(self, req: SimReq, reason: str) -> None:
        req.status = FINISHED
        req.finish_reason = reason
        self.pool.release(req.blocks)
        req.blocks = []
        self.requests.pop(req.req_id, None)
        self.finished_since.append(req.req_id)

    def abort_requests(self, req_ids) -> list:
        """Finish the live requests among ``req_ids`` with reason "abort" (``SchedulerInterface``)."""
        live = []
        for req_id in req_ids:
            req = self.requests.get(req_id)
            if req is not None:
                live.append(req)
        for req in live:
            req.incarnation += 1
            if req in self.running:
                self.running.remove(req)
            elif req in self.waiting:
                self.waiting.remove(req)
            self._finish(req, "abort")
        return live

    def abort_all(self) -> list:
        """Finish every live request with reason "abort"; return them (in admission order)."""
        reqs = list(self.requests.values())
        for req in reqs:
            req.incarnation += 1
            self._finish(req, "abort")
        self.running.clear()
        self.waiting.clear()
        return reqs

    def set_pause_state(self, state: int) -> None:
        self.pause_state = state

    def has_finished(self) -> bool:
        return bool(self.finished_since)

    def take_finished(self) -> tuple:
        finished, self.finished_since = tuple(self.finished_since), []
        return finished

    def num_running(self) -> int:
        return len(self.running)

    def kv_usage(self) -> float:
        return self.pool.usage()

    def preempt(self, req: SimReq, drop_inflight: bool) -> None:
        self.pool.release(req.blocks)
        req.blocks = []
        req.committed = 0
        req.status = WAITING
        req.num_computed = 0
        req.placeholders = 0
        req.preempted = True
        req.drop_inflight = drop_inflight
        # vLLM assigns num_stale_output_tokens = num_in_flight_tokens: every entry still in flight is stale
        req.stale_share = req.inflight
        req.preempt_out_len = len(req.out_tokens)
        if drop_inflight:
            req.incarnation += 1
        self.waiting.appendleft(req)

    def reset_prefix_cache(self, reset_running: bool, reset_connector: bool = False) -> tuple:
        """Return (ok, preempted req_ids); with ``reset_running`` running requests are preempted first. With
        ``reset_connector`` the external KV tier is emptied too, whether or not the GPU reset succeeds (as
        vLLM's ``Scheduler.reset_prefix_cache`` calls ``reset_connector_cache`` either way)."""
        preempted = []
        if reset_running:
            while self.running:
                req = self.running.pop()
                self.preempt(req, drop_inflight=True)
                preempted.append(req.req_id)
        ok = self.pool.reset()
        if reset_connector and self.pool.offload_blocks:
            ok = self.pool.reset_tier() and ok
        return ok, tuple(preempted)

    def has_kv_tier(self) -> bool:
        """Whether an external KV tier (``[engine].kv_offload_blocks``) sits beside the GPU prefix cache."""
        return self.pool.offload_blocks > 0

    # --- schedule ----------------------------------------------------------------------------------------

    def schedule(self) -> tuple:
        """Return (planned list, preempted req_ids)."""
        cfg = self.cfg
        running = self.running
        budget = 0 if self.pause_state == PAUSED_ALL else cfg.max_num_batched_tokens
        # vLLM caps long prefills only when more than one request is eligible.
        threshold = cfg.long_prefill_token_threshold if len(running) + len(self.waiting) > 1 else 0
        bs, async_sched = cfg.block_size, cfg.async_scheduling
        planned, preempted = [], []
        # Hot loop (once per running request per step): locals and an inlined allocation for the usual case
        # where the request's blocks already hold its tokens; anything else takes the general _allocate.
        # Preemption pops from the end of ``running``, past ``req``: the iterator stops where it now ends.
        for req in running:
            if budget <= 0:
                break
            computed, ph = req.num_computed, req.placeholders
            num_tokens = req.prompt_len + len(req.out_tokens)
            if ph > 0 and computed + 2 - ph >= req.prompt_len + req.max_tokens:
                continue
            n = num_tokens + ph - computed
            if 0 < threshold < n:
                n = threshold
            if n > budget:
                n = budget
            if n <= 0:
                continue
            total = computed + n
            if total <= len(req.blocks) * bs:  # no new block: _allocate reduces to the status and the commit
                req.status = RUNNING
                if (total if total < num_tokens else num_tokens) // bs > req.committed:
                    self._commit(req, total)
            else:
                while not self._allocate(req, n, []):
                    victim = running.pop()
                    self.preempt(victim, drop_inflight=False)
                    preempted.append(victim.req_id)
                    if victim is req:
                        break
                if req.status != RUNNING:
                    break
            samples = total >= num_tokens + ph
            planned.append(new_planned(req=req, num_tokens=n, computed_before=computed, resumed=False, cached=0,
                                       incarnation=req.incarnation, samples=samples, admitted=False))
            # _after_schedule, inlined (nothing later in this schedule reads these fields of a running request)
            req.num_computed = total
            req.inflight += 1
            if samples and async_sched:
                req.placeholders = ph + 1
            budget -= n
        if not preempted and self.pause_state == UNPAUSED:
            n_running = len(planned)
            budget = self._admit(planned, budget, threshold)
            for p in planned[n_running:]:
                self._after_schedule(p)
        return planned, tuple(preempted)

    def _cap(self, n: int, budget: int, threshold: int) -> int:
        if 0 < threshold < n:
            n = threshold
        return min(n, budget)

    def _admit(self, planned: list, budget: int, threshold: int) -> int:
        bs = self.cfg.block_size
        skipped = []
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            req = self.waiting[0]
            if req.inflight and not req.drop_inflight:
                skipped.append(self.waiting.popleft())  # its in-flight output lands before it is rescheduled
                continue
            if req.preempted and len(req.out_tokens) > req.preempt_out_len:
                self._resume_context(req)
            keys = req.block_keys(req.num_tokens - 1, bs)
            hits = self.pool.lookup(keys)
            # the external tier continues the GPU hit; its blocks are loaded into fresh GPU blocks
            loaded = self.pool.lookup_tier(keys, len(hits)) if self.pool.offload_blocks else 0
            cached = (len(hits) + loaded) * bs
            n = req.num_tokens - cached
            if not self.cfg.enable_chunked_prefill and n > budget:
                break
            n = self._cap(n, budget, threshold)
            # vLLM keeps `watermark` of the blocks free for admissions while others run, and (reserve_full_isl)
            # admits a request only if its whole sequence fits, not just this chunk: no over-admission.
            reserve = self.watermark_blocks if self.running else 0
            whole = -(-req.num_tokens // bs) - len(hits) if self.cfg.reserve_full_sequence else 0
            if whole and not self.pool.can_take(hits, whole + reserve):
                break
            if not self._allocate(req, n, hits, reserve, loaded):
                break
            if loaded:
                self.pool.load_tier(keys, len(hits), loaded)
            self.waiting.popleft()
            req.num_computed = cached
            resumed, req.preempted = req.preempted, False
            self.running.append(req)
            planned.append(self._plan(req, n, resumed, cached, True))
            budget -= n
        self.waiting.extendleft(reversed(skipped))
        return budget

    def _resume_context(self, req: SimReq) -> None:
        """A resumed request whose stale share delivered tokens after its preemption: with
        ``fault_resume_context_missing_tokens`` its context is rebuilt without them (the engine recomputes and
        resamples those positions; the client already has them). Drawn once per preemption."""
        n_kept = req.preempt_out_len
        req.preempt_out_len = len(req.out_tokens)  # the window closes: one draw per preemption
        if fault_hit(self.fault_rng, self.p_missing_context):
            del req.out_tokens[n_kept:]
            del req.stamp_versions[n_kept:]

    def _allocate(self, req: SimReq, n: int, hits: list, reserve: int = 0, loaded: int = 0) -> bool:
        """Blocks for ``n`` more tokens of ``req`` past the GPU cache ``hits`` and ``loaded`` blocks from the
        external tier (those need fresh GPU blocks: they count in ``need``)."""
        bs = self.cfg.block_size
        have = len(req.blocks) + len(hits)
        base = (len(hits) + loaded) * bs if (hits or loaded) else req.num_computed
        total = base + n
        need = max(0, -(-total // bs) - have)
        if hits or need:
            if not self.pool.can_take(hits, need + reserve):
                return False
            self.pool.touch(hits)
            req.blocks = req.blocks + hits + self.pool.take(need)
        req.status = RUNNING
        # Blocks whose tokens are all known get their content key now, as vLLM caches at allocation: a
        # request admitted later in the same schedule already hits them.
        self._commit(req, total)
        return True

    def _commit(self, req: SimReq, upto: int) -> None:
        """Give the full blocks among the first ``upto`` known tokens their content keys."""
        bs = self.cfg.block_size
        full = min(upto, req.num_tokens, len(req.blocks) * bs) // bs
        for i in range(req.committed, full):  # only blocks that became full since the last commit
            self.pool.commit(req.blocks[i], req.block_key(i, bs), 0)
        req.committed = max(req.committed, full)

    def _plan(self, req: SimReq, n: int, resumed: bool, cached: int, admitted: bool = False) -> Planned:
        before = req.num_computed
        return new_planned(req=req, num_tokens=n, computed_before=before, resumed=resumed, cached=cached,
                           incarnation=req.incarnation, samples=before + n >= req.num_tokens + req.placeholders,
                           admitted=admitted)

    def _after_schedule(self, p: Planned) -> None:
        req = p.req
        req.num_computed += p.num_tokens
        req.inflight += 1
        if p.samples and self.cfg.async_scheduling:
            req.placeholders += 1

    # --- update ------------------------------------------------------------------------------------------

    def update(self, planned: list, exec_version: int, stamp_version: int) -> list:
        """Apply one step's output; return OutReq entries (finished and stale ones included)."""
        cfg = self.cfg
        async_sched, bs = cfg.async_scheduling, cfg.block_size
        p_apply_stale = self.p_new_incarnation
        version_term = exec_version * 104_729  # token_id(), inlined below
        outs = []
        for p in planned:
            req, incarnation, samples = p.req, p.incarnation, p.samples
            req.inflight -= 1
            stale = incarnation != req.incarnation  # reset since scheduled: the frame is void
            share = req.stale_share > 0  # in flight at a preemption: vLLM marks it stale (and drains the share)
            if share:
                req.stale_share -= 1
            status = req.status
            if status == FINISHED and not stale:  # finished while in flight (async)
                outs.append(out_req(req_id=req.req_id, sampled=0, finish_reason=None, stale=False, token_ids=None,
                                    logprobs=None))
                continue
            if stale and not fault_hit(self.fault_rng, p_apply_stale):
                outs.append(out_req(req_id=req.req_id, sampled=0, finish_reason=None, stale=True, token_ids=None,
                                    logprobs=None))
                continue
            if not samples:
                outs.append(out_req(req_id=req.req_id, sampled=0, finish_reason=None, stale=share, token_ids=None,
                                    logprobs=None))
                continue
            if stale and status == FINISHED:
                continue
            out_tokens = req.out_tokens
            out_tokens.append((req.hash * 1_000_003 + len(out_tokens) * 7_919 + version_term) % 50_257)
            req.stamp_versions.append(stamp_version)
            if req.placeholders and not stale:
                req.placeholders -= 1
            n_out = len(out_tokens)
            if async_sched and status == RUNNING:
                # AsyncScheduler caches the block a sampled token completes when the token arrives (its
                # allocation did not know the token yet); the sync scheduler does it at the next allocation.
                upto = req.num_computed - req.placeholders
                if min(upto, req.prompt_len + n_out, len(req.blocks) * bs) // bs > req.committed:
                    self._commit(req, upto)  # (a no-op unless a block became full)
            if n_out >= req.stop_len:
                reason = "stop"
            elif n_out >= req.max_tokens:
                reason = "length"
            elif stale or share:
                outs.append(out_req(req_id=req.req_id, sampled=1, finish_reason=None, stale=True, token_ids=None,
                                    logprobs=None))
                continue
            else:
                outs.append(req.sampled_out)  # the usual entry: one shared immutable OutReq per request
                continue
            if status != FINISHED:
                if status == RUNNING:
                    self.running.remove(req)
                elif req in self.waiting:
                    self.waiting.remove(req)
                self._finish(req, reason)
            outs.append(out_req(req_id=req.req_id, sampled=1, finish_reason=reason, stale=stale or share,
                                token_ids=None, logprobs=None))
        return outs

    def counts(self) -> tuple:
        return len(self.waiting), len(self.running)


__all__ = ["Scheduler", "SimReq", "fault_hit", "Planned", "new_planned", "sched_reqs", "token_id", "WAITING",
           "RUNNING", "FINISHED", "PAUSED_ALL", "PAUSED_NEW", "UNPAUSED"]
