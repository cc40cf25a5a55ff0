"""Engine output-accounting fault modes (docs/simulator.md "Engine fault modes"): each `[engine] fault_*` setting
changes the simulated trace, its trace fires the invariant named for it, and the correct twin (the same run with
the fault off) is clean of those invariants over many seeds. Also the faithful details found on the way: a
KV-pressure preemption's in-flight frame is delivered marked `stale` (as vLLM marks it, on both backends), and
the client's `Paused` record sits at its call's place in the stream."""

from __future__ import annotations

import dataclasses

import pytest

from tracesim.check import check_trace
from tracesim.format import OutputDelivered, Paused, StepScheduled, StepUpdated
from tracesim.format.digest import records_digest
from tracesim.sim.perturb import PerturbationError, parse
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import EngineConfig, Scenario, ScenarioError, Workload, scenario_from_dict

ONCE = "tokens_delivered_exactly_once"
FRAMES = "output_applies_to_scheduling_incarnation"
RESUMED = "resumed_context_complete"
FAULT_INVARIANTS = {ONCE, FRAMES, RESUMED}

# Async scheduling under KV pressure: requests are preempted with a step in flight (the stale-share window).
PRESSURE = Scenario(workload=Workload(num_prompts=12, group_size=4, concurrency=8, prompt_len=(100, 200)),
                    engine=EngineConfig(num_gpu_blocks=40, async_scheduling=True))
# Async scheduling without KV pressure; resets of running requests with steps in flight come from perturbations.
ASYNC = Scenario(workload=Workload(num_prompts=16, group_size=4, concurrency=5),
                 engine=EngineConfig(async_scheduling=True))
RESETS = tuple(parse(f"reset_cache(at=sched:{k},running=true)") for k in (30, 90, 150))
SEEDS = range(6)


def _with(scenario: Scenario, **engine) -> Scenario:
    return scenario.replace(engine=dataclasses.replace(scenario.engine, **engine))


def _run(scenario: Scenario, seed: int = 0, perturbations=()):
    return simulate(RunInputs(scenario, seed=seed, perturbations=tuple(perturbations)))


def _fault_violations(trace) -> set:
    return set(check_trace(trace).violated()) & FAULT_INVARIANTS


# --- each fault: its invariant fires, the twin is clean, the setting changes the trace --------------------


@pytest.mark.parametrize("fault, invariant", [
    ("fault_drop_inflight_frame", ONCE),
    ("fault_duplicate_frame", ONCE),
    ("fault_resume_context_missing_tokens", RESUMED),
])
def test_preemption_fault_fires_its_invariant_and_its_twin_is_clean(fault, invariant):
    for seed in SEEDS:
        twin = _run(PRESSURE, seed)
        assert _fault_violations(twin) == set(), seed
        bug = _run(_with(PRESSURE, **{fault: 1.0}), seed)
        assert records_digest(bug.records) != records_digest(twin.records), seed
        assert invariant in check_trace(bug).violated(), seed


def test_frame_to_new_incarnation_fires_and_its_twin_is_clean():
    for seed in SEEDS:
        twin = _run(ASYNC, seed, RESETS)
        assert _fault_violations(twin) == set(), seed
        bug = _run(_with(ASYNC, fault_frame_to_new_incarnation=1.0), seed, RESETS)
        assert FRAMES in check_trace(bug).violated(), seed


def test_discard_stale_frames_false_is_frame_to_new_incarnation_and_now_takes_effect():
    old = _run(_with(ASYNC, discard_stale_frames=False), 0, RESETS)
    new = _run(_with(ASYNC, fault_frame_to_new_incarnation=1.0), 0, RESETS)
    correct = _run(ASYNC, 0, RESETS)
    assert records_digest(old.records) == records_digest(new.records)
    assert records_digest(old.records) != records_digest(correct.records)


def test_drop_and_duplicate_change_what_the_client_receives_by_the_stale_frames():
    twin = _run(PRESSURE, 1)
    stale = sum(1 for u in twin.of(StepUpdated) for o in u.outs if o.stale and o.sampled and not o.finish_reason)
    delivered = sum(d.num_tokens for d in twin.of(OutputDelivered))
    dropped = sum(d.num_tokens for d in _run(_with(PRESSURE, fault_drop_inflight_frame=1.0), 1).of(OutputDelivered))
    doubled = sum(d.num_tokens for d in _run(_with(PRESSURE, fault_duplicate_frame=1.0), 1).of(OutputDelivered))
    assert stale > 0
    assert dropped < delivered < doubled


def test_a_fault_probability_strikes_some_occurrences_deterministically():
    half = _with(PRESSURE, fault_duplicate_frame=0.5)
    digests = {p: records_digest(_run(_with(PRESSURE, fault_duplicate_frame=p), 2).records) for p in (0.0, 0.5, 1.0)}
    assert len(set(digests.values())) == 3
    assert records_digest(_run(half, 2).records) == digests[0.5]  # the same seed, the same draws


