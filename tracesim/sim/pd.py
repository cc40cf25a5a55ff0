"""Prefill/decode disaggregation (``[engine] pd_transfer_us`` > 0): the simulated engine is the decode
instance, and each request's prompt KV arrives by transfer from a prefill instance (vLLM's KV connector, as
NixlConnector does it on the consumer side).

* **start**: when the engine takes the add, it allocates blocks for the prompt's full blocks (never the last
  token, as a prefix hit) and the receive begins: the request waits for remote KVs, outside the scheduler
  (``KvTransfer`` "start").
* **completion** (``finished_recving``, ``_update_from_kv_xfer_finished``): ``pd_transfer_us`` later (the
  prefill instance's prefill and the transfer, one constant) the completion reaches the engine core and is
  applied between two actions: the received blocks get their content keys and the request enters the
  scheduler, whose admission finds them as prefix hits and computes only the partial last block
  (``KvTransfer`` "done"). vLLM applies completions in ``update_from_output`` of a step; a core that does not
  step (an abort- or keep-mode pause: vLLM skips ``step()``) applies them after the resume.
* **the window** between start and completion: the loop can abort the request (or pause with mode "abort"),
  reset the prefix cache (refused while transfers hold blocks, with or without ``reset_running``: those
  blocks belong to no running request) or update the weights. An abort finishes the request (its
  ``Aborted`` record and abort output) but the connector's ``delay_free_blocks`` keeps its blocks until the
  completion (``KvTransfer`` "held"), which then frees them.
* **fault** ``fault_pd_free_in_transfer = P`` (vllm-project/vllm#37837, prime-rl#2841 / #2843): with
  probability P per such abort the engine frees the request and its blocks at once; the completion then comes
  for a freed request (vLLM asserts and the decode engine dies; the model goes on, as the later fix that skips
  such a completion does): ``kv_transfer_completes_for_held_request`` names it.

Approximated: one constant transfer time (no prefill-instance queueing, no transfer failures); a prompt whose
blocks do not fit when the transfer starts is received without blocks and recomputed at admission; without
prefix caching the received KV is not found and the prompt is recomputed; the pause does not wait for
transfers in flight.
"""

from __future__ import annotations

from tracesim.format.records import PAUSED_ALL, PAUSED_NEW, Aborted, KvTransfer
from tracesim.sim.engine import Engine, _frame
from tracesim.sim.scheduler import fault_hit


class Transfer:
    """One request's prompt KV on its way: its blocks, their content keys, and whether an abort came."""

    __slots__ = ("req", "blocks", "keys", "held")

    def __init__(self, req, blocks: list, keys: list):
        self.req, self.blocks, self.keys, self.held = req, blocks, keys, False


class PDEngine(Engine):
    """The decode instance's engine core: ``Engine`` with prompt KV received by transfer (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transfer_ns = self.cfg.pd_transfer_us * 1000
        self.p_free = float(self.cfg.fault_pd_free_in_transfer)
        self.transfers: dict = {}  # req_id -> Transfer in flight
        self.freed: set = set()  # req_ids freed while their transfer was in flight (the fault)
        self.deferred: list = []  # completions that came while the core did not step
        self.pause_mode = None  # the mode of the last pause taken

    # --- the add starts the transfer ---------------------------------------------------------------------

    def _on_add(self, req) -> None:
        self._record_add(req)
        pool = self.sched.pool
        keys = req.block_keys(req.num_tokens - 1, self.cfg.block_size)
        blocks = pool.take(len(keys)) if keys and pool.can_take([], len(keys)) else []
        self.transfers[req.req_id] = Transfer(req, blocks, keys)
        self.emit(KvTransfer(t_ns=self.env.now, req_ids=(req.req_id,), phase="start"))
        req_id = req.req_id
        self.env.timeout(self.transfer_ns).callbacks.append(lambda _ev: self.submit("kv_done", req_id))

    # --- the completion ----------------------------------------------------------------------------------

    def _steps_skipped(self) -> bool:
        """Whether the core does not step now (vLLM's abort and keep pauses skip ``step()``)."""
        state = self.sched.pause_state
        return state == PAUSED_ALL or (state == PAUSED_NEW and self.pause_mode == "abort")

    def _on_kv_done(self, req_id: str) -> None:
        if self._steps_skipped():
            self.deferred.append(req_id)
            return
        t = self.transfers.pop(req_id, None)
        if t is None:
            if req_id in self.freed:  # the fault: a completion for a freed request
                self.freed.discard(req_id)
                self.emit(KvTransfer(t_ns=self.env.now, req_ids=(req_id,), phase="done"))
            return
        pool = self.sched.pool
        self.emit(KvTransfer(t_ns=self.env.now, req_ids=(req_id,), phase="done"))
        if t.held:  # delay_free_blocks: the aborted request's blocks go back now
            pool.release(t.blocks)
            return
        for block, key in zip(t.blocks, t.keys):
            pool.commit(block, key, self.weights_version)
        pool.release(t.blocks)  # cached now: the admission below takes them back as prefix hits
        self.sched.add(t.req)

    def _on_resume(self, payload) -> None:
        Engine._on_resume(self, payload)
        deferred, self.deferred = self.deferred, []
        for req_id in deferred:
            self._on_kv_done(req_id)

    # --- aborts during the transfer ----------------------------------------------------------------------

    def _abort_in_transfer(self, req_ids, reason: str) -> None:
        """Finish the requests among ``req_ids`` whose transfer is in flight: aborted, their blocks held until
        the completion (or freed now, with the fault)."""
        live = [self.transfers[r] for r in req_ids if r in self.transfers and not self.transfers[r].held]
        if not live:
            return
        self.emit(Aborted(t_ns=self.env.now, req_ids=tuple(t.req.req_id for t in live), reason=reason,
                          side="engine"))
        held = []
        for t in live:
            t.req.incarnation += 1
            if fault_hit(self.fault_rng, self.p_free):
                del self.transfers[t.req.req_id]
                self.sched.pool.release(t.blocks)
                self.freed.add(t.req.req_id)
            else:
                t.held = True
                held.append(t.req.req_id)
        if held:
            self.emit(KvTransfer(t_ns=self.env.now, req_ids=tuple(held), phase="held"))
        self.on_output(None, [_frame(t.req, 0, "abort") for t in live])

    def _on_abort(self, req_ids) -> None:
        self._abort_in_transfer(req_ids, "client")
        rest = tuple(r for r in req_ids if r not in self.transfers and r not in self.freed)
        if rest:
            Engine._on_abort(self, rest)

    def _on_pause(self, pause) -> None:
        self.pause_mode = pause.mode
        if pause.abort_all:
            self._abort_in_transfer(list(self.transfers), "pause")
        Engine._on_pause(self, pause)

    @property
    def fault_rng(self):
        return self.sched.fault_rng
