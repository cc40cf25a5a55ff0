"""vLLM's own scheduler as the simulator's backend: it replays the real recordings as the native model does,
agrees with the native model record for record on the bundled scenarios and on KV-pressure variants, and its
output is byte-identical across runs (also under another hash seed)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from conftest import recorded_traces
from tracesim.format import StepScheduled, StepUpdated, read_trace, write_trace
from tracesim.sim.scenario import ScenarioError, load_scenario, scenario_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vllm_ok():
    pytest.importorskip("vllm")
    from tracesim.sim.vllm_scheduler import vllm_available

    if not vllm_available():
        pytest.skip("vllm is installed but tracesim's standalone driver cannot import it")


def _scenario(name: str, **engine):
    s = load_scenario(os.path.join(ROOT, "scenarios", name))
    return s.replace(engine=dataclasses.replace(s.engine, **engine)) if engine else s


@pytest.mark.vllm
@pytest.mark.parametrize("path", recorded_traces())
def test_vllm_backend_replays_bundled_recording_exactly_like_native(vllm_ok, path):
    from tracesim.sim.backends import compare_backends, run_both
    from tracesim.sim.fidelity import compare

    recorded = read_trace(path)
    both = run_both(trace=recorded)
    assert both["vllm"].header.engine_config["scheduler_backend"] == "vllm"
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical, agreement
    f = compare(recorded, both["vllm"])
    assert f.batches_identical == f.steps_recorded == f.steps_simulated and f.finish_order_identical, f


@pytest.mark.vllm
@pytest.mark.parametrize("name", ["default.toml", "keep-bad-bindings.toml"])
@pytest.mark.parametrize("seed", [0, 1])
def test_vllm_backend_simulates_bundled_scenarios_record_for_record_like_native(vllm_ok, name, seed):
    from tracesim.sim.backends import compare_backends, run_both

    both = run_both(scenario=_scenario(name), seed=seed)
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical and agreement.steps_a > 100, agreement


@pytest.mark.vllm
@pytest.mark.parametrize("engine,mode", [
    (dict(async_scheduling=True, num_gpu_blocks=40), "abort"),  # preemption, placeholders, aborted frames
    (dict(async_scheduling=True, num_gpu_blocks=40), "keep"),
    (dict(num_gpu_blocks=80, long_prefill_token_threshold=64, watermark=0.05), "wait"),
])
def test_vllm_backend_agrees_with_native_under_kv_pressure(vllm_ok, engine, mode):
    from tracesim.sim.backends import compare_backends, run_both

    s = _scenario("default.toml", **engine)
    s = s.replace(workload=dataclasses.replace(s.workload, num_prompts=12),
                  loop=dataclasses.replace(s.loop, pause_mode=mode, clear_cache=mode != "keep"))
    both = run_both(scenario=s)
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical, agreement
    steps = both["vllm"].of(StepScheduled)
    assert any(r.preempted for r in steps), "the variant must exercise preemption"
    if engine.get("async_scheduling"):
        assert any(q.placeholders for r in steps for q in r.reqs)
    if mode == "abort":
        assert any(o.stale for r in both["vllm"].of(StepUpdated) for o in r.outs)


@pytest.mark.vllm
def test_vllm_backend_drives_real_vllm_scheduler_class(vllm_ok):
    import simpy
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from tracesim.sim.engine import Engine
    from tracesim.sim.timing import ModelTiming

    for is_async in (False, True):
        s = _scenario("default.toml", scheduler_backend="vllm", async_scheduling=is_async)
        engine = Engine(simpy.Environment(), s.engine, ModelTiming(s.steptime, s.engine), [].append, None)
        assert type(engine.sched.v) is (AsyncScheduler if is_async else Scheduler)


_RUN = r"""
import dataclasses, sys
from tracesim.format import write_trace
from tracesim.sim.run import RunInputs, simulate
from tracesim.sim.scenario import load_scenario
s = load_scenario(sys.argv[1])
s = s.replace(engine=dataclasses.replace(s.engine, scheduler_backend="vllm"))
write_trace(sys.argv[2], simulate(RunInputs(s, 3)))
"""


@pytest.mark.vllm
def test_vllm_backend_output_is_byte_identical_across_runs_and_hash_seeds(vllm_ok, tmp_path):
    from tracesim.sim.run import RunInputs, simulate

    path = os.path.join(ROOT, "scenarios", "keep-bad-bindings.toml")
    s = _scenario("keep-bad-bindings.toml", scheduler_backend="vllm")
    for name in ("a", "b"):
        write_trace(tmp_path / name, simulate(RunInputs(s, 3)))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", _RUN, path, str(tmp_path / "c")], check=True, capture_output=True,
                   timeout=300, env=env)
    a = (tmp_path / "a").read_bytes()
    assert a == (tmp_path / "b").read_bytes() == (tmp_path / "c").read_bytes()


def test_scenario_rejects_unknown_scheduler_backend():
    with pytest.raises(ScenarioError, match=r"x\.toml: \[engine\]\.scheduler_backend: 'sglang' is not one of"):
        scenario_from_dict({"engine": {"scheduler_backend": "sglang"}}, "x.toml")


def test_scenario_with_vllm_backend_fails_clearly_without_vllm(monkeypatch):
    import tracesim.sim.vllm_scheduler as vs

    monkeypatch.setattr(vs, "vllm_available", lambda: False)
    with pytest.raises(ScenarioError, match=r"x\.toml: \[engine\]\.scheduler_backend: 'vllm' needs vLLM"):
        scenario_from_dict({"engine": {"scheduler_backend": "vllm"}}, "x.toml")


def test_scenario_with_vllm_backend_rejects_stale_frame_bug_setting(monkeypatch):
    import tracesim.sim.vllm_scheduler as vs

    monkeypatch.setattr(vs, "vllm_available", lambda: True)
    with pytest.raises(ScenarioError, match=r"\[engine\]\.discard_stale_frames: false has no vLLM counterpart"):
        scenario_from_dict({"engine": {"scheduler_backend": "vllm", "discard_stale_frames": False}}, "x.toml")


def test_simulator_imports_without_loading_vllm():
    code = ("import sys, tracesim.sim, tracesim.sim.engine, tracesim.sim.run, tracesim.sim.replay, "
            "tracesim.sim.backends; assert 'vllm' not in sys.modules, 'vllm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_rejects_unknown_scheduler_choice(tmp_path, capsys):
    from tracesim.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["simulate", os.path.join(ROOT, "scenarios", "default.toml"), "-o", str(tmp_path / "o"),
              "--scheduler", "sglang"])
    assert exc.value.code == 2


@pytest.mark.vllm
def test_simulate_cli_compares_backends(vllm_ok, tmp_path, capsys):
    from tracesim.cli.main import main

    out = tmp_path / "o.msgpack"
    assert main(["simulate", os.path.join(ROOT, "scenarios", "default.toml"), "-o", str(out), "--scheduler",
                 "vllm", "--compare-backends", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "(vllm scheduler)" in text and '"records_identical": true' in text
    assert read_trace(out).header.engine_config["scheduler_backend"] == "vllm"


def _sched_before_upd(trace) -> bool:
    """Whether some step N+1 is scheduled before step N's output is applied (a batch queue deeper than 1)."""
    order = [(r.t_ns, 0 if isinstance(r, StepScheduled) else 1, r.step) for r in trace.records
             if isinstance(r, (StepScheduled, StepUpdated))]
    seen_upd = set()
    for _, kind, step in sorted(order):
        if kind == 0 and step > 0 and step - 1 not in seen_upd:
            return True
        if kind == 1:
            seen_upd.add(step)
    return False


