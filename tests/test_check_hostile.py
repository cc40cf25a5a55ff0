"""Hostile traces: `tracesim check` answers 0, 1, 2 or 4 and never fails inside (exit 3), never sizes memory
from a number in the trace, stays near-linear on adversarial shapes, and never echoes a huge value."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracesim.check import check_trace
from tracesim.cli.main import main
from tracesim.format import RecorderLost, read_trace, write_trace

from check_builder import Run, correct_group

REPO = Path(__file__).resolve().parents[1]


def _adversarial():
    spec = importlib.util.spec_from_file_location("bench_check_adversarial",
                                                  REPO / "benchmarks" / "bench_check_adversarial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base_run() -> Run:
    """A correct loop with every record kind the fuzzed fields live in: adds, steps, frames, rewards, a
    consumption, a weight update, a client abort and a drop."""
    run = correct_group()
    run.update_weights()
    run.admit("x", "g1", 0, 1)
    run.engine_step(prefill=["x"], deliver=False)
    run.abort(["x"])
    run.drop(["x"])
    return run


def _plain(value):
    """Records as msgpack-ready lists (mutable), nested entries too."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _frames(trace) -> list:
    frames = [["header", _plain(trace.header)]]
    for proc, rec in trace.with_procs():
        frames.append([rec.KIND, _plain(rec)] + ([proc] if proc else []))
    return frames


def _write(path, frames) -> None:
    packer = msgpack.Packer(use_bin_type=True)
    with open(path, "wb") as f:
        for frame in frames:
            f.write(packer.pack(frame))


def _check(argv) -> tuple:
    """``(exit code, stdout, stderr)`` of ``tracesim check ARGV`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["check", *argv])
    return code, out.getvalue(), err.getvalue()


# --- (a) wrong types inside tuples and the header's engine_config: exit 2, one line naming the field --------


def _set(frames, kind, index, value, nth=0):
    hits = [f for f in frames if f[0] == kind]
    fields = hits[nth][1]
    while len(fields) <= index:
        fields.append(None)
    fields[index] = value


_MAP = {"a": 1}
CASES = {
    "abort.req_ids": (lambda fr: _set(fr, "abort", 1, [_MAP]), "abort.req_ids[0]"),
    "drop.req_ids": (lambda fr: _set(fr, "drop", 1, ["x", _MAP]), "drop.req_ids[1]"),
    "sched.preempted": (lambda fr: _set(fr, "sched", 4, [_MAP]), "sched.preempted[0]"),
    "sched.finished": (lambda fr: _set(fr, "sched", 5, ["x", [1, 2]]), "sched.finished[1]"),
    "add.block_keys": (lambda fr: _set(fr, "add", 11, [1, "k"]), "add.block_keys[1]"),
    "upd.outs.token_ids": (lambda fr: _set(fr, "upd", 3, [["g0s0", 1, None, False, [_MAP]]]),
                           "upd.outs[0].token_ids[0]"),
    "upd.outs.token_ids.int32": (lambda fr: _set(fr, "upd", 3, [["g0s0", 1, None, False, [2**40]]]),
                                 "upd.outs[0].token_ids[0]"),
    "upd.outs.logprobs": (lambda fr: _set(fr, "upd", 3, [["g0s0", 1, None, False, None, ["-0.5"]]]),
                          "upd.outs[0].logprobs[0]"),
    "header.weight_version": (lambda fr: fr[0][1].__setitem__(5, {"weight_version": _MAP}),
                              "header.engine_config.weight_version"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_type_inside_a_field_is_one_clear_error(case, tmp_path):
    mutate, field = CASES[case]
    frames = _frames(_base_run().trace())
    mutate(frames)
    path = tmp_path / "bad.msgpack"
    _write(path, frames)
    code, out, err = _check([str(path)])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and out == ""
    assert f"field {field}:" in lines[0] and str(path) in lines[0], lines[0]


@pytest.mark.parametrize("pure", ["0", "1"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_columns_refuse_the_same_values(case, pure, tmp_path, monkeypatch):
    from tracesim.format import TraceFormatError
    from tracesim.format.columns import read_columns

    mutate, field = CASES[case]
    frames = _frames(_base_run().trace())
    mutate(frames)
    path = tmp_path / "bad.msgpack"
    _write(path, frames)
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", pure)
    with pytest.raises(TraceFormatError, match=rf"field {re.escape(field)}:"):
        read_columns(path)
    with pytest.raises(TraceFormatError, match=rf"field {re.escape(field)}:") as records_error:
        read_trace(path)
    with pytest.raises(TraceFormatError) as columns_error:
        read_columns(path)
    assert str(columns_error.value) == str(records_error.value)


def test_a_huge_value_is_not_echoed_whole(tmp_path):
    frames = _frames(_base_run().trace())
    frames[3].append("p" * ((1 << 20) - 1))  # a 1 MB string as proc
    path = tmp_path / "bad.msgpack"
    _write(path, frames)
    code, _out, err = _check([str(path)])
    assert code == 2
    assert "proc" in err and len(err) < 400, len(err)
    assert "'ppp" in err and "..." in err


def test_a_valid_trace_still_checks_clean(tmp_path):
    path = tmp_path / "ok.msgpack"
    _write(path, _frames(correct_group().trace()))
    assert _check([str(path)])[0] == 0


# --- (b) a number in the trace does not size memory ---------------------------------------------------------


_BOUNDED_CHILD = """
import resource, sys
from tracesim.cli.main import main
import tracesim.check, tracesim.format.trace  # everything imported before the cap
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
sys.exit(main(["check", sys.argv[1], "--json"]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_group_size_2_pow_40_checks_in_bounded_memory(tmp_path):
    run = Run()
    for i in range(2):
        run.admit(f"s{i}", "g0", i, 2**40)
    run.generate(["s0", "s1"])
    run.reward("s0")
    run.reward("s1")
    run.consume(["s0", "s1"])
    path = tmp_path / "big-group.msgpack"
    write_trace(path, run.trace())
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", _BOUNDED_CHILD, str(path)], capture_output=True, text=True,
                           timeout=120, env=env, cwd=REPO)
    assert child.returncode == 1, child.stderr
    (v,) = [v for v in json.loads(child.stdout)["violations"] if v["invariant"] == "groups_whole_and_consistent"]
    assert v["message"].startswith("group g0 was consumed with 2 of its 1099511627776 members (missing sample_idx "
                                   "[2, 3, 4, ")
    assert v["message"].endswith(", 65, ...] (1,099,511,627,774 in all))") and len(v["message"]) < 600


# --- (c) fuzzing: mutated traces never make check fail inside ----------------------------------------------


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**40, 2**63 - 1, -(2**63), 2**64 - 1]), st.floats(),
    st.text(max_size=8), st.binary(max_size=8), st.just("x" * 5000),
    st.sampled_from(["g0s0", "g0s1", "x", "g0", "g1", "client", "engine", "abort", "stop"]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                       max_leaves=8)


