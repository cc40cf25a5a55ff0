"""Every simulated and replayed trace keeps the same records, byte for byte, as before the typed layer (issue
15): scenarios (in code and in scenarios/), perturbed runs and the bundled recordings, on both scheduler
backends, replayed exact and fitted. ``tests/golden/records.json`` holds digests taken before the change;
headers are left out (their engine configuration was unified)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden.records_digests import digests

GOLDEN = Path(__file__).parent / "golden" / "records.json"


def test_records_are_byte_identical_to_the_values_taken_before_the_change():
    pytest.importorskip("vllm")
    expected = json.loads(GOLDEN.read_text())
    got = digests()
    assert sorted(got) == sorted(expected)
    changed = sorted(k for k in expected if got[k] != expected[k])
    assert not changed, f"records changed in {len(changed)} runs: {changed}"
