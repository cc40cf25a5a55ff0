"""Perturbations: text form, validation, and that each one changes the simulated trace as it claims."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from tracesim.format import (
    Aborted, CacheReset, OutputDelivered, Paused, RequestAdded, RewardBound, StepExecuted, StepScheduled,
    WeightsUpdated,
)
from tracesim.format.digest import records_digest
from tracesim.sim import perturb as P
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import load_scenario

SCENARIO = load_scenario(REPO / "scenarios" / "default.toml")
SMALL = SCENARIO.replace(workload=dataclasses.replace(SCENARIO.workload, num_prompts=12))


def run(*perturbations, scenario=SMALL, seed=1):
    return simulate(RunInputs(scenario, seed, tuple(perturbations)))


@pytest.fixture(scope="module")
def base():
    return run()


def of(trace, kind, **match):
    return [r for r in trace.records if type(r) is kind and all(getattr(r, k) == v for k, v in match.items())]


# --- text form -------------------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9]{0,3}-s[0-9]", fullmatch=True) | st.text(
    st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=12)
points = st.builds(lambda k, n: f"{k}:{n}", st.sampled_from(["sched", "upd", "pause"]), st.integers(0, 500))
ms = st.integers(-1000, 1000)
perturbations = st.one_of(
    st.builds(P.StepTimeScale, st.integers(0, 999), st.floats(0.01, 100.0).map(lambda f: round(f, 3)),
              st.integers(1, 50)),
    st.builds(P.StepTimeJitter, st.integers(0, 999), st.integers(1, 50), st.integers(0, 99), st.integers(0, 9)),
    st.builds(P.DelayDelivery, st.integers(0, 999), ms, names | st.just("*")),
    st.builds(P.RewardDelay, names, ms),
    st.builds(P.WriteTime, st.integers(1, 9), ms),
    st.builds(P.WriteLate, st.integers(1, 9), ms),
    st.builds(P.WriteEarly, st.integers(1, 9), st.integers(0, 1000)),
    st.builds(P.VersionShift, st.integers(1, 9), ms),
    st.builds(P.Latency, st.integers(0, 10 ** 6), st.integers(0, 10 ** 6)),
    st.builds(P.DeferInput, st.sampled_from(P.INPUT_KINDS), names, st.integers(1, 9)),
    st.builds(P.SwapInputs, st.sampled_from(P.INPUT_KINDS), names),
    st.builds(P.Abort, points, names, st.sampled_from(["request", "group"])),
    st.builds(P.Retry, points, names),
    st.builds(P.ResetCache, points),
    st.builds(P.ExtraUpdate, points),
    st.builds(P.SetConfig, st.just("async_scheduling"), st.booleans()),
    st.builds(P.SetConfig, st.just("num_gpu_blocks"), st.integers(1, 4096)),
    st.builds(P.SetConfig, st.just("pause_mode"), st.sampled_from(["abort", "wait", "keep"])),
)


@given(st.lists(perturbations, max_size=4))
@settings(max_examples=300, deadline=None)
def test_text_form_round_trips(ps):
    for p in ps:
        assert P.parse(str(p)) == p
        assert "\n" not in str(p)
    assert P.parse_list(P.format_list(ps)) == tuple(ps)


@given(perturbations)
@settings(max_examples=200, deadline=None)
def test_simpler_variants_are_new_and_stay_valid(p):
    for s in p.simpler():
        assert s != p and type(s) is type(p)
        s.validate()


@pytest.mark.parametrize("text, field", [
    ("step_time(step=1)", "missing field 'factor'"),
    ("step_time(step=1,factor=0)", "factor"),
    ("abort(at=soon,req=a)", "'at'"),
    ("defer_input(kind=launch,key=a)", "'kind'"),
    ("set(colour=1)", "'key'"),
    ("set(num_gpu_blocks=true)", "num_gpu_blocks"),
    ("nudge(step=1)", "unknown kind 'nudge'"),
    ("delay_delivery(step=1,ms=2,speed=3)", "unknown field 'speed'"),
    ("delay_delivery(step=x,ms=2)", "field 'step': expected int"),
    ("step_time step=1", "expected kind(field=value"),
])
def test_bad_text_is_one_clear_error(text, field):
    with pytest.raises(P.PerturbationError, match=field.replace("(", r"\(")):
        P.parse(text)


# --- each perturbation changes what it claims -----------------------------------------------------------

def test_no_perturbation_and_missing_targets_leave_the_run_byte_identical(base):
    assert records_digest(run().records) == records_digest(base.records)
    no_ops = (P.DelayDelivery(10 ** 6, 50), P.RewardDelay("nobody", 50), P.WriteTime(99, 10),
              P.DeferInput("add", "nobody"), P.Abort("sched:999999", "g0-s0"), P.Retry("sched:3", "nobody"),
              P.StepTimeScale(10 ** 6, 3.0))
    assert records_digest(run(*no_ops).records) == records_digest(base.records)


def test_same_perturbations_give_byte_identical_runs():
    ps = (P.StepTimeJitter(0, 200, 30, 1), P.Abort("sched:40", "g5-s1", "group"), P.DelayDelivery(30, 7))
    assert records_digest(run(*ps).records) == records_digest(run(*ps).records)


def test_step_time_scales_the_forward_passes_of_its_range(base):
    before = {r.step: r.end_ns - r.t_ns for r in of(base, StepExecuted)}
    after = {r.step: r.end_ns - r.t_ns for r in of(run(P.StepTimeScale(10, 3.0, 2)), StepExecuted)}
    assert after[10] == int(before[10] * 3.0) and after[11] == int(before[11] * 3.0)
    assert after[9] == before[9]


def test_step_jitter_moves_each_step_within_its_bound(base):
    before = {r.step: r.end_ns - r.t_ns for r in of(base, StepExecuted)}
    after = {r.step: r.end_ns - r.t_ns for r in of(run(P.StepTimeJitter(5, 10, 20, 3)), StepExecuted)}
    changed = [k for k in range(5, 15) if after[k] != before[k]]
    assert len(changed) >= 8
    assert all(0.79 * before[k] <= after[k] <= 1.21 * before[k] for k in range(5, 15))


def test_delay_delivery_delays_that_steps_frames_and_keeps_each_request_in_order(base):
    step = 20
    req = of(base, StepScheduled, step=step)[0].reqs[0].req_id
    trace = run(P.DelayDelivery(step, 30, req))
    frames = [r for r in of(trace, OutputDelivered, req_id=req)]
    base_frames = [r for r in of(base, OutputDelivered, req_id=req)]
    assert [f.start_idx for f in frames] == sorted(f.start_idx for f in frames)  # in order, none dropped
    delays = [a.t_ns - b.t_ns for a, b in zip(frames, base_frames)]
    assert max(delays) >= 30_000_000


def test_reward_delay_delays_that_reward(base):
    req = of(base, RewardBound)[3].req_id
    t0 = of(base, RewardBound, req_id=req)[0].t_ns
    t1 = of(run(P.RewardDelay(req, 25)), RewardBound, req_id=req)[0].t_ns
    assert t1 - t0 == 25_000_000


def test_weight_update_cycle_perturbations_move_the_write_and_the_label(base):
    w0, p0 = of(base, WeightsUpdated)[0], of(base, Paused, side="client")[0]
    w = of(run(P.WriteTime(1, 15)), WeightsUpdated)[0]
    assert (w.end_ns - w.t_ns) - (w0.end_ns - w0.t_ns) == 15_000_000
    t = run(P.WriteLate(1, 7))
    assert of(t, WeightsUpdated)[0].t_ns - of(t, Paused, side="client")[0].end_ns == 7_000_000
    w = of(run(P.VersionShift(1, 4)), WeightsUpdated)[0]
    assert w.set_ns - w.end_ns == 4_000_000
    w = of(run(P.VersionShift(1, -4)), WeightsUpdated)[0]
    assert w.end_ns - w.set_ns == 4_000_000
    assert p0.end_ns > p0.t_ns  # the base waits for a drain; an early write does not
    t = run(P.WriteEarly(1, 0))
    assert of(t, WeightsUpdated)[0].t_ns == of(t, Paused, side="client")[0].t_ns


def test_latency_adds_transport_time_between_client_and_engine(base):
    def add_gap(trace):
        client = {r.req_id: r.t_ns for r in of(trace, RequestAdded, side="client")}
        return min(r.t_ns - client[r.req_id] for r in of(trace, RequestAdded, side="engine"))
    assert add_gap(run(P.Latency(add_us=3000))) - add_gap(base) == 3_000_000


def _actions_before(trace, kind, **match):
    n = 0
    for r in trace.records:
        if type(r) is StepScheduled:
            n += 1
        elif type(r) is kind and all(getattr(r, k) == v for k, v in match.items()):
            return n
    raise AssertionError("record not found")


def test_defer_input_lands_the_add_after_more_engine_actions(base):
    req = "g9-s1"  # admitted mid-run, with steps going on
    before = _actions_before(base, RequestAdded, req_id=req, side="engine")
    after = _actions_before(run(P.DeferInput("add", req, 3)), RequestAdded, req_id=req, side="engine")
    assert after > before


def test_swap_inputs_takes_the_next_input_first(base):
    order = [r.req_id for r in of(base, RequestAdded, side="engine")]
    i = order.index("g9-s1")
    swapped = [r.req_id for r in of(run(P.SwapInputs("add", "g9-s1")), RequestAdded, side="engine")]
    assert swapped[i] == order[i + 1] and swapped[i + 1] == order[i]


def test_injected_client_actions_happen(base):
    step = 40
    req = of(base, StepScheduled, step=step)[0].reqs[0].req_id
    t = run(P.Abort(f"sched:{step}", req))
    assert of(t, Aborted, side="client")[0].req_ids == (req,)
    assert any(req in r.req_ids for r in of(t, Aborted, side="engine"))
    t = run(P.Abort(f"sched:{step}", req, "group"))
    assert len(of(t, Aborted, side="client")[0].req_ids) > 1
    t = run(P.Retry(f"sched:{step}", req))
    group, idx = req.rsplit("-s", 1)
    assert of(t, RequestAdded, side="client", req_id=f"{group}-s{idx}-r1")
    assert len(of(run(P.ResetCache("sched:30")), CacheReset)) == len(of(base, CacheReset)) + 1
    # an extra update at step 30 comes long before the base's first one (its abort-mode pause then drops groups)
    extra = of(run(P.ExtraUpdate("sched:30")), WeightsUpdated)[0]
    assert extra.t_ns < of(base, WeightsUpdated)[0].t_ns and extra.t_ns > of(base, StepScheduled, step=30)[0].t_ns
    # an abort injected while the engine is paused: its frame comes back in the pause
    assert of(run(P.Abort("pause:1", req)), Aborted, side="client")


def test_config_switches_change_the_engine(base):
    t = run(P.SetConfig("async_scheduling", True))
    assert t.header.engine_config["async_scheduling"] is True
    assert max(r.queue_depth for r in of(t, StepScheduled)) == 2
    assert max(r.queue_depth for r in of(base, StepScheduled)) == 1
    t = run(P.SetConfig("num_gpu_blocks", 40))
    assert any(r.preempted for r in of(t, StepScheduled)) and not any(r.preempted for r in of(base, StepScheduled))
    t = run(P.SetConfig("max_num_seqs", 2))
    assert max(len(r.reqs) for r in of(t, StepScheduled)) <= 2
    t = run(P.SetConfig("enable_prefix_caching", False))
    assert not any(q.cached_tokens for r in of(t, StepScheduled) for q in r.reqs)
    assert run(P.SetConfig("reward_workers", 1)).header.inputs["scenario"]["loop"]["reward_workers"] == 4
    workers = {r.worker for r in of(run(P.SetConfig("reward_workers", 1)), RewardBound)}
    assert workers == {0} and len({r.worker for r in of(base, RewardBound)}) > 1
    t = run(P.SetConfig("pause_mode", "keep"), P.SetConfig("clear_cache", False))
    assert {r.mode for r in of(t, Paused, side="client")} == {"keep"}


def test_header_keeps_the_perturbations_as_text():
    ps = (P.DelayDelivery(3, 5, "g1-s0"), P.SetConfig("async_scheduling", True))
    assert run(*ps).header.inputs["perturbations"] == [str(p) for p in ps]
