"""`tracesim explore --ray`: the Ray executor finds what the local path finds, and leaves Ray as it found it.

Skipped where Ray (the ``[ray]`` extra) is not installed. One local cluster of 2 CPUs serves the module; the
CLI test, which runs first, lets the executor start and stop its own.
"""

from __future__ import annotations

import logging
import socket

import pytest

ray = pytest.importorskip("ray")

from tracesim.cli.main import main  # noqa: E402
from tracesim.explore import explore  # noqa: E402
from tracesim.explore.pool import RayExecutor, map_ordered  # noqa: E402
from tracesim.explore.runner import Base, RunSpec, run_one  # noqa: E402
from tracesim.explore.search import RunPlan  # noqa: E402

from conftest import REPO  # noqa: E402

pytestmark = pytest.mark.slow

SCENARIO = str(REPO / "scenarios" / "keep-bad-bindings.toml")
BUDGET = 12
LATE_BUDGET = 32  # late-version-read at seed 0 first fails at run 15: room for it, still a small search


@pytest.fixture(scope="module", autouse=True)
def _ray_down_at_end():
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster started by the caller (as a user's own ``ray.init`` would be): explore must reuse it."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)  # "local": never a cluster some other process left running
    yield
    ray.shutdown()


def _summary(result):
    return {
        "runs": result.runs,
        "errors": result.errors,
        "signatures": [f.signature for f in result.findings],
        "found_at": [f.found_at for f in result.findings],
        "minimal": [f.minimal.perturbations for f in result.findings],
        "deterministic": [f.deterministic for f in result.findings],
    }


def test_cli_ray_local_starts_and_stops_its_cluster(tmp_path, capsys):
    was_up = ray.is_initialized()
    rc = main(["explore", "--scenario", SCENARIO, "--budget", "8", "--ray", "local", "--workers", "2",
               "--no-plot", "--no-progress", "-o", str(tmp_path)])
    assert rc == 1  # keep-bad-bindings breaks bindings at default timings
    out, err = capsys.readouterr()
    assert "explored 8 runs" in out
    # nothing from Ray on stderr (tracesim's own warnings, e.g. a stale build, are not Ray's)
    assert [line for line in err.splitlines() if not line.startswith("tracesim: warning:")] == []
    assert sorted(p.name for p in tmp_path.glob("cex-*.toml"))
    assert ray.is_initialized() == was_up  # a cluster it started itself, it shut down


def test_cli_ray_address_with_no_cluster_is_bad_input(tmp_path, capsys):
    if ray.is_initialized():
        pytest.skip("an existing connection is used whatever --ray says")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["explore", "--scenario", SCENARIO, "--budget", "2", "--ray", f"127.0.0.1:{port}",
               "--no-progress", "-o", str(tmp_path)])
    assert rc == 2
    assert f"--ray 127.0.0.1:{port}: no Ray cluster answers there" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_ray_finds_what_local_processes_find(ray_cluster):
    # late-version-read is clean unperturbed: its finding is a shrunk perturbation list, found and shrunk on Ray
    base = Base("scenario", str(REPO / "scenarios" / "late-version-read.toml"))
    local = explore(base, budget=LATE_BUDGET, seed=0, workers=1)
    on_ray = explore(base, budget=LATE_BUDGET, seed=0, ray="local", workers=2)
    assert local.findings and all(f.minimal.perturbations for f in local.findings)  # the comparison means something
    assert _summary(on_ray) == _summary(local)
    assert {f.signature for f in on_ray.findings} == {f.signature for f in local.findings}
    assert ray.is_initialized()  # the caller's cluster is left running


def test_ray_runs_give_the_outcomes_of_local_runs(ray_cluster):
    """Run by run (perturbed ones included): the same failures, violations and step counts."""
    specs = [RunPlan(Base("scenario", SCENARIO), 0).spec(i) for i in range(BUDGET)]
    assert any(s.perturbations for s in specs)
    ex = RayExecutor("local", 2)
    try:
        on_ray = list(map_ordered(ex, specs, 4))
    finally:
        ex.close()
    assert on_ray == [run_one(s) for s in specs]


def test_close_with_runs_in_flight_leaves_the_cluster_usable(ray_cluster):
    base = Base("scenario", SCENARIO)
    specs = [RunSpec(base, seed, (), seed) for seed in range(4)]
    ex = RayExecutor("local", 2)
    for n, spec in enumerate(specs):
        ex.submit(n, spec)
    ex.next_done()
    ex.close()  # the rest cancelled, as on an interrupt
    assert ex.pending() == 0 and ray.is_initialized()
    ex = RayExecutor("local", 2)
    try:
        got = list(map_ordered(ex, specs[:2], 2))
    finally:
        ex.close()
    assert got == [run_one(s) for s in specs[:2]]
