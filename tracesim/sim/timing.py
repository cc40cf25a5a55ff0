"""How long engine actions take in a run: a step-time model (what-if) or a recorded trace (exact replay).

The engine core performs a sequence of actions: ``("sched", k)`` and ``("upd", k)``. Each starts ``gap_ns``
after the previous action ended (or later, when it waits for work or for the forward pass), and lasts
``sched_ns`` / ``upd_ns``. The forward pass of step k takes ``exec_ns`` on the GPU once the GPU is free.
"""

from __future__ import annotations

from array import array


def batch_features(reqs) -> tuple:
    """(prefill tokens, decode tokens, context tokens) of a step's SchedReq entries."""
    prefill = decode = context = 0
    for r in reqs:
        prefill += r.prefill_tokens
        decode += r.decode_tokens
        context += r.computed_tokens + r.prefill_tokens + r.decode_tokens
    return prefill, decode, context


MISSING = -(1 << 63)  # int64's least value: a StepTable cell of an action the recording does not have
_MISSING = MISSING  # the same as a C constant where compiled (timing.pxd), compared in every look-up


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
    """Durations and gaps measured on a recorded trace (a ``steptime.StepTable``), looked up by step;
    ``fallback`` for a step or an action the recording does not have (past its end)."""

    def __init__(self, table, fallback):
        self.first_step, self.rows, self.num_rows = table.first_step, table.rows, len(table.sched_ns)
        # int64 arrays (C arrays where compiled, timing.pxd), each read as a Python int
        self.sched, self.upd, self.exec_, self.sched_gap, self.upd_gap = (
            _int64s(c) for c in (table.sched_ns, table.upd_ns, table.exec_ns, table.sched_gap_ns, table.upd_gap_ns))
        self.fallback = fallback

    def _row(self, step: int) -> int:
        """The table's row of ``step``, or -1 if it has none."""
        if self.rows is not None:
            return self.rows.get(step, -1)
        row = step - self.first_step
        return row if 0 <= row < self.num_rows else -1

    def exec_ns(self, step: int, reqs) -> int:
        row = self._row(step)
        if row >= 0 and self.exec_[row] != _MISSING:
            return self.exec_[row]
        return self.fallback.exec_ns(step, reqs)

    def sched_ns(self, step: int) -> int:
        row = self._row(step)
        if row >= 0 and self.sched[row] != _MISSING:
            return self.sched[row]
        return self.fallback.sched_ns(step)

    def upd_ns(self, step: int) -> int:
        row = self._row(step)
        if row >= 0 and self.upd[row] != _MISSING:
            return self.upd[row]
        return self.fallback.upd_ns(step)

    def gap_ns(self, kind: str, step: int) -> int:
        row = self._row(step)
        if row >= 0:
            v = self.sched_gap[row] if kind == "sched" else self.upd_gap[row]
            if v != _MISSING:
                return v
        return self.fallback.gap_ns(kind, step)


def _int64s(column):
    """A numpy int64 column (native byte order, as ``steptime.step_table`` makes them) as an ``array("q")``:
    indexed it gives a Python int (a numpy scalar would leak into the records); the compiled build reads it
    as a C array."""
    out = array("q")
    out.frombytes(column.tobytes())
    return out