@pytest.mark.vllm
@pytest.mark.parametrize("batches", [1, 2])
@pytest.mark.parametrize("async_scheduling", [True, False])
def test_max_concurrent_batches_sets_the_batch_queue_on_both_backends(vllm_ok, batches, async_scheduling):
    """1: the core's plain step() (schedule, forward, update); 2: step_with_batch_queue, step N+1 scheduled before
    N's output is applied. AsyncScheduler's placeholders come with either (issue 16: a CPU engine forced onto
    AsyncScheduler runs it with 1); the two backends agree record for record."""
    from tracesim.sim.backends import compare_backends, run_both

    s = _scenario("default.toml", async_scheduling=async_scheduling, max_concurrent_batches=batches,
                  num_gpu_blocks=40)
    s = s.replace(workload=dataclasses.replace(s.workload, num_prompts=8))
    both = run_both(scenario=s)
    agreement = compare_backends(both["native"], both["vllm"])
    assert agreement.records_identical, agreement
    trace = both["vllm"]
    steps = trace.of(StepScheduled)
    assert max(r.queue_depth for r in steps) == batches
    assert _sched_before_upd(trace) is (batches == 2)
    assert any(q.placeholders for r in steps for q in r.reqs) is async_scheduling
    assert trace.header.engine_config.max_concurrent_batches == batches


def test_engine_loop_client_makes_no_step_after_the_last_output():
    """An in-process core (LLM without multiprocessing) is stepped only while its client awaits outputs: the busy
    loop's trailing empty schedule() that reports the last finished ids does not happen."""
    from tracesim.sim.run import RunInputs, simulate

    s = _scenario("default.toml")
    s = s.replace(workload=dataclasses.replace(s.workload, num_prompts=4))
    busy = simulate(RunInputs(s.replace(engine=dataclasses.replace(s.engine, engine_loop="busy"))))
    client = simulate(RunInputs(s.replace(engine=dataclasses.replace(s.engine, engine_loop="client"))))
    assert not busy.of(StepScheduled)[-1].reqs and busy.of(StepScheduled)[-1].finished
    assert client.of(StepScheduled)[-1].reqs
    assert all(r.reqs for r in client.of(StepScheduled))


def test_scenario_rejects_unknown_engine_loop_and_negative_batches():
    with pytest.raises(ScenarioError, match=r"x\.toml: \[engine\]\.engine_loop: 'spin' is not one of busy, client"):
        scenario_from_dict({"engine": {"engine_loop": "spin"}}, "x.toml")
    with pytest.raises(ScenarioError, match=r"\[engine\]\.max_concurrent_batches: must be 0"):
        scenario_from_dict({"engine": {"max_concurrent_batches": -1}}, "x.toml")
