"""`tracesim info` and `tracesim validate` as a user runs them: exit codes, one-line errors, JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import pytest

from tracesim.format import StepScheduled, StepUpdated, Trace, write_trace

from conftest import TRACES
from helpers import header

BUNDLED = TRACES / "synthetic-small.msgpack"


def tracesim(*args):
    return subprocess.run([sys.executable, "-m", "tracesim", *map(str, args)], capture_output=True, text=True)


def test_info_summarises_the_bundled_trace():
    out = tracesim("info", BUNDLED)
    assert out.returncode == 0, out.stderr
    assert "source: synthetic" in out.stdout and "steps      72" in out.stdout
    data = json.loads(tracesim("info", BUNDLED, "--json").stdout)
    assert data["counts"]["sched"] == data["steps"] == 72
    assert data["requests"] == data["requests_finished"] == 48
    assert data["weight_versions"] == [0, 1, 2]


def test_validate_accepts_a_good_trace():
    out = tracesim("validate", BUNDLED, "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout)["ok"] is True


def test_validate_lists_inconsistencies_with_exit_1(tmp_path):
    path = tmp_path / "bad.msgpack"
    write_trace(path, Trace(header(), [
        StepScheduled(10, 5, 0),  # ends before it starts
        StepScheduled(20, 21, 0),  # step does not advance
        StepUpdated(30, 31, 7),  # output of a step never scheduled
    ]))
    out = tracesim("validate", path)
    assert out.returncode == 1
    assert "end_ns 5 is before t_ns" in out.stdout
    assert "step 0 does not follow step 0" in out.stdout
    assert "step 7, which was never scheduled" in out.stdout
    problems = json.loads(tracesim("validate", path, "--json").stdout)["problems"]
    assert len(problems) == 3


def test_validate_reports_truncation_as_a_problem(tmp_path):
    data = BUNDLED.read_bytes()
    path = tmp_path / "cut.msgpack"
    path.write_bytes(data[: len(data) - 7])
    out = tracesim("validate", path)
    assert out.returncode == 1 and "truncated" in out.stdout


@pytest.mark.parametrize("content", [b"", b"\x00garbage", msgpack.packb(("header", (3, 0, "x", "vllm", ())))])
@pytest.mark.parametrize("command", ["info", "validate"])
def test_unreadable_input_gives_one_line_and_exit_2(tmp_path, content, command):
    path = tmp_path / "x.msgpack"
    path.write_bytes(content)
    out = tracesim(command, path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracesim: error: ") and str(path) in lines[0]
    assert "Traceback" not in out.stderr


def test_missing_file_is_one_line_exit_2(tmp_path):
    out = tracesim("info", tmp_path / "nope.msgpack")
    assert out.returncode == 2 and "cannot open" in out.stderr and "Traceback" not in out.stderr


def test_merge_command_writes_one_timeline(tmp_path):
    from tracesim.format import RequestAdded, read_trace

    a, b, out = tmp_path / "a.msgpack", tmp_path / "b.msgpack", tmp_path / "m.msgpack"
    write_trace(a, Trace(header(role="engine-core", pid=1), [StepScheduled(10, 11, 0), StepScheduled(30, 31, 1)]))
    write_trace(b, Trace(header(role="client", pid=2), [RequestAdded(5, "r0", side="client")]))
    res = tracesim("merge", a, b, "-o", out)
    assert res.returncode == 0, res.stderr
    merged = read_trace(out)
    assert [r.t_ns for r in merged.records] == [5, 10, 30] and merged.procs == [1, 0, 0]


def test_info_counts_aborted_requests_apart_from_finished_ones():
    data = json.loads(tracesim("info", TRACES / "vllm-abort.msgpack", "--json").stdout)
    assert data["requests_aborted"] > 0  # the abort-mode pauses abort in-flight requests
    assert data["requests_finished"] + data["requests_aborted"] == data["requests"]
