"""Search: try many runs of one base, keep the distinct failures, shrink each to a minimal counterexample.

Run order (a pure function of ``seed``): runs come in rounds of ``ROUND`` runs. Round r starts from the base
run with workload seed ``seed + r`` and no perturbation; its other runs perturb that base, most of them aimed
at its meeting points (``targets.targeted``), the rest drawn at random (``targets.random_list``), each from a
``random.Random`` seeded by the run's index. Recordings replay exactly whatever the seed, so every round of a
trace base perturbs the same run.

Runs execute in parallel (``pool.py``) but are taken in run order, so a budget of N runs gives the same runs
and the same findings for any number of workers; a time budget stops after the last run that finished in
time, in run order. The first run that shows a new ``Signature`` is a finding; each finding is shrunk
(``shrink.py``), its minimal list run twice more to confirm that it fails deterministically (same records,
byte for byte), and reported (``report.py``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from tracesim.explore import targets as T
from tracesim.explore.pool import make_executor, map_ordered
from tracesim.explore.runner import (
    Base, Outcome, RunSpec, base_settings, run_one, simulate_spec, trace_digest, with_perturbations,
)
from tracesim.explore.shrink import shrink

ROUND = 32  # runs per base seed (the first one unperturbed)
TARGETED_SHARE = 0.75  # of the perturbed runs of a round


@dataclass
class Finding:
    """A distinct failure, from its first run to its minimal counterexample."""

    signature: object  # runner.Signature
    found_at: int  # index of the first run that showed it
    first: RunSpec  # that run
    minimal: RunSpec | None = None  # after shrinking
    violation: object = None  # the first violation of the minimal run
    count: int = 0  # violations with this signature in the minimal run
    shrink_runs: int = 0
    shrink_steps: list = field(default_factory=list)
    deterministic: bool | None = None  # the minimal run gave identical records twice
    files: dict = field(default_factory=dict)  # what report.save wrote: {"repro": ..., "trace": ..., "plot": ...}


@dataclass
class ExploreResult:
    base: Base
    seed: int
    runs: int = 0  # search runs made (shrinking not included)
    errors: list = field(default_factory=list)  # (run index, message): runs that could not complete
    findings: list = field(default_factory=list)  # list[Finding], in the order they were first found
    elapsed_s: float = 0.0
    stopped: str = "budget"  # "budget" | "time" | "exhausted"

    @property
    def ok(self) -> bool:
        return not self.findings


class RunPlan:
    """The run order of one exploration (see module doc); base traces of each round are computed here."""

    def __init__(self, base: Base, seed: int, spaces=("env",)):
        self.base, self.seed, self.spaces = base, seed, tuple(spaces)
        self._points: dict = {}

    def spec(self, index: int) -> RunSpec:
        rnd, k = divmod(index, ROUND)
        run_seed = self.seed + rnd if self.base.kind == "scenario" else self.seed
        if k == 0 and (rnd == 0 or self.base.kind == "scenario"):  # a recording's base run is the same each round
            return RunSpec(self.base, run_seed, (), index)
        m = self.points(run_seed)
        rng = random.Random(f"{self.seed}:{index}")
        gen = T.targeted if rng.random() < TARGETED_SHARE else T.random_list
        perts = gen(m, rng, self.spaces) or T.random_list(m, rng, self.spaces)
        return RunSpec(self.base, run_seed, perts, index)

    def points(self, run_seed: int) -> T.MeetingPoints:
        m = self._points.get(run_seed)
        if m is None:
            m = self._points[run_seed] = T.meeting_points(simulate_spec(RunSpec(self.base, run_seed)))
            m.client_actions = m.engine_flips = self.base.kind == "scenario" or not m.has_client
            if len(self.spaces) > 1:  # only the loop and faults spaces draw switches from the base's settings
                m.settings, m.switch_ok = base_settings(self.base)
        return m


def explore(base: Base, *, budget: int | None = 200, time_s: float | None = None, seed: int = 0, workers=None,
            ray: str | None = None, spaces=("env",), shrink_failures: bool = True, progress=None,
            max_shrink_runs: int = 400) -> ExploreResult:
    """Search ``base`` for runs that break an invariant; return the findings, shrunk and confirmed.

    ``budget``: search runs at most (None: no limit, then ``time_s`` must be set); ``time_s``: stop starting new
    runs after this many seconds. ``progress``: a tqdm-like object (``update(n)``, ``set_postfix_str``)."""
    if budget is None and time_s is None:
        raise ValueError("give a run budget or a time limit")
    plan = RunPlan(base, seed, spaces)
    result = ExploreResult(base, seed)
    t_start = time.monotonic()
    executor = make_executor(workers, ray)
    width = 2 * max(1, _width(executor))
    seen: dict = {}
    try:
        index = 0
        pending: dict = {}
        done: dict = {}
        next_take = 0
        stop_submitting = False
        while True:
            while (not stop_submitting and executor.pending() < width
                   and (budget is None or index < budget)):
                if time_s is not None and time.monotonic() - t_start >= time_s:
                    stop_submitting, result.stopped = True, "time"
                    break
                spec = plan.spec(index)
                pending[index] = spec
                executor.submit(index, spec)
                index += 1
            if executor.pending() == 0:
                break
            for n, out in executor.next_done():
                done[n] = out
            while next_take in done:  # take results in run order
                out = done.pop(next_take)
                spec = pending.pop(next_take)
                _take(result, seen, spec, out)
                next_take += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix_str(f"{len(result.findings)} found")
        result.runs = next_take
        if shrink_failures:
            for f in result.findings:
                _shrink_finding(f, executor, width, max_shrink_runs, progress)
    finally:
        executor.close()
    result.elapsed_s = time.monotonic() - t_start
    return result


def _width(executor) -> int:
    pool = getattr(executor, "pool", None)
    if pool is not None:
        return pool._max_workers
    ray = getattr(executor, "ray", None)
    if ray is not None:
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return 1


def _take(result: ExploreResult, seen: dict, spec: RunSpec, out: Outcome) -> None:
    if out.error:
        result.errors.append((spec.index, out.error))
        return
    for f in out.failures:
        if f.signature not in seen:
            seen[f.signature] = Finding(f.signature, spec.index, spec, violation=f.violation, count=f.count)
            result.findings.append(seen[f.signature])


def _shrink_finding(f: Finding, executor, width: int, max_runs: int, progress) -> None:
    sig, first = f.signature, f.first

    def still_fails(cands):
        specs = [with_perturbations(first, c) for c in cands]
        return [sig in out.signatures() for out in map_ordered(executor, specs, width)]

    made = [0]

    def on_run(n: int) -> None:  # the bar counts search runs; shrinking shows its own count beside it
        made[0] += n
        progress.set_postfix_str(f"shrinking {sig.invariant}: {made[0]} runs")

    res = shrink(first.perturbations, still_fails, chunk=max(1, width // 2), max_runs=max_runs,
                 on_run=on_run if progress is not None else None)
    f.minimal = with_perturbations(first, res.perturbations)
    f.shrink_runs, f.shrink_steps = res.runs, res.steps
    out = run_one(f.minimal)
    failure = out.failure(sig)
    if failure is not None:
        f.violation, f.count = failure.violation, failure.count
    # Replayed twice before it is reported (STYLE: Hypothesis): same records, byte for byte, and still failing.
    f.deterministic = failure is not None and trace_digest(f.minimal) == trace_digest(f.minimal)
