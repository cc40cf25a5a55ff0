"""A real CPU engine (``LLM``) recorded with the synchronous ``Scheduler`` and with ``AsyncScheduler``.

The CPU platform turns async scheduling off in the config, so an engine forced onto ``AsyncScheduler`` runs it
through the core's plain ``step()`` with one batch in flight (issue 16): placeholders without the batch queue.
Workload (``tracesim.record.batch``): 48 requests on 4 shared 32-token prefixes, a 96-token budget (prefills
chunk), a 12-block KV pool (requests are preempted and recomputed), 4-80 output tokens.

Each recording is checked against an independent observer of the same run (vLLM's own SchedulerOutput and
ModelRunnerOutput, seen from outside the recorder) and against what ``LLM.generate`` returned, then replayed
exactly on both scheduler backends.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections import defaultdict

import pytest

from tracesim.format import StepScheduled, StepUpdated, read_trace
from tracesim.sim.fidelity import compare
from tracesim.sim.replay import replay

pytestmark = pytest.mark.vllm

_RUN = r"""
import pickle, sys
from tracesim.record.batch import BatchConfig, run_batch
if __name__ == "__main__":
    r = run_batch(BatchConfig(scheduler=sys.argv[2], seed=int(sys.argv[3])), sys.argv[1], observe=True)
    with open(sys.argv[1] + ".observed", "wb") as f:
        pickle.dump((r.outputs, r.observed.schedules, r.observed.updates), f)
"""

SEED = 5  # a seed none of the model's code was tuned on


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("vllm")
    out = {}
    for mode in ("sync", "async"):
        path = str(tmp_path_factory.mktemp(mode) / "engine.msgpack")
        proc = subprocess.run([sys.executable, "-c", _RUN, path, mode, str(SEED)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(path + ".observed", "rb") as f:
            outputs, schedules, updates = pickle.load(f)
        out[mode] = (read_trace(path), outputs, schedules, updates)
    return out


def _client_id(internal: str) -> str:
    """vLLM's internal request id is the caller's id plus "-" and 8 random characters."""
    return internal.rsplit("-", 1)[0]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_header_names_the_scheduler_and_one_batch_in_flight(runs, mode):
    trace = runs[mode][0]
    settings = trace.header.engine_config
    assert settings.scheduler == ("AsyncScheduler" if mode == "async" else "Scheduler")
    assert settings.async_scheduling is (mode == "async")
    assert settings.max_concurrent_batches == 1
    assert settings.engine_loop == "client"  # observe=True keeps the core in process: LLMEngine steps it
    steps = trace.of(StepScheduled)
    assert steps and all(s.queue_depth == 1 for s in steps)
    placeholders = max(r.placeholders for s in steps for r in s.reqs)
    assert placeholders == (1 if mode == "async" else 0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_step_equals_what_an_independent_observer_saw(runs, mode):
    trace, _, schedules, updates = runs[mode]
    steps, upds = trace.of(StepScheduled), trace.of(StepUpdated)
    assert len(steps) == len(schedules) and len(upds) == len(updates)
    assert sum(len(s.preempted) for s in steps) >= 5, "the workload must preempt"
    for rec, (tokens, preempted, finished) in zip(steps, schedules):
        assert {r.req_id: r.prefill_tokens + r.decode_tokens + r.spec_tokens for r in rec.reqs} == \
            {_client_id(k): v for k, v in tokens.items()}, rec.step
        assert set(rec.preempted) == {_client_id(k) for k in preempted}, rec.step
        assert set(rec.finished) == {_client_id(k) for k in finished}, rec.step
    for rec, sampled in zip(upds, updates):
        got = {o.req_id: list(o.token_ids) for o in rec.outs if o.token_ids}
        assert got == {_client_id(k): v for k, v in sampled.items() if v}, rec.step


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_recorded_tokens_and_finish_reasons_are_what_the_engine_returned(runs, mode):
    trace, outputs, _, _ = runs[mode]
    tokens, reasons = defaultdict(list), {}
    for upd in trace.of(StepUpdated):
        for o in upd.outs:
            if o.token_ids and not (o.stale and o.sampled == 0):
                tokens[o.req_id].extend(o.token_ids)
            if o.finish_reason is not None:
                reasons[o.req_id] = o.finish_reason
    assert {k: tuple(v) for k, v in tokens.items()} == {k: t for k, (t, _) in outputs.items()}
    assert reasons == {k: r for k, (_, r) in outputs.items()}


@pytest.mark.parametrize("backend", ["native", "vllm"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_exact_replay_gives_identical_batches_and_finishing_order(runs, mode, backend):
    recorded = runs[mode][0]
    f = compare(recorded, replay(recorded, scheduler_backend=backend))
    assert f.steps_simulated == f.steps_recorded
    assert f.batches_identical == f.steps_recorded, f
    assert f.finish_order_identical, f
