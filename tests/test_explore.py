"""tracesim explore / repro: search finds the bundled bugs, stays quiet on the correct loop, shrinks to minimal
and deterministic counterexamples, and reproduces them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO
from tracesim.cli.main import main
from tracesim.explore import Base, explore, load_repro, run_one, shrink
from tracesim.explore.runner import RunSpec
from tracesim.explore.search import RunPlan
from tracesim.sim import perturb as P

SCEN = REPO / "scenarios"
DEFAULT = Base("scenario", str(SCEN / "default.toml"))
LATE = Base("scenario", str(SCEN / "late-version-read.toml"))
KEEP = Base("scenario", str(SCEN / "keep-bad-bindings.toml"))


@pytest.fixture(scope="module")
def late_result():
    return explore(LATE, budget=48, seed=0, workers=1)


def test_late_version_read_is_found_at_default_timings_and_shrunk(late_result):
    found = {f.signature.invariant: f for f in late_result.findings}
    f = found["tokens_from_labelled_version"]
    assert run_one(RunSpec(LATE, f.minimal.seed)).failures == ()  # the unperturbed run is clean
    assert f.minimal.perturbations and len(f.minimal.perturbations) <= len(f.first.perturbations)
    assert f.deterministic is True
    # 1-minimal: dropping any perturbation, or weakening it one notch, makes the failure go away
    for i in range(len(f.minimal.perturbations)):
        rest = f.minimal.perturbations[:i] + f.minimal.perturbations[i + 1:]
        assert f.signature not in run_one(RunSpec(LATE, f.minimal.seed, rest)).signatures()
        for weaker in f.minimal.perturbations[i].simpler():
            cand = f.minimal.perturbations[:i] + (weaker,) + f.minimal.perturbations[i + 1:]
            assert f.signature not in run_one(RunSpec(LATE, f.minimal.seed, cand)).signatures()


# Every bundled bug scenario, the invariants it must show, and a small budget that finds them (seed 0).
BUGS = {
    "keep-bad-bindings.toml": (8, {"reward_bound_to_own_tokens", "tokens_from_labelled_version", "no_stale_kv"}),
    "late-version-read.toml": (48, {"tokens_from_labelled_version"}),
    "retry-reuse-ids.toml": (48, {"request_ids_live_once", "output_applies_to_scheduling_incarnation"}),
    "first-token-label.toml": (128, {"tokens_from_labelled_version"}),
    "behaviour-recompute.toml": (48, {"behaviour_logprobs_from_sampling_policy"}),
    "wait-kv-pressure.toml": (4, {"tokens_from_labelled_version"}),  # fires at default timings
}


def test_every_bundled_scenario_is_either_a_known_bug_or_the_correct_loop():
    assert {p.name for p in SCEN.glob("*.toml")} == set(BUGS) | {"default.toml"}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_every_bundled_bug_scenario_is_found_within_a_small_budget(name):
    budget, invariants = BUGS[name]
    result = explore(Base("scenario", str(SCEN / name)), budget=budget, seed=0, workers=2, shrink_failures=False)
    assert {f.signature.invariant for f in result.findings} >= invariants


def test_retries_under_fresh_ids_are_harmless(tmp_path):
    # the correct twin of retry-reuse-ids: the same loop and search, retries under fresh ids
    twin = tmp_path / "retry-fresh-ids.toml"
    twin.write_text((SCEN / "retry-reuse-ids.toml").read_text().replace('retry_ids = "reuse"', 'retry_ids = "fresh"'))
    result = explore(Base("scenario", str(twin)), budget=96, seed=0, workers=2, shrink_failures=False)
    assert result.findings == [], [str(f.signature) for f in result.findings]


def test_the_correct_scenario_stays_clean_over_the_budget():
    result = explore(DEFAULT, budget=160, seed=0, workers=2, shrink_failures=False)
    assert result.runs == 160 and not result.errors
    assert result.findings == [], [str(f.signature) for f in result.findings]


def test_same_seed_same_runs_and_findings_whatever_the_workers(late_result):
    plan_a, plan_b = RunPlan(LATE, 0), RunPlan(LATE, 0)
    assert [plan_a.spec(i) for i in range(40)] == [plan_b.spec(i) for i in range(40)]
    assert RunPlan(LATE, 1).spec(5) != plan_a.spec(5)
    two = explore(LATE, budget=48, seed=0, workers=2)
    assert [(f.signature, f.found_at, f.minimal) for f in two.findings] == \
        [(f.signature, f.found_at, f.minimal) for f in late_result.findings]


# --- shrinking: properties over a predicate whose minimal answers are known ---------------------------------

def _fails(ps) -> bool:
    """Fails when some delay of step 3 is >= 7 ms and request "a" is aborted somewhere."""
    return (any(isinstance(p, P.DelayDelivery) and p.step == 3 and p.ms >= 7 for p in ps)
            and any(isinstance(p, P.Abort) and p.req == "a" for p in ps))


noise = st.one_of(st.builds(P.DelayDelivery, st.integers(0, 5), st.integers(0, 300)),
                  st.builds(P.Abort, st.sampled_from(["sched:1", "upd:2", "pause:1"]), st.sampled_from(["a", "b"]),
                            st.sampled_from(["request", "group"])),
                  st.builds(P.RewardDelay, st.sampled_from(["a", "b"]), st.integers(0, 50)))


@given(st.lists(noise, max_size=6), st.integers(7, 300), st.sampled_from([1, 2, 5]))
@settings(max_examples=150, deadline=None)
def test_shrinking_is_minimal_idempotent_and_independent_of_parallelism(extra, ms, chunk):
    start = tuple(extra) + (P.DelayDelivery(3, ms), P.Abort("sched:1", "a", "group"))
    assert _fails(start)
    def check(cands):
        return [_fails(c) for c in cands]
    res = shrink(start, check, chunk=chunk)
    out = res.perturbations
    assert _fails(out)
    assert len(out) == 2  # one delay, one abort: nothing else is needed
    delay = next(p for p in out if isinstance(p, P.DelayDelivery))
    abort = next(p for p in out if isinstance(p, P.Abort))
    assert delay.ms == 7 and abort.scope == "request"  # smallest magnitude, simplest scope
    assert shrink(out, check, chunk=chunk).perturbations == out  # idempotent
    assert shrink(start, check, chunk=1).perturbations == out  # the same for any chunk size


# --- CLI ---------------------------------------------------------------------------------------------------

def test_explore_cli_reports_saves_and_repro_reproduces(tmp_path, capsys):
    out = tmp_path / "cex"
    rc = main(["explore", "--scenario", str(SCEN / "late-version-read.toml"), "--budget", "48", "--workers", "1",
               "--json", "--no-progress", "-o", str(out)])
    assert rc == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == 48 and doc["base"]["kind"] == "scenario"
    cex = next(c for c in doc["counterexamples"] if c["invariant"] == "tokens_from_labelled_version")
    assert cex["perturbations"] and cex["deterministic"] is True
    assert cex["repro"].startswith("tracesim repro --scenario ")
    for key in ("repro", "trace", "plot"):
        assert (tmp_path / "cex").joinpath(cex["files"][key].rsplit("/", 1)[-1]).stat().st_size > 0
    assert main(["repro", cex["files"]["repro"]]) == 1
    assert "still fails: tokens_from_labelled_version" in capsys.readouterr().out
    # the one-line command from the report works as printed
    import shlex
    argv = shlex.split(cex["repro"])[1:]
    assert main(argv) == 1
    capsys.readouterr()
    # without its perturbations the run no longer fails that way: repro says so and exits 0
    spec, sig = load_repro(cex["files"]["repro"])
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(open(cex["files"]["repro"]).read().replace(
        "perturbations = [" + ", ".join(json.dumps(p) for p in cex["perturbations"]) + "]", "perturbations = []"))
    assert main(["repro", str(fixed)]) == 0
    assert "no longer fails" in capsys.readouterr().out


def test_explore_cli_exit_codes(tmp_path, capsys):
    (tmp_path / "cex-7.toml").write_text("# left by an earlier search\n")
    (tmp_path / "notes.toml").write_text("# the user's\n")
    assert main(["explore", "--scenario", str(SCEN / "default.toml"), "--budget", "6", "--workers", "1",
                 "--no-progress", "-o", str(tmp_path)]) == 0
    assert "0 distinct failure(s)" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.toml"]  # stale counterexamples are gone
    assert main(["explore", "--scenario", str(tmp_path / "missing.toml"), "--budget", "2"]) == 2
    assert "missing.toml" in capsys.readouterr().err
    assert main(["explore", "--budget", "2"]) == 2
    assert main(["repro", "--scenario", str(SCEN / "default.toml"), "--perturb", "nudge(step=1)"]) == 2
    assert "unknown kind 'nudge'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "scenario"\npath = "x.toml"\nseed = "one"\nperturbations = []\n')
    assert main(["repro", str(bad)]) == 2
    assert "field 'seed'" in capsys.readouterr().err


def test_explore_of_a_recording_perturbs_its_exact_replay(tmp_path, capsys):
    # The async standalone recording: engine records only. Its exact replay is the base run; a search over
    # its input races, preemptions and client aborts must not invent violations the engine cannot have.
    base = Base("trace", str(REPO / "traces" / "vllm-async-standalone.msgpack"))
    result = explore(base, budget=40, seed=0, workers=1, shrink_failures=False)
    assert result.runs == 40 and not result.errors
    assert result.findings == [], [str(f.signature) for f in result.findings]
    assert any(RunPlan(base, 0).spec(i).perturbations for i in range(1, 5))


@pytest.mark.vllm
def test_explore_runs_on_vllms_own_scheduler(tmp_path):
    pytest.importorskip("vllm")
    base = Base("scenario", str(SCEN / "keep-bad-bindings.toml"), scheduler="vllm")
    result = explore(base, budget=3, seed=0, workers=1, shrink_failures=False)
    assert {f.signature.invariant for f in result.findings} >= {"tokens_from_labelled_version", "no_stale_kv"}


@pytest.mark.vllm
def test_perturbed_runs_are_identical_on_both_scheduler_backends():
    # The vLLM backend makes every scheduling decision with vLLM's own scheduler; on perturbed runs (aborts,
    # retries, refused resets, input races, async scheduling, KV pressure) it must agree record for record.
    pytest.importorskip("vllm")
    import dataclasses

    from tracesim.format.digest import records_digest
    from tracesim.sim.run import RunInputs, simulate
    from tracesim.sim.scenario import load_scenario

    s = load_scenario(SCEN / "default.toml")
    s = s.replace(workload=dataclasses.replace(s.workload, num_prompts=10))
    lists = ["abort(at=sched:40,req=g5-s1,scope=group)", "retry(at=sched:30,req=g4-s0); reset_cache(at=upd:50)",
             "defer_input(kind=add,key=g6-s1,actions=2); set(async_scheduling=true); step_time(step=20,factor=3,count=5)",
             "swap_inputs(kind=pause,key=1); extra_update(at=sched:60); set(num_gpu_blocks=60)"]
    for text in lists:
        digests = set()
        for backend in ("native", "vllm"):
            sb = s.replace(engine=dataclasses.replace(s.engine, scheduler_backend=backend))
            digests.add(records_digest(simulate(RunInputs(sb, 1, P.parse_list(text))).records))
        assert len(digests) == 1, text


def test_explore_of_a_correct_real_recording_with_its_loop_stays_clean():
    # vllm-abort: a correct loop recorded on real vLLM, replayed with its RL loop. Slower steps, late deliveries
    # and rewards, input races and resets must not invent violations: the replayed loop writes weights only
    # after the replayed pause drained, as the recorded one did.
    base = Base("trace", str(REPO / "traces" / "vllm-abort.msgpack"))
    result = explore(base, budget=64, seed=0, workers=2, shrink_failures=False)
    assert result.runs == 64 and not result.errors
    assert result.findings == [], [str(f.signature) for f in result.findings]


def test_runs_free_their_world():
    """A run's SimPy world is a reference cycle: run_one must free it, or a long search grows by MBs per run
    (a worker was once killed at 11.9 GB). Counted in objects the GC tracks, not in time."""
    import gc

    specs = [RunPlan(DEFAULT, 0).spec(i) for i in range(1, 7)]
    run_one(specs[0])  # the base loaded and cached, imports done
    gc.collect()
    before = len(gc.get_objects())
    for spec in specs[1:]:
        run_one(spec)
    grown = len(gc.get_objects()) - before
    # one run of default.toml leaves ~20,000 tracked objects behind when its world is kept
    assert grown < 2_000, f"{grown} objects kept after 5 runs"
