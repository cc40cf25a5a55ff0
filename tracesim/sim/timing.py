"""How long engine actions take in a run: a step-time model (what-if) or a recorded trace (exact replay).

The engine core performs a sequence of actions: ``("sched", k)`` and ``("upd", k)``. Each starts ``gap_ns``
after the previous action ended (or later, when it waits for work or for the forward pass), and lasts
``sched_ns`` / ``upd_ns``. The forward pass of step k takes ``exec_ns`` on the GPU once the GPU is free.
"""

from __future__ import annotations


def batch_features(reqs) -> tuple:
    """(prefill tokens, decode tokens, context tokens) of a step's SchedReq entries."""
    prefill = decode = context = 0
    for r in reqs:
        prefill += r.prefill_tokens
        decode += r.decode_tokens
        context += r.computed_tokens + r.prefill_tokens + r.decode_tokens
    return prefill, decode, context


class ModelTiming:
    """Costs from a linear step-time model and constant engine overheads (``EngineConfig``)."""

    def __init__(self, steptime, engine_cfg):
        self.base_ns = steptime.base_us * 1e3
        self.prefill_ns = steptime.prefill_us * 1e3
        self.decode_ns = steptime.decode_us * 1e3
        self.context_ns = steptime.context_us_per_1k  # per token: (us per 1k tokens) * 1e3 ns / 1e3 tokens
        self._sched_ns = engine_cfg.sched_us * 1000
        self._upd_ns = engine_cfg.update_us * 1000
        self._gap_ns = engine_cfg.step_gap_us * 1000

    def exec_ns(self, step: int, reqs) -> int:
        if not reqs:
            return 0  # an empty schedule runs no forward pass
        prefill, decode, context = batch_features(reqs)
        return int(self.base_ns + self.prefill_ns * prefill + self.decode_ns * decode + self.context_ns * context)

    def sched_ns(self, step: int) -> int:
        return self._sched_ns

    def upd_ns(self, step: int) -> int:
        return self._upd_ns

    def gap_ns(self, kind: str, step: int) -> int:
        return self._gap_ns


class RecordedTiming:
    """Durations and gaps measured on a recorded trace, indexed by step; ``fallback`` past its end."""

    def __init__(self, sched_ns: dict, upd_ns: dict, exec_ns: dict, gaps: dict, fallback):
        self._sched, self._upd, self._exec, self._gaps = sched_ns, upd_ns, exec_ns, gaps
        self.fallback = fallback

    def exec_ns(self, step: int, reqs) -> int:
        v = self._exec.get(step)
        return self.fallback.exec_ns(step, reqs) if v is None else v

    def sched_ns(self, step: int) -> int:
        v = self._sched.get(step)
        return self.fallback.sched_ns(step) if v is None else v

    def upd_ns(self, step: int) -> int:
        v = self._upd.get(step)
        return self.fallback.upd_ns(step) if v is None else v

    def gap_ns(self, kind: str, step: int) -> int:
        v = self._gaps[kind].get(step)
        return self.fallback.gap_ns(kind, step) if v is None else v