def test_resume_fault_message_names_the_missing_tokens():
    bug = _run(_with(PRESSURE, fault_resume_context_missing_tokens=1.0), 0)
    v = next(v for v in check_trace(bug).violations if v.invariant == RESUMED)
    assert "lacks" in v.message and v.req_id in v.message
    assert [e.kind for e in v.events][:2] == ["add", "sched"]


# --- settings: exploration switches, validation, the vLLM backend --------------------------------------------


def test_fault_settings_are_exploration_switches():
    p = parse("set(fault_drop_inflight_frame=1)")
    assert str(p) == "set(fault_drop_inflight_frame=1.0)"
    bug = _run(PRESSURE, 0, [p])
    assert ONCE in check_trace(bug).violated()
    with pytest.raises(PerturbationError, match="fault_duplicate_frame"):
        parse("set(fault_duplicate_frame=1.5)")


def test_reset_cache_running_text_form():
    assert str(parse("reset_cache(at=sched:3)")) == "reset_cache(at=sched:3)"
    p = parse("reset_cache(at=sched:3,running=true)")
    assert parse(str(p)) == p and p.simpler() == [parse("reset_cache(at=sched:3)")]
    with pytest.raises(PerturbationError, match="running"):
        parse("reset_cache(at=sched:3,running=1)")


def test_a_fault_probability_above_one_is_refused_naming_the_field():
    with pytest.raises(ScenarioError, match=r"s\.toml: \[engine\]\.fault_duplicate_frame: .*\[0, 1\]"):
        scenario_from_dict({"engine": {"fault_duplicate_frame": 2}}, "s.toml")
    with pytest.raises(ScenarioError, match="fault_drop_inflight_frame: expected a non-negative number"):
        scenario_from_dict({"engine": {"fault_drop_inflight_frame": -0.5}}, "s.toml")


@pytest.mark.vllm
@pytest.mark.parametrize("fault", ["fault_frame_to_new_incarnation", "fault_resume_context_missing_tokens"])
def test_scheduler_faults_are_refused_for_the_vllm_backend(fault):
    pytest.importorskip("vllm")
    with pytest.raises(ScenarioError, match=f"fault.*{fault}.*native|{fault}: a fault inside the native scheduler"):
        scenario_from_dict({"engine": {"scheduler_backend": "vllm", fault: 0.5}}, "s.toml")


@pytest.mark.vllm
@pytest.mark.parametrize("fault", [{}, {"fault_drop_inflight_frame": 1.0}, {"fault_duplicate_frame": 0.5}])
def test_backends_agree_on_stale_frames_and_output_path_faults(fault):
    pytest.importorskip("vllm")
    native = _run(_with(PRESSURE, **fault), 3)
    vllm = _run(_with(PRESSURE, scheduler_backend="vllm", **fault), 3)
    assert records_digest(native.records) == records_digest(vllm.records)


# --- faithful details ------------------------------------------------------------------------------------


def test_kv_pressure_preemption_delivers_its_in_flight_token_marked_stale():
    t = _run(PRESSURE, 0)
    preempted = {r for s in t.of(StepScheduled) for r in s.preempted}
    # a stale frame with tokens: in flight at a preemption, delivered (an abort's stale frame has none)
    stale = [o for u in t.of(StepUpdated) for o in u.outs if o.stale and o.sampled]
    assert stale and {o.req_id for o in stale} <= preempted
    assert _fault_violations(t) == set()


def test_client_paused_record_sits_at_its_call_in_the_stream():
    t = _run(ASYNC, 0)
    recs = t.records
    client = [i for i, r in enumerate(recs) if isinstance(r, Paused) and r.side == "client"]
    engine = [i for i, r in enumerate(recs) if isinstance(r, Paused) and r.side == "engine"]
    assert client and len(client) == len(engine)
    for ci, ei in zip(client, engine):
        assert ci < ei  # the call precedes the engine entering the pause, as in a recording
        t_ns = recs[ci].t_ns
        assert all(getattr(r, "t_ns", t_ns) <= t_ns for r in recs[:ci])
        assert recs[ci].end_ns >= t_ns


def test_vllm_backend_refuses_native_only_faults_however_they_are_set():
    """A set(KEY=VALUE) switch bypasses scenario validation: the backend itself refuses what it cannot do."""
    import dataclasses

    pytest.importorskip("vllm")
    from tracesim.sim.scenario import EngineConfig
    from tracesim.sim.vllm_scheduler import make_scheduler

    for key in ("fault_frame_to_new_incarnation", "fault_resume_context_missing_tokens"):
        cfg = dataclasses.replace(EngineConfig(scheduler_backend="vllm"), **{key: 1.0})
        with pytest.raises(ValueError, match=key):
            make_scheduler(cfg)