def _same_type(value):
    """Values of the type ``value`` has: what passes the reader and reaches the checkers."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.integers(-5, 300), st.sampled_from([-1, 2**31, 2**40, 2**63 - 1, -(2**63), 2**64 - 1]),
                         st.integers(min_value=-(2**63), max_value=2**64 - 1))
    if isinstance(value, float):
        return st.floats()
    if isinstance(value, str):
        return st.one_of(st.sampled_from(["g0s0", "g0s1", "x", "g0", "g1", "client", "engine", "abort", "stop"]),
                         st.text(max_size=4))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return st.lists(st.sampled_from(["g0s0", "g0s1", "x", "y"]), max_size=4)
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):  # nested entries
        return st.lists(st.sampled_from(value), max_size=6)  # dropped, duplicated, reordered
    return st.just(value)


def _base_frames() -> list:
    sources = [_frames(_base_run().trace())]
    recorded = read_trace(REPO / "traces" / "vllm-abort.msgpack")
    recorded.records = recorded.records[:400]
    recorded.procs = recorded.procs[:400]
    sources.append(_frames(recorded))
    return sources


_BASES = _base_frames()


def _mutate(data, frames: list) -> list:
    frames = json.loads(json.dumps(frames))  # a deep copy (the frames are JSON-safe before mutation)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["field", "field", "same", "same", "same", "entry", "drop", "dup", "swap",
                                        "proc", "kind", "header"]), label="op")
        i = data.draw(st.integers(1, len(frames) - 1), label="frame") if len(frames) > 1 else 0
        frame = frames[i] if frames else None
        if op == "field" and frame is not None and isinstance(frame[1], list):
            j = data.draw(st.integers(0, len(frame[1])), label="field index")
            value = data.draw(_VALUES, label="value")
            if j < len(frame[1]):
                frame[1][j] = value
            else:
                frame[1].append(value)
        elif op == "same" and frame is not None and isinstance(frame[1], list) and frame[1]:
            j = data.draw(st.integers(0, len(frame[1]) - 1), label="field index")
            frame[1][j] = data.draw(_same_type(frame[1][j]), label="value")  # passes the reader's checks
        elif op == "entry" and frame is not None and isinstance(frame[1], list):
            lists = [v for v in frame[1] if isinstance(v, list) and v]
            if lists:
                target = data.draw(st.sampled_from(lists), label="tuple field")
                k = data.draw(st.integers(0, len(target) - 1), label="entry")
                if isinstance(target[k], list) and target[k]:
                    m = data.draw(st.integers(0, len(target[k]) - 1), label="entry field")
                    target[k][m] = data.draw(_VALUES, label="value")
                else:
                    target[k] = data.draw(_VALUES, label="value")
        elif op == "drop" and len(frames) > 1:
            del frames[i]
        elif op == "dup" and frame is not None:
            frames.insert(data.draw(st.integers(1, len(frames)), label="to"), frame)
        elif op == "swap" and len(frames) > 2:
            k = data.draw(st.integers(1, len(frames) - 1), label="other")
            frames[i], frames[k] = frames[k], frames[i]
        elif op == "proc" and frame is not None:
            frame[2:] = [data.draw(_VALUES, label="proc")]
        elif op == "kind" and frame is not None:
            frame[0] = data.draw(st.one_of(st.sampled_from(["sched", "upd", "add", "header", "future"]), _VALUES),
                                 label="kind")
        elif op == "header":
            j = data.draw(st.integers(0, 8), label="header field")
            value = data.draw(st.one_of(_VALUES, st.dictionaries(st.sampled_from(["weight_version", "x"]), _VALUES)),
                              label="value")
            if j < len(frames[0][1]):
                frames[0][1][j] = value
    return frames


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.data())
def test_fuzzed_traces_never_fail_inside(data):
    base = data.draw(st.sampled_from(range(len(_BASES))), label="base")
    frames = _mutate(data, _BASES[base])
    blob = b"".join(msgpack.packb(f, use_bin_type=True) for f in frames)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob)), label="cut")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzzed.msgpack")
        with open(path, "wb") as f:
            f.write(blob)
        code, out, err = _check([path])
        assert code in (0, 1, 2, 4), err
        assert all(len(line) <= 1000 for line in err.splitlines())
        if code == 2:  # one error line (after the reader's truncation warning, if any)
            assert [line.startswith("tracesim: error: ") for line in err.strip().splitlines()][-1:] == [True], err
            assert sum(line.startswith("tracesim: error: ") for line in err.splitlines()) == 1, err
        json_code, json_out, _err = _check([path, "--json"])
        assert json_code == code
        if code != 2:
            json.loads(json_out)


# --- (d) a truncated trace is never a plain pass -------------------------------------------------------------


def _truncated(tmp_path, run: Run, cut: int = 3) -> tuple:
    trace = run.trace()
    trace.records.append(RecorderLost(run.at(), 0, "the tail that is cut off"))
    path = tmp_path / "cut.msgpack"
    write_trace(path, trace)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    return str(path), len(data) - cut


def test_truncated_trace_exits_4_and_says_so(tmp_path):
    path, size = _truncated(tmp_path, correct_group())
    code, out, err = _check([path])
    assert code == 4, out + err
    line = next(l for l in out.splitlines() if l.startswith("trace truncated:"))
    assert "byte(s) dropped" in line and "exit 4" in line
    assert "warning" in err  # the reader's TruncatedTraceWarning, as before
    code, out, _err = _check([path, "--json"])
    assert code == 4
    report = json.loads(out)
    truncated = report["truncated"]
    assert truncated["bytes"] > 0 and truncated["offset"] + truncated["bytes"] == size
    assert f"at byte {truncated['offset']:,}" in line
    assert report["violations"] == []


def test_truncated_trace_with_violations_exits_1(tmp_path):
    run = correct_group()
    run.replace(type(run.records[0]), lambda r: getattr(r, "side", "") == "client", group_size=3)
    path, _size = _truncated(tmp_path, run)
    code, out, _err = _check([path])
    assert code == 1
    assert any(l.startswith("trace truncated:") for l in out.splitlines())


def test_complete_trace_reports_no_truncation(tmp_path):
    path = tmp_path / "ok.msgpack"
    write_trace(path, correct_group().trace())
    code, out, _err = _check([str(path), "--json"])
    assert code == 0
    assert json.loads(out)["truncated"] is None and json.loads(out)["skipped_records"] == 0


def test_unknown_record_kinds_are_skipped_and_exit_4(tmp_path):
    frames = _frames(correct_group().trace())
    frames.insert(3, ["from_the_future", [1, 2, 3]])
    path = tmp_path / "newer.msgpack"
    _write(path, frames)
    code, out, _err = _check([str(path)])
    assert code == 4
    assert any(l.startswith("records skipped: 1 record") for l in out.splitlines())
    assert check_trace(read_trace(path)).skipped_records == 1


# --- (e) adversarial shapes: correct results (their time is bench_check_adversarial.py's) -------------------


N = 20_000


@pytest.fixture(scope="module")
def adversarial():
    return _adversarial()


def _violations(trace, name):
    return [v for v in check_trace(trace, only=[name]).violations]


def test_one_sample_consumed_many_times(adversarial):
    trace = adversarial.consumed_many(N)
    (v,) = _violations(trace, "groups_whole_and_consistent")
    assert v.message == f"group g0 was consumed with {N + 1} of its 2 members (sample_idx [0] more than once)"
    (v,) = _violations(trace, "sample_ends_exactly_once")
    assert v.message.startswith(f"s0 ended {N} times (consume at ")
    assert _violations(trace, "consumed_sample_matches_binding") == []


def test_many_samples_sharing_a_digest(adversarial):
    trace = adversarial.shared_digest(N)
    found = _violations(trace, "reward_bound_to_own_tokens")
    assert len(found) == N // 2
    assert [v.req_id for v in found[:2]] == ["r1", "r3"]
    assert found[0].message.endswith(": those are the tokens of r0, r2, r4")
    assert found[-1].message.endswith(": those are the tokens of r0, r2, r4")


def test_one_step_spanning_the_run(adversarial):
    trace = adversarial.long_step(N)
    found = _violations(trace, "no_weight_write_during_forward")
    assert len(found) == N
    assert {v.step for v in found} == {0}
    assert all("overlaps step 0's forward pass" in v.message for v in found)


def test_write_overlapping_many_forward_passes_lists_some_and_counts_the_rest(adversarial):
    from tracesim.check.weights import MAX_LISTED
    from tracesim.format import WeightsUpdated

    trace = adversarial.long_step(200)
    trace.records.append(WeightsUpdated(0, 10**12, 999, "client"))  # overlaps every step
    found = [v for v in _violations(trace, "no_weight_write_during_forward") if "version 999 " in v.message]
    assert len(found) == MAX_LISTED + 1
    assert f"overlaps {201 - MAX_LISTED} more forward passes" in found[-1].message


def test_late_admissions_keep_their_order(adversarial):
    trace = adversarial.late_admissions(N)
    ix_order = [v.req_id for v in _violations(trace, "sample_ends_exactly_once")]
    assert ix_order[:3] == ["r0", "r1", "r2"] and len(ix_order) == N


def test_group_dropped_many_times(adversarial):
    from tracesim.check.index import MAX_GROUP_DROPS

    trace = adversarial.group_drops(N)
    found = _violations(trace, "sample_ends_exactly_once")
    assert len(found) == N // 2
    assert found[0].message.startswith(f"r0 ended {MAX_GROUP_DROPS} times (drop at ")


def test_alternating_versions_with_agreeing_spans(adversarial):
    trace = adversarial.span_runs(N)
    (v,) = _violations(trace, "tokens_from_labelled_version")
    assert "delivered spans" not in v.message  # the spans agree with the engine: no span conflict
    assert v.message.startswith("tokens 1..2 of r were produced by version 1")
    spans = list(trace.records[-1].spans)
    spans[N // 2] = spans[N // 2]._replace(version=1 - spans[N // 2].version)
    trace.records[-1] = trace.records[-1]._replace(spans=tuple(spans))
    (v,) = _violations(trace, "tokens_from_labelled_version")
    assert f"tokens {N // 2}..{N // 2 + 1} of r with version {(N // 2) % 2}" in v.message
