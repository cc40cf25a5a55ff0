"""Compare the two scheduling backends (native model, vLLM's own scheduler) on the same inputs.

``compare_backends(a, b)`` takes two simulated traces of the same run made with different backends and says
how far they agree: the step sequence with full batch records (every ``SchedReq`` field: tokens, prefix hits,
placeholders), the update sequence (every ``OutReq``), the finishing order, and whether every record is
equal. ``run_both`` makes the two traces for a replay or a scenario.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from tracesim.format.records import StepScheduled, StepUpdated
from tracesim.sim.fidelity import first_mismatch


@dataclass(frozen=True)
class BackendAgreement:
    steps_a: int
    steps_b: int
    batches_identical: int  # leading steps whose StepScheduled.reqs / preempted are equal
    first_batch_mismatch: int | None
    updates_identical: bool  # every StepUpdated.outs equal, in order
    finish_order_identical: bool
    records_identical: bool  # every record equal (times included)

    @property
    def identical(self) -> bool:
        return self.records_identical

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(trace) -> list:
    return [(r.step, r.reqs, r.preempted) for r in trace.of(StepScheduled)]


def _finishes(trace) -> list:
    return [o.req_id for r in trace.of(StepUpdated) for o in r.outs if o.finish_reason is not None]


def compare_backends(a, b) -> BackendAgreement:
    """Agreement of two simulated traces (``a``: usually native, ``b``: vllm)."""
    ba, bb = _batches(a), _batches(b)
    first = first_mismatch(ba, bb)
    same = first if first is not None else len(ba)
    ua = [r.outs for r in a.of(StepUpdated)]
    ub = [r.outs for r in b.of(StepUpdated)]
    return BackendAgreement(len(ba), len(bb), same, first, ua == ub, _finishes(a) == _finishes(b),
                            a.records == b.records)


def run_both(*, trace=None, scenario=None, seed: int = 0, timing: str = "exact", steptime=None) -> dict:
    """{"native": Trace, "vllm": Trace}: a replay of ``trace`` (with ``scenario``, ``timing``, ``steptime`` as
    ``replay`` takes them) or, without ``trace``, a simulation of ``scenario``. Raises what those raise."""
    out = {}
    for backend in ("native", "vllm"):
        if trace is not None:
            from tracesim.sim.replay import replay

            out[backend] = replay(trace, timing=timing, steptime=steptime, seed=seed, scenario=scenario,
                                  scheduler_backend=backend)
        else:
            from tracesim.sim.run import RunInputs, simulate

            s = scenario.replace(engine=dataclasses.replace(scenario.engine, scheduler_backend=backend))
            out[backend] = simulate(RunInputs(s, seed))
    return out


def with_backend(scenario, backend: str, where: str = "--scheduler"):
    """``scenario`` (a default one when None) with ``[engine].scheduler_backend = backend``, validated as a
    scenario file is; raises ScenarioError (unknown backend, or "vllm" without vLLM installed)."""
    from tracesim.sim.scenario import Scenario, scenario_from_dict

    data = (scenario or Scenario()).to_dict()
    data["engine"] = {**data["engine"], "scheduler_backend": backend}
    return scenario_from_dict(data, where)
