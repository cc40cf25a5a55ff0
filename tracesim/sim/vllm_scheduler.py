"""vLLM's own scheduler as the simulator's scheduling backend, driven in virtual time.

``VllmScheduler`` implements ``interface.SchedulerInterface`` as the native ``Scheduler`` does, but
every decision is made by a real vLLM ``Scheduler`` (``AsyncScheduler`` when ``async_scheduling`` is on),
built on the CPU without a model by ``tracesim.record.standalone`` (as vLLM's own scheduler tests do):

* ``add``: a vLLM ``Request`` whose prompt is pseudo token ids of the request's length; its prefix-cache
  block hashes are the native model's content keys (``SimReq.block_key``: vLLM's recorded hashes of the
  prompt blocks in replay, the prompt key otherwise), so both backends share exactly the same blocks.
* ``schedule``: vLLM's ``schedule()``; its ``SchedulerOutput`` becomes the ``Planned`` list the engine
  expects (same split of new / resumed / running and prefill / decode as the recorder's ``convert.py``).
* ``update``: a fake ``ModelRunnerOutput`` with one sampled token for each request that finished its
  prefill chunk when scheduled: the native model's pseudo token id, or a reserved stop token at the sample's
  stop length (vLLM's own stop check finishes it), then vLLM's ``update_from_output``.
* aborts (``abort_requests``): ``finish_requests(FINISHED_ABORTED)`` one id at a time (vLLM turns a list into a
  set, whose order would depend on the hash seed); pauses: ``set_pause_state``; cache resets:
  ``reset_prefix_cache``.

Stale frames are vLLM's: output of a request preempted by KV pressure is delivered and marked stale (the
request had ``num_stale_output_tokens`` when the update began, as the recorder marks it), output of an aborted
request or of one preempted by a cache reset is dropped (``OutReq.stale``). The scheduler-internal fault
settings (``fault_frame_to_new_incarnation``, ``discard_stale_frames=false``,
``fault_resume_context_missing_tokens``: deliberate bugs of the native model) have no vLLM counterpart and are
rejected by the scenario; the output-path faults (engine.py) apply to both backends.

vLLM is imported when this module is imported; ``make_scheduler`` imports it only for the "vllm" backend.
"""

from __future__ import annotations

import hashlib
import zlib

from tracesim.format.records import OutReq
from tracesim.sim.interface import SchedulerInterface
from tracesim.sim.scheduler import FINISHED, Scheduler, new_planned, token_id

MAX_MODEL_LEN = 2048  # the tiny model config's max_position_embeddings (tracesim/record/tinymodel.py)
STOP_TOKEN = 50_257  # fed at a sample's stop length; pseudo token ids are below it


def make_scheduler(cfg, fault_rng=None):
    """The scheduler the engine uses: native ``Scheduler`` or ``VllmScheduler`` per ``cfg.scheduler_backend``;
    ``fault_rng`` draws the native scheduler's fault modes.

    Raises ImportError (backend "vllm" without vLLM installed) and ValueError (unknown backend, or a fault of the
    native scheduler asked of the vllm backend)."""
    backend = getattr(cfg, "scheduler_backend", "native")
    if backend == "native":
        return Scheduler(cfg, fault_rng)
    if backend == "vllm":
        # Faults of the native scheduler have no vLLM counterpart: refuse them however they were set (a scenario
        # is validated when loaded; an exploration's set(KEY=VALUE) switch reaches here unvalidated).
        from tracesim.sim.scenario import SCHEDULER_FAULTS

        # (The old name discard_stale_frames = false is refused when a scenario is loaded; code that builds an
        # EngineConfig with it for the vllm backend keeps getting vLLM's behaviour, as before.)
        native_only = [k for k in SCHEDULER_FAULTS if getattr(cfg, k, 0)]
        if native_only:
            raise ValueError(f"scheduler_backend 'vllm' has no counterpart of {', '.join(native_only)}; "
                             "use the native backend")
        return VllmScheduler(cfg)
    raise ValueError(f"scheduler_backend must be 'native' or 'vllm', got {backend!r}")


def vllm_available() -> bool:
    """Whether ``import vllm`` (and the standalone driver it needs) works here."""
    try:
        import tracesim.record.standalone  # noqa: F401
    except Exception:  # vLLM missing, or broken (e.g. a torchvision that does not match torch)
        return False
    return True


def _hash(key) -> bytes:
    """vLLM block hash (bytes) of a native content key: deterministic, equal keys give equal hashes."""
    return hashlib.sha256(repr(key).encode()).digest()


class _Batch(list):
    """A schedule's ``Planned`` list, carrying vLLM's ``SchedulerOutput`` for the update."""

    out = None


