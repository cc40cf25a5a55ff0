"""One exploration run: (base, seed, perturbations) -> the invariants it breaks. A pure function of its inputs.

A ``RunSpec`` carries everything a worker needs and nothing heavy: the base is named by a path (a scenario TOML
or a recorded trace), so a task shipped to another process or a Ray worker is a few hundred bytes; each
worker loads a base once and keeps it (``_load``). ``run_one`` simulates or replays, checks the result against
the policy, and returns an ``Outcome``: the distinct failures of the run, each a ``Signature`` (the invariant
and the kinds of records that exposed it, Hypothesis' "same error, same place") with its first violation.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from tracesim.check import Policy, check_trace, load_policy
from tracesim.format.digest import records_digest
from tracesim.gcpause import young_garbage_collected

BASE_KINDS = ("scenario", "trace")


@dataclass(frozen=True)
class Base:
    """What every run of one exploration starts from."""

    kind: str  # "scenario" (simulate a TOML scenario) or "trace" (exact replay of a recording)
    path: str  # the scenario or trace file, as the user named it
    scheduler: str | None = None  # "native" | "vllm": overrides the scenario's / recording's backend
    policy: str | None = None  # TOML policy file the checkers judge against (None: the strict policy)
    loop: str | None = None  # trace: TOML [loop] table overriding the loop policy inferred from the recording

    def describe(self) -> str:
        extra = f", {self.scheduler} scheduler" if self.scheduler else ""
        extra += f", loop {self.loop}" if self.loop else ""
        return f"{self.kind} {self.path}{extra}"


@dataclass(frozen=True)
class RunSpec:
    base: Base
    seed: int
    perturbations: tuple = ()  # tuple[perturb.Perturbation, ...]
    index: int = -1  # position in the exploration's run order (-1: outside a search, e.g. shrinking)


@dataclass(frozen=True)
class Signature:
    """A distinct failure: the invariant, and the kinds of the records its violation points at."""

    invariant: str
    kinds: tuple = ()

    def __str__(self) -> str:
        return f"{self.invariant} [{', '.join(self.kinds)}]" if self.kinds else self.invariant


@dataclass(frozen=True)
class Failure:
    signature: Signature
    violation: object  # the first check.Violation with this signature
    count: int  # violations with this signature in the run


@dataclass(frozen=True)
class Outcome:
    index: int
    failures: tuple = ()  # tuple[Failure, ...] in the checkers' report order
    steps: int = 0
    error: str | None = None  # the run itself failed (e.g. stuck): reported, never a finding

    def signatures(self) -> set:
        return {f.signature for f in self.failures}

    def failure(self, sig: Signature):
        return next((f for f in self.failures if f.signature == sig), None)


def signature_of(violation) -> Signature:
    return Signature(violation.invariant, tuple(sorted({e.kind for e in violation.events})))


# --- loading bases (once per process) -----------------------------------------------------------------------

_CACHE: dict = {}


def _load(base: Base):
    """(scenario or recorded Trace, Policy) for ``base``, cached per process."""
    key = (base.kind, os.path.abspath(base.path), base.scheduler, base.policy)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _CACHE[key] = _load_uncached(base)
    return hit


def _load_uncached(base: Base):
    from tracesim.sim.backends import with_backend

    policy = load_policy(base.policy) if base.policy else Policy()
    if base.kind == "scenario":
        from tracesim.sim.scenario import load_scenario

        scenario = load_scenario(base.path)
        if base.scheduler is not None:
            scenario = with_backend(scenario, base.scheduler, f"{base.path} (--scheduler)")
        return scenario, policy
    if base.kind == "trace":
        from tracesim.format import read_trace

        if base.scheduler == "vllm":
            with_backend(None, "vllm")  # a clear error where vLLM is missing
        return read_trace(base.path), policy
    raise ValueError(f"base kind must be one of {BASE_KINDS}, got {base.kind!r}")


def check_base(base: Base) -> None:
    """Load the base now (raises the usual clear errors for a bad file) so a search fails before it starts."""
    _load(base)
    if base.kind == "trace":
        loop_policy(base)
    elif base.loop:
        from tracesim.sim.scenario import ScenarioError

        raise ScenarioError(f"{base.loop}: a loop file applies to a recorded trace; a scenario has its own [loop]")


_LOOPS: dict = {}


def loop_policy(base: Base) -> tuple:
    """``(LoopPolicy or None, lines)`` a trace base's replay runs with: inferred from the recording, with
    ``base.loop``'s keys in place (``replay_loop.resolve_loop_policy``); cached per process."""
    key = (os.path.abspath(base.path), base.loop and os.path.abspath(base.loop))
    hit = _LOOPS.get(key)
    if hit is None:
        from tracesim.sim.recorded_loop import resolve_loop_policy

        trace, _ = _load(base)
        hit = _LOOPS[key] = resolve_loop_policy(trace, base.loop)
    return hit


