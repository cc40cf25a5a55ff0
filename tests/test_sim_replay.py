"""Replay of recorded traces: exact replay reproduces steps, batches and finishing order; fit and CLI."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from conftest import recorded_traces
from tracesim.format import StepScheduled, StepUpdated, read_trace, write_trace
from tracesim.sim.fidelity import compare
from tracesim.sim.replay import replay
from tracesim.sim.steptime import fit


def _assert_exact(recorded, simulated):
    f = compare(recorded, simulated)
    # The async batch queue's trailing empty schedule() calls (reporting finished ids) are the one known
    # difference; every step that schedules tokens matches.
    assert f.batches_identical >= f.steps_recorded - 1, f
    assert all(not r.reqs for r in recorded.of(StepScheduled)[f.batches_identical:]), f
    assert f.finish_order_identical, f
    assert f.step_err_median <= 0.01, f
    return f


@pytest.mark.parametrize("path", recorded_traces() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no recorded (source=vllm) trace bundled in traces/ yet"))])
def test_exact_replay_of_bundled_recording_reproduces_it(path):
    recorded = read_trace(path)
    _assert_exact(recorded, replay(recorded))


_RECORD = r"""
import os, random, sys
os.environ["TRACESIM_RECORD_DIR"] = sys.argv[1]
os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
from tracesim.record.standalone import StandaloneDriver
from tracesim.record.scheduler import RecordingAsyncScheduler, RecordingSyncScheduler
is_async = sys.argv[2] == "async"
d = StandaloneDriver(RecordingAsyncScheduler if is_async else RecordingSyncScheduler, async_scheduling=is_async,
                     num_blocks=64, max_num_seqs=8, max_num_batched_tokens=128)
rng = random.Random(0)
for g in range(6):
    prompt = [rng.randrange(1000) for _ in range(rng.randint(20, 90))]
    for j in range(3):
        d.add(f"{j}_g{g}", prompt, rng.randint(5, 40))
d.run()
"""


@pytest.fixture(scope="module")
def standalone_recordings(tmp_path_factory):
    pytest.importorskip("vllm")
    out = {}
    for mode in ("sync", "async"):
        d = tmp_path_factory.mktemp(mode)
        subprocess.run([sys.executable, "-c", _RECORD, str(d), mode], check=True, capture_output=True, timeout=300)
        out[mode] = read_trace(glob.glob(str(d / "*.msgpack"))[0])
    return out


@pytest.mark.vllm
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_exact_replay_of_real_vllm_scheduler_recording_matches_batches(standalone_recordings, mode):
    """A recording of vLLM's own (Async)Scheduler under KV pressure, prefix hits and chunked prefill."""
    recorded = standalone_recordings[mode]
    f = _assert_exact(recorded, replay(recorded))
    if mode == "sync":
        assert f.exact


@pytest.mark.vllm
def test_fit_reports_held_out_error_and_fitted_replay_runs(standalone_recordings, tmp_path):
    recorded = standalone_recordings["sync"]
    result = fit(recorded)
    assert result.test_steps > 0 and result.median_rel_err >= 0
    out = replay(recorded, timing="fitted", steptime=result)
    assert out.header.source == "sim" and out.header.inputs["timing"] == "fitted"
    assert compare(recorded, out).steps_simulated > 0


@pytest.mark.vllm
def test_replay_is_byte_identical_for_same_seed(standalone_recordings, tmp_path):
    recorded = standalone_recordings["async"]
    for name in ("a", "b"):
        write_trace(tmp_path / name, replay(recorded, seed=5))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_replay_cli_rejects_unreadable_trace(tmp_path, capsys):
    from tracesim.cli.main import main
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x00\x01not a trace")
    assert main(["replay", str(bad), "-o", str(tmp_path / "o.msgpack")]) == 2
    assert str(bad) in capsys.readouterr().err


def test_fidelity_finds_the_first_step_whose_composition_differs_and_only_that():
    from tracesim.format.trace import Trace
    from tracesim.sim.fidelity import _batches, first_mismatch

    recorded = read_trace(recorded_traces()[0])
    simulated = replay(recorded)
    assert compare(recorded, simulated).first_mismatch is None
    recs = list(simulated.records)
    scheds = [i for i, r in enumerate(recs) if type(r) is StepScheduled and r.reqs]
    k = scheds[len(scheds) // 2]
    # Another field of the entries (computed tokens) is not the composition: still identical.
    recs[k] = recs[k]._replace(reqs=tuple(q._replace(computed_tokens=q.computed_tokens + 1) for q in recs[k].reqs))
    other = Trace(simulated.header, list(recs), [], None)
    assert compare(recorded, other).first_mismatch is None
    # One request fewer in that step's batch: the first mismatch is that step, as the full projection says.
    recs[k] = recs[k]._replace(reqs=recs[k].reqs[1:])
    fewer = Trace(simulated.header, list(recs), [], None)
    got = compare(recorded, fewer)
    position = [i for i, r in enumerate(recs) if type(r) is StepScheduled].index(k)  # among all schedules
    assert got.first_mismatch == first_mismatch(_batches(recorded), _batches(fewer)) == position
    assert got.batches_identical == position


def test_fidelity_reports_what_a_what_if_user_reads():
    """Throughput, time to drain and the latency distribution, recorded vs simulated: near zero error in exact
    replay, and they move when the step-time model is made twice as slow."""
    import dataclasses

    from tracesim.format import RequestAdded
    from tracesim.sim.steptime import fit

    recorded = read_trace(os.path.join(os.path.dirname(__file__), "..", "traces", "vllm-async-engine.msgpack"))
    exact = compare(recorded, replay(recorded))
    for name in ("throughput_tok_s", "drain_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms"):
        rec, sim, err = getattr(exact, name)
        assert rec > 0 and sim > 0 and err <= 0.01, (name, rec, sim, err)
    # the recorded figures, from the records themselves
    adds = [r.t_ns for r in recorded.of(RequestAdded) if r.side == "engine"]
    ends = [u.end_ns for u in recorded.of(StepUpdated) if any(o.finish_reason for o in u.outs)]
    tokens = sum(o.sampled for u in recorded.of(StepUpdated) for o in u.outs)
    assert exact.drain_ms[0] == pytest.approx((max(ends) - min(adds)) / 1e6)
    assert exact.throughput_tok_s[0] == pytest.approx(tokens / ((max(ends) - min(adds)) / 1e9))

    model = fit(recorded)
    slow = dataclasses.replace(model.steptime, **{k: 2 * getattr(model.steptime, k) for k in
                                                  ("base_us", "prefill_us", "decode_us", "context_us_per_1k")})
    fitted = compare(recorded, replay(recorded, timing="fitted", steptime=model))
    slowed = compare(recorded, replay(recorded, timing="fitted", steptime=slow))
    assert fitted.drain_ms[2] < 0.25 and fitted.throughput_tok_s[2] < 0.25
    assert slowed.drain_ms[1] > 1.5 * fitted.drain_ms[1] and slowed.drain_ms[2] > 0.4
    assert slowed.throughput_tok_s[1] < 0.7 * fitted.throughput_tok_s[1]
