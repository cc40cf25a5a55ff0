"""The recorder on a real vLLM engine (the CPU build): what the trace says agrees with what vLLM returned.

One recorded workload run (``tracesim record``, abort-mode updates with cache clearing) is shared by the
module; a second engine checks that an unwritable output path leaves generation working. Each engine start
costs tens of seconds on the CPU.
"""

import os

import pytest

pytest.importorskip("vllm")

from helpers import finish_counts  # noqa: E402
from tracesim.format import (  # noqa: E402
    CacheReset, OutputDelivered, Paused, RequestAdded, Resumed, StepScheduled, StepUpdated, read_trace,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    from tracesim.cli.main import main

    out = tmp_path_factory.mktemp("rec") / "abort.msgpack"
    code = main(["record", str(out), "--pause-mode", "abort", "--clear-cache", "--train-steps", "3",
                 "--update-every", "1", "--concurrency", "3", "--batch-groups", "1", "--max-tokens", "16"])
    assert code == 0
    return read_trace(out)


def _engine_sampled(trace) -> dict:
    sampled: dict = {}
    for u in trace.of(StepUpdated):
        for o in u.outs:
            # A stale frame of a preempted request still appends its tokens (vLLM drops only reset frames).
            sampled[o.req_id] = sampled.get(o.req_id, 0) + o.sampled
    return sampled


def test_trace_holds_both_processes_on_one_clock(trace):
    roles = sorted(p.role for p in trace.header.processes)
    assert roles == ["client", "engine-core"]
    assert [r.t_ns for r in trace.records] == sorted(r.t_ns for r in trace.records)


def test_header_says_the_engine_core_ran_its_own_busy_loop(trace):
    """AsyncLLM runs the core in an EngineCoreProc (the recorder finds it on the stack): engine_loop "busy"; the
    CPU platform turned async scheduling off, so one batch in flight."""
    settings = trace.header.engine_config
    assert settings.engine_loop == "busy"
    assert settings.max_concurrent_batches == 1 and settings.scheduler == "Scheduler"


def test_engine_token_counts_equal_what_the_client_received(trace):
    delivered: dict = {}
    final = {}
    for d in trace.of(OutputDelivered):
        assert d.start_idx == delivered.get(d.req_id, 0)  # frames are contiguous
        delivered[d.req_id] = d.start_idx + d.num_tokens
        if d.finished:
            final[d.req_id] = d
    sampled = _engine_sampled(trace)
    completed = [rid for rid, d in final.items() if d.finish_reason != "abort"]
    assert len(completed) >= 12
    for rid in completed:
        assert sampled[rid] == delivered[rid], rid
        assert sum(s.end - s.start for s in final[rid].spans) == delivered[rid]


def test_every_engine_request_finishes_exactly_once(trace):
    added = [r.req_id for r in trace.of(RequestAdded) if r.side == "engine"]
    assert len(added) == len(set(added))
    assert finish_counts(trace) == {rid: 1 for rid in added}
    client = {r.req_id for r in trace.of(RequestAdded) if r.side == "client"}
    assert set(added) == client


def test_pause_and_resume_appear_in_order_on_both_sides(trace):
    control = [(type(r).__name__, r.side) for r in trace.records if isinstance(r, (Paused, Resumed, CacheReset))]
    one_update = [("Paused", "client"), ("Paused", "engine"), ("CacheReset", "engine"), ("Resumed", "client"),
                  ("Resumed", "engine")]
    assert control == one_update * 2
    for p in trace.of(Paused):
        if p.side == "client":
            assert p.mode == "abort" and p.clear_cache and p.end_ns >= p.t_ns
    assert all(c.ok and c.reset_running for c in trace.of(CacheReset))


def test_steps_are_strictly_ordered(trace):
    scheduled = trace.of(StepScheduled)
    assert [s.step for s in scheduled] == list(range(len(scheduled)))
    assert [u.step for u in trace.of(StepUpdated)] == [s.step for s in scheduled]  # sync scheduling on CPU
    assert all(a.end_ns <= b.t_ns for a, b in zip(scheduled, scheduled[1:]))
    assert trace.header.engine_config["scheduler"] == "Scheduler"


def test_weight_versions_reach_the_engine_and_the_client(trace):
    versions = {u.version for u in trace.of(StepUpdated) if u.outs}
    assert {0, 1, 2} <= versions
    spans = {s.version for d in trace.of(OutputDelivered) if d.spans for s in d.spans}
    assert {0, 1} <= spans  # samples of the last version may still be running when the run ends


def test_unwritable_output_path_leaves_generation_working_and_warns(tmp_path, capfd):
    from vllm import LLM, SamplingParams

    from tracesim.record import SCHEDULER_CLS
    from tracesim.record.tinymodel import write_tiny_model

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    os.environ["TRACESIM_RECORD_DIR"] = str(blocker / "traces")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    try:
        llm = LLM(model=write_tiny_model(tmp_path / "model"), load_format="dummy", skip_tokenizer_init=True,
                  dtype="float32", max_model_len=256, max_num_seqs=8, enforce_eager=True,
                  scheduler_cls=SCHEDULER_CLS)
        outs = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}] * 2,
                            SamplingParams(max_tokens=8, n=2, ignore_eos=True, detokenize=False))
        del llm
    finally:
        del os.environ["TRACESIM_RECORD_DIR"]
    assert [len(c.token_ids) for o in outs for c in o.outputs] == [8] * 4
    assert "tracesim recorder: cannot open trace file" in capfd.readouterr().err