def simulate_spec(spec: RunSpec):
    """The simulated trace of one run."""
    loaded, _ = _load(spec.base)
    if spec.base.kind == "scenario":
        from tracesim.sim.run import RunInputs, simulate

        return simulate(RunInputs(loaded, spec.seed, tuple(spec.perturbations)))
    from tracesim.sim.replay import replay

    return replay(loaded, timing="exact", seed=spec.seed, perturbations=tuple(spec.perturbations),
                  scheduler_backend=spec.base.scheduler, loop_policy=loop_policy(spec.base)[0])


def check_spec_trace(spec: RunSpec, trace):
    _, policy = _load(spec.base)
    return check_trace(trace, policy)


def run_one(spec: RunSpec, keep_trace: bool = False):
    """Simulate and check one run; return its ``Outcome`` (and the trace with ``keep_trace``)."""
    if keep_trace:
        return _run_one(spec, True)
    with young_garbage_collected():  # the run's SimPy cycles freed now, not kept until the process ends
        return _run_one(spec, False)


def _run_one(spec: RunSpec, keep_trace: bool):
    from tracesim.format.records import StepScheduled
    from tracesim.sim.run import StuckRunError

    from tracesim.sim.scenario import ScenarioError

    try:
        # A run that hangs (a client waiting for outputs that never come) is judged on what it recorded: the
        # checkers name the samples it never accounted for. Without records it is an error, never a finding.
        trace, stuck = run_trace(spec)
    except ScenarioError as exc:
        # a list whose switches the scenario rejects together (shrinking dropped the data-parallel ranks a DP
        # fault needs, say): a run that cannot be made, never a finding
        out = Outcome(spec.index, (), 0, f"invalid: {exc}")
        return (out, None) if keep_trace else out
    except StuckRunError as exc:
        out = Outcome(spec.index, (), 0, f"stuck: {exc}")
        return (out, None) if keep_trace else out
    report = check_spec_trace(spec, trace)
    failures, seen = [], {}
    for v in report.violations:
        sig = signature_of(v)
        if sig in seen:
            seen[sig][1] += 1
        else:
            seen[sig] = [v, 1]
    failures = tuple(Failure(sig, v, n) for sig, (v, n) in seen.items())
    steps = sum(1 for r in trace.records if type(r) is StepScheduled)
    out = Outcome(spec.index, failures, steps, None if failures else stuck)
    return (out, trace) if keep_trace else out


def run_trace(spec: RunSpec):
    """``(trace, stuck)``: the run's trace, and None; or, for a run that hung with records, the records up to
    the hang and the message (a hang without records raises ``StuckRunError``)."""
    from tracesim.sim.run import StuckRunError

    try:
        return simulate_spec(spec), None
    except StuckRunError as exc:
        if exc.trace is None:
            raise
        return exc.trace, f"stuck: {exc}"


def trace_digest(spec: RunSpec) -> str:
    """sha256 of the run's records (of a hung run: those recorded until it hung): two runs of one spec must
    agree (determinism)."""
    return records_digest(run_trace(spec)[0].records)


def with_perturbations(spec: RunSpec, perturbations) -> RunSpec:
    return dataclasses.replace(spec, perturbations=tuple(perturbations), index=-1)


def base_settings(base: Base):
    """``(settings, is_valid)`` for the configuration switches of ``base``: ``settings`` maps each
    ``perturb.CONFIG_KEYS`` key to the value the base runs with (a key the base cannot state is absent), and
    ``is_valid(key, value, also)`` says whether the base accepts that switch, with the switches ``also`` (a dict)
    beside it (scenario validation: e.g. a reset retry that never succeeds under a keep pause, a data-parallel
    fault without data-parallel ranks), so a search does not spend runs on settings that cannot run."""
    from tracesim.sim.perturb import CONFIG_KEYS
    from tracesim.sim.scenario import Scenario, ScenarioError, _validate

    loaded, _ = _load(base)
    if base.kind == "scenario":
        scenario = loaded
    else:
        policy = loop_policy(base)[0]
        scenario = Scenario() if policy is None else Scenario(loop=policy)
    settings = {}
    for key, (part, _kind) in CONFIG_KEYS.items():
        settings[key] = getattr(getattr(scenario, part), key)
    if base.kind == "trace":  # the recording states its engine; only its loop comes from a Scenario
        ec = loaded.header.engine_config
        settings = {k: v for k, v in settings.items() if CONFIG_KEYS[k][0] == "loop" or getattr(ec, k, None)
                    is not None}
        settings.update({k: getattr(ec, k) for k in settings if CONFIG_KEYS[k][0] == "engine"})

    def is_valid(key: str, value, also: dict | None = None) -> bool:
        changes = {key: value, **(also or {})}
        parts = {}
        for k, v in changes.items():
            parts.setdefault(CONFIG_KEYS[k][0], {})[k] = v
        changed = scenario.replace(**{part: dataclasses.replace(getattr(scenario, part), **values)
                                      for part, values in parts.items()})
        try:
            _validate(changed, "switch")
        except ScenarioError:
            return False
        return True

    return settings, is_valid
