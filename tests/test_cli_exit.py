"""The ``tracesim`` process ends bulk commands with os._exit once their output is out (cli/main.py ``entry``):
the exit code, stdout and the files it wrote must be complete, as with a normal exit."""

from __future__ import annotations

import json
import subprocess
import sys

from tracesim.cli.main import main
from tracesim.format import read_trace, write_trace

from conftest import TRACES
from helpers import simulated


def _tracesim(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracesim", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_replay_output_and_report_are_complete_after_the_fast_exit(tmp_path):
    out = tmp_path / "replayed.msgpack"
    run = _tracesim("replay", TRACES / "vllm-abort.msgpack", "-o", out, "--no-progress")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    replayed = read_trace(out)
    assert report["records"] == len(replayed.records) and replayed.truncated_bytes == 0
    assert report["batches_identical"] == report["steps_recorded"] > 0


def test_check_exit_codes_survive_the_fast_exit(tmp_path):
    bad = tmp_path / "bad.msgpack"
    write_trace(bad, simulated())  # a loop that breaks bindings: check exits 1
    run = _tracesim("check", bad, "--json")
    assert run.returncode == 1, run.stderr
    assert json.loads(run.stdout)["violations"]
    assert _tracesim("check", TRACES / "vllm-abort-tokens.msgpack").returncode == 0
    # In a Python process main() returns the code and keeps nothing alive.
    assert main(["check", str(bad)]) == 1