class VllmScheduler(SchedulerInterface):
    """A real vLLM scheduler behind ``SchedulerInterface`` (see the module docstring).

    ``cfg``: an ``EngineConfig``. Raises ValueError if vLLM changed the configuration while validating it."""

    def __init__(self, cfg):
        from vllm.v1.core.sched.interface import PauseState
        from vllm.v1.outputs import ModelRunnerOutput
        from vllm.v1.request import Request, RequestStatus
        from vllm.sampling_params import SamplingParams

        from tracesim.record.standalone import StandaloneDriver

        self._PauseState, self._ModelRunnerOutput = PauseState, ModelRunnerOutput
        self._Request, self._SamplingParams, self._ABORTED = Request, SamplingParams, RequestStatus.FINISHED_ABORTED
        self.cfg = cfg
        driver = StandaloneDriver(
            async_scheduling=cfg.async_scheduling, num_blocks=cfg.num_gpu_blocks, max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens, prefix_caching=cfg.enable_prefix_caching,
            max_model_len=MAX_MODEL_LEN, block_size=cfg.block_size, enable_chunked_prefill=cfg.enable_chunked_prefill,
            long_prefill_token_threshold=cfg.long_prefill_token_threshold,
            scheduler_reserve_full_isl=cfg.reserve_full_sequence, watermark=cfg.watermark)
        self.v = driver.scheduler
        sc = driver.vllm_config.scheduler_config
        if (sc.max_num_batched_tokens, sc.max_num_seqs, bool(sc.enable_chunked_prefill)) != (
                cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.enable_chunked_prefill):
            raise ValueError("vLLM changed the engine configuration while validating it: "
                             f"{sc.max_num_batched_tokens=}, {sc.max_num_seqs=}, {sc.enable_chunked_prefill=}")
        self.requests: dict = {}  # req_id -> SimReq, live ones (insertion ordered, as the native model)
        self.finished_since: list = []  # req_ids finished since the previous schedule (vLLM's finished_req_ids)

    # --- state the engine reads ----------------------------------------------------------------------------

    @property
    def running(self) -> list:
        """SimReqs of vLLM's running queue, in its order (a fresh list: for reading)."""
        return [self.requests[r.request_id] for r in self.v.running]

    @property
    def waiting(self) -> list:
        """SimReqs of vLLM's waiting queue, in its order (a fresh list: for reading)."""
        return [self.requests[r.request_id] for r in self.v.waiting]

    @property
    def pause_state(self) -> int:
        return int(self.v.pause_state)

    def set_pause_state(self, state: int) -> None:
        self.v.set_pause_state(self._PauseState(state))

    def has_work(self) -> bool:
        return self.v.get_num_unfinished_requests() > 0

    def has_finished(self) -> bool:
        return bool(self.finished_since)

    def take_finished(self) -> tuple:
        finished, self.finished_since = tuple(self.finished_since), []
        return finished

    def counts(self) -> tuple:
        running, waiting = self.v.get_request_counts()
        return waiting, running

    def num_running(self) -> int:
        return len(self.v.running)

    def kv_usage(self) -> float:
        return float(self.v.get_kv_cache_usage())

    # --- requests ------------------------------------------------------------------------------------------

    def add(self, req) -> None:
        """Add a SimReq; raises ValueError if it cannot fit the model length (``MAX_MODEL_LEN`` tokens)."""
        room = MAX_MODEL_LEN - req.prompt_len
        if room < 1:
            raise ValueError(f"request {req.req_id}: prompt of {req.prompt_len} tokens exceeds the vLLM backend's "
                             f"max_model_len {MAX_MODEL_LEN}")
        max_tokens = min(req.max_tokens, room)
        params = self._SamplingParams(max_tokens=max_tokens, ignore_eos=True,
                                      stop_token_ids=[STOP_TOKEN] if req.stop_len <= max_tokens else None)
        seed = zlib.crc32(str(req.prompt_key).encode())
        prompt = [token_id(seed, i, 0) for i in range(req.prompt_len)]
        bs = self.cfg.block_size

        def block_hasher(request, req=req):  # the native model's content keys of the new full blocks
            return [_hash(req.block_key(i, bs)) for i in range(len(request.block_hashes), request.num_tokens // bs)]

        self.requests[req.req_id] = req
        self.v.add_request(self._Request(req.req_id, prompt, params, None, arrival_time=0.0,
                                         block_hasher=block_hasher))

    def _finished(self, req, reason: str) -> None:
        req.status = FINISHED
        req.finish_reason = reason
        self.requests.pop(req.req_id, None)
        self.finished_since.append(req.req_id)

    def _abort(self, req) -> None:
        """Finish a live request from outside vLLM's scheduler: vLLM takes it out of its queues and frees its
        blocks; its in-flight output is stale."""
        req.incarnation += 1
        self.v.finish_requests(req.req_id, self._ABORTED)
        self._finished(req, "abort")

    def abort_requests(self, req_ids) -> list:
        """Finish the live requests among ``req_ids`` with reason "abort", one id at a time (vLLM turns a list
        into a set, whose order would depend on the hash seed)."""
        live = [r for r in (self.requests.get(i) for i in req_ids) if r is not None]
        for req in live:
            self._abort(req)
        return live

    def abort_all(self) -> list:
        """Finish every live request with reason "abort"; return them (in admission order)."""
        reqs = list(self.requests.values())
        for req in reqs:
            self._abort(req)
        return reqs

    def reset_prefix_cache(self, reset_running: bool, reset_connector: bool = False) -> tuple:
        """Return (ok, preempted req_ids); vLLM preempts running requests from the back, dropping their
        in-flight output. No KV connector is configured, so ``reset_connector`` is vLLM's no-op success."""
        preempted = tuple(r.request_id for r in reversed(self.v.running)) if reset_running else ()
        for req_id in preempted:
            self.requests[req_id].incarnation += 1
        ok = self.v.reset_prefix_cache(reset_running_requests=bool(reset_running),
                                       reset_connector=bool(reset_connector))
        return bool(ok), preempted

    def has_kv_tier(self) -> bool:
        """No external KV tier: ``[engine].kv_offload_blocks`` is native-only (scenario.py refuses it here)."""
        return False

    # --- schedule / update ---------------------------------------------------------------------------------

    def schedule(self) -> tuple:
        """Return (planned list, preempted req_ids in preemption order)."""
        before = [r.request_id for r in self.v.running]
        out = self.v.schedule()
        new = {nd.req_id: nd.num_computed_tokens for nd in out.scheduled_new_reqs}
        cached = out.scheduled_cached_reqs
        computed_of = dict(zip(cached.req_ids, cached.num_computed_tokens))
        resumed_ids = cached.resumed_req_ids
        planned = _Batch()
        planned.out = out
        vreqs = self.v.requests
        for req_id, n in out.num_scheduled_tokens.items():
            vreq, req = vreqs[req_id], self.requests[req_id]
            admitted = req_id in new or req_id in resumed_ids
            computed = new[req_id] if req_id in new else computed_of.get(req_id, 0)
            req.placeholders = vreq.num_output_placeholders
            planned.append(new_planned(req=req, num_tokens=n, computed_before=computed, resumed=req_id in resumed_ids,
                                       cached=computed if admitted else 0, incarnation=req.incarnation,
                                       samples=not vreq.is_prefill_chunk, admitted=admitted))
        gone = out.preempted_req_ids or ()
        preempted = tuple(r for r in reversed(before) if r in gone)  # vLLM preempts from the back
        return planned, preempted

    def update(self, planned: list, exec_version: int, stamp_version: int) -> list:
        """Apply one step's output; return OutReq entries (finished and stale ones included)."""
        out = planned.out
        vreqs = self.v.requests
        req_ids, sampled, share = [], [], set()
        for p in planned:
            req_ids.append(p.req.req_id)
            vreq = vreqs.get(p.req.req_id)
            if vreq is not None and vreq.num_stale_output_tokens > 0:
                share.add(p.req.req_id)  # in flight at a preemption: vLLM drains it as stale output
            if not p.samples or vreq is None or vreq.is_finished():
                sampled.append([])
                continue
            pos = vreq.num_output_tokens
            sampled.append([STOP_TOKEN if p.req.stop_len == pos + 1 else token_id(p.req.hash, pos, exec_version)])
        result = self.v.update_from_output(out, self._ModelRunnerOutput(
            req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)}, sampled_token_ids=sampled))
        by_id = {o.request_id: o for eco in result.values() for o in eco.outputs}
        outs = []
        for p in planned:
            req = p.req
            o = by_id.get(req.req_id)
            if o is None:  # prefill chunk, finished while in flight, or a dropped stale frame
                stale = p.incarnation != req.incarnation or req.req_id in share
                outs.append(OutReq(req.req_id, 0, None, True) if stale else OutReq(req.req_id, 0))
                continue
            for _ in o.new_token_ids:
                req.out_tokens.append(token_id(req.hash, len(req.out_tokens), exec_version))
                req.stamp_versions.append(stamp_version)
            reason = str(o.finish_reason) if o.finish_reason is not None else None
            if reason is not None:
                self._finished(req, reason)
            outs.append(OutReq(req.req_id, len(o.new_token_ids), reason, req.req_id in share))
        return outs


__all__ = ["VllmScheduler", "make_scheduler", "vllm_available", "MAX_MODEL_LEN", "STOP_TOKEN"]
