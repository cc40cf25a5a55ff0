"""The Chrome trace-event export is structurally valid for Perfetto and carries steps, requests, violations."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from helpers import simulated
from tracesim.check import check_trace
from tracesim.cli.main import main
from tracesim.viz import to_chrome, write_chrome

BUNDLED = Path(__file__).resolve().parents[1] / "traces" / "synthetic-small.msgpack"
_KEYS = {"X": {"name", "ph", "pid", "tid", "ts", "dur"}, "i": {"name", "ph", "pid", "tid", "ts", "s"},
         "M": {"name", "ph", "pid", "tid", "args"}}


def validate(doc: dict) -> list:
    """Structural checks of a trace-event document; returns the non-metadata events."""
    assert set(doc) >= {"traceEvents", "displayTimeUnit"} and doc["displayTimeUnit"] == "ns"
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    processes, threads = set(), set()
    for ev in events:
        assert ev["ph"] in _KEYS, ev
        assert _KEYS[ev["ph"]] <= set(ev), f"missing keys in {ev}"
        assert isinstance(ev["name"], str) and ev["name"]
        assert isinstance(ev["pid"], int) and isinstance(ev["tid"], int)
        if ev["ph"] == "M":
            if ev["name"] == "process_name":
                processes.add(ev["pid"])
            elif ev["name"] == "thread_name":
                threads.add((ev["pid"], ev["tid"]))
            continue
        assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0, ev
        else:
            assert ev["s"] in ("t", "p", "g")
        if "args" in ev:
            assert isinstance(ev["args"], dict)
    body = [ev for ev in events if ev["ph"] != "M"]
    for ev in body:
        assert ev["pid"] in processes, f"pid {ev['pid']} has no process_name"
        assert (ev["pid"], ev["tid"]) in threads, f"pid/tid {ev['pid']}/{ev['tid']} has no thread_name"
    _assert_spans_nest(body)
    return body


def _assert_spans_nest(body: list) -> None:
    """Within one thread, complete events are disjoint or nested (otherwise the viewer mis-stacks them)."""
    per_thread = defaultdict(list)
    for ev in body:
        if ev["ph"] == "X":
            per_thread[(ev["pid"], ev["tid"])].append((ev["ts"], -(ev["ts"] + ev["dur"]), ev["name"]))
    eps = 1e-6
    for key, spans in per_thread.items():
        stack = []
        for ts, neg_end, name in sorted(spans):
            end = -neg_end
            while stack and stack[-1][0] <= ts + eps:
                stack.pop()
            assert not stack or end <= stack[-1][0] + eps, f"{name} crosses {stack[-1][1]} in thread {key}"
            stack.append((end, name))


@pytest.fixture(scope="module")
def demo():
    """A simulated run of a deliberately wrong RL loop (async, keep-mode pauses, labels at admission)."""
    return simulated()


def test_export_of_bundled_trace_is_valid_and_names_every_party():
    doc = to_chrome(BUNDLED)
    validate(doc)
    names = {ev["args"]["name"] for ev in doc["traceEvents"] if ev["name"] == "process_name"}
    assert {"engine", "GPU", "client", "reward workers", "trainer"} <= names


def test_steps_requests_and_pauses_are_spans(demo):
    body = validate(to_chrome(demo))
    spans = {ev["name"] for ev in body if ev["ph"] == "X"}
    assert {"schedule 0", "update 0", "forward 0", "step 0 in flight", "g0-s0", "paused (keep)",
            "write weights v1", "tokens by v0", "tokens by v1"} <= spans


def test_async_steps_in_flight_land_on_two_batch_queue_threads(demo):
    doc = to_chrome(demo)
    queue_threads = {ev["args"]["name"] for ev in doc["traceEvents"]
                     if ev["name"] == "thread_name" and ev["args"]["name"].startswith("batch queue")}
    assert queue_threads == {"batch queue 1", "batch queue 2"}


def test_violations_are_global_instants_named_by_invariant(demo):
    violations = check_trace(demo).violations
    body = validate(to_chrome(demo, violations))
    marks = [ev for ev in body if ev.get("cat") == "violation"]
    assert len(marks) == len(violations)
    assert {ev["name"] for ev in marks} == {v.invariant for v in violations}
    assert all(ev["ph"] == "i" and ev["s"] == "g" and ev["args"]["message"] for ev in marks)


def test_written_file_is_json_with_the_same_events(demo, tmp_path):
    path = tmp_path / "out.json"
    n = write_chrome(demo, path)
    doc = json.loads(path.read_text())
    assert len(doc["traceEvents"]) == n
    validate(doc)


def test_cli_export_writes_valid_json_with_violations(tmp_path, capsys):
    out = tmp_path / "bundled.json"
    assert main(["export", str(BUNDLED), "--format", "chrome", "-o", str(out)]) == 0
    validate(json.loads(out.read_text()))
    assert "0 violation(s)" in capsys.readouterr().out  # the bundled trace is correct


def test_cli_export_of_a_missing_trace_is_one_line_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.msgpack"), "-o", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.msgpack" in err[0]
