"""The bundled traces in traces/ give the expected check outcome (tests/expected_checks.json)."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import REPO, TRACES

from tracesim.check import INVARIANTS, Policy, check_trace, load_policy
from tracesim.format import read_trace

EXPECTED_FILE = REPO / "tests" / "expected_checks.json"
EXPECTED = {k: v for k, v in json.loads(EXPECTED_FILE.read_text()).items() if not k.startswith("_")}
BUNDLED = sorted(p.name for p in TRACES.glob("*.msgpack"))


def _outcomes(entry) -> list:
    return entry if isinstance(entry, list) else [entry]


def test_expected_table_names_only_known_invariants_and_existing_traces():
    for name, entry in EXPECTED.items():
        assert name in BUNDLED, f"{EXPECTED_FILE.name} has an entry for {name}, which is not in traces/"
        for outcome in _outcomes(entry):
            assert set(outcome["violated"]) | set(outcome["not_checkable"]) <= set(INVARIANTS), name
            assert outcome.get("why"), f"{name}: say why the expected outcome is right"


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_trace_has_its_expected_check_outcome(name):
    assert name in EXPECTED, (f"traces/{name} has no expected check outcome: add an entry to "
                              f"{EXPECTED_FILE.relative_to(REPO)}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bundled trace must read cleanly
        trace = read_trace(TRACES / name)
    for outcome in _outcomes(EXPECTED[name]):
        policy = load_policy(REPO / "policies" / outcome["policy"]) if outcome.get("policy") else Policy()
        report = check_trace(trace, policy)
        where = f"{name} under {outcome.get('policy', 'the strict policy')}"
        details = "\n".join(f"  {v.invariant}: {v.req_id} step {v.step}: {v.message}"
                            for v in report.violations[:20])
        assert sorted(report.violated()) == sorted(outcome["violated"]), f"{where}:\n{details}"
        assert sorted(report.not_checkable) == sorted(outcome["not_checkable"]), f"{where}: {report.not_checkable}"
