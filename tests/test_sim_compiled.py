"""The simulator's compiled build (setup.py, tracesim/sim/_compiled.py) gives byte-identical traces to its
plain-Python sources, and is only used while it was built from the current sources.

The plain build runs in a subprocess with ``TRACESIM_PURE_PYTHON=1`` (a process imports one build or the
other); both compute a digest of every packed record of the same runs: bundled recordings replayed exact and
fitted, and simulated scenarios that go through async scheduling, preemption, pauses in every mode, aborts
with requeue, stale frames and chunked prefill.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tracesim.sim.scheduler
from helpers import in_build
from tracesim.sim import _compiled

REPO = Path(__file__).resolve().parents[1]

needs_compiled = pytest.mark.skipif(not _compiled.STATUS.compiled,
                                    reason=f"the compiled simulator is not in use: {_compiled.STATUS.reason}")

DIGESTS = r"""
import glob, json, os, sys
from tracesim.format import read_trace
from tracesim.format.digest import records_digest
from tracesim.sim import _compiled
from tracesim.sim.replay import replay
from tracesim.sim.run import RunInputs, simulate

def digest(trace):
    return records_digest([trace.header, *trace.records])

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from golden.records_digests import code_scenarios
scenarios = code_scenarios()
out = {"compiled": _compiled.STATUS.compiled}
for name, scenario in scenarios.items():
    trace = simulate(RunInputs(scenario, seed=3))
    out["simulate:" + name] = digest(trace)
    out["replay:" + name] = digest(replay(trace))
for path in sorted(glob.glob(os.path.join(sys.argv[1], "traces", "*.msgpack"))):
    trace = read_trace(path)
    out["replay:" + os.path.basename(path)] = digest(replay(trace))
    out["fitted:" + os.path.basename(path)] = digest(replay(trace, timing="fitted"))
print(json.dumps(out))
"""


def _digests(pure: bool) -> dict:
    return in_build(DIGESTS, pure)


def test_compiled_simulator_is_built_where_ci_requires_it():
    # .ci/run sets TRACESIM_REQUIRE_COMPILED=1: a build that silently fell back to plain Python fails there.
    if os.environ.get("TRACESIM_REQUIRE_COMPILED") != "1":
        pytest.skip("TRACESIM_REQUIRE_COMPILED is not set")
    assert _compiled.STATUS.compiled, _compiled.STATUS.reason
    assert not tracesim.sim.scheduler.__file__.endswith(".py")


@needs_compiled
def test_compiled_and_plain_builds_give_byte_identical_traces():
    compiled, plain = _digests(pure=False), _digests(pure=True)
    assert compiled.pop("compiled") is True and plain.pop("compiled") is False
    assert len(compiled) >= 20
    assert len(set(compiled.values())) == len(compiled)  # the digest tells these different runs apart
    assert compiled == plain


@pytest.fixture
def build_copy(tmp_path):
    """A copy of the installed package (its compiled modules and build record included), importable first."""
    if not _compiled.STATUS.compiled:
        pytest.skip(f"the compiled simulator is not in use: {_compiled.STATUS.reason}")
    shutil.copytree(REPO / "tracesim", tmp_path / "tracesim", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    return tmp_path


_WHICH = textwrap.dedent("""
    import warnings
    warnings.simplefilter("always")
    import tracesim.sim.engine, tracesim.sim.scheduler
    from tracesim.sim import _compiled, Scenario, RunInputs, simulate
    from tracesim.sim.scenario import Workload
    trace = simulate(RunInputs(Scenario(workload=Workload(num_prompts=4, group_size=2, concurrency=2)), seed=1))
    print(_compiled.STATUS.compiled, tracesim.sim.scheduler.__file__.endswith(".py"),
          tracesim.sim.engine.__file__.endswith(".py"), len(trace.records) > 0)
""")


def _which(copy: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WHICH], cwd=copy, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(copy), "TRACESIM_PURE_PYTHON": "0", **env})


def test_a_copy_of_the_build_runs_compiled(build_copy):
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "False", "False", "True"]
    assert "RuntimeWarning" not in run.stderr


def test_a_source_edited_after_the_build_runs_every_module_from_source(build_copy):
    with open(build_copy / "tracesim" / "sim" / "scheduler.py", "a") as f:
        f.write("\n# edited after the build\n")
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "True", "True"]  # all or none: engine.py runs too
    assert "scheduler.py changed after the compiled modules were built" in run.stderr


def test_pure_python_setting_runs_the_sources_without_a_warning(build_copy):
    run = _which(build_copy, TRACESIM_PURE_PYTHON="1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "True", "True"]
    assert "RuntimeWarning" not in run.stderr


def test_compiled_modules_without_a_build_record_are_not_used(build_copy):
    (build_copy / "tracesim" / "_built_from.py").unlink()
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "True", "True"]
    assert "compiled modules without a build record" in run.stderr


def test_a_missing_compiled_module_runs_every_module_from_source(build_copy):
    for built in (build_copy / "tracesim" / "sim").glob("rollout.*.so"):
        built.unlink()
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "True", "True"]
    assert "RuntimeWarning" not in run.stderr  # a failed optional build is not an edit: no warning
