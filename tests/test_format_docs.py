"""docs/trace-format.md describes every record and field that tracesim/format/records.py defines."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def test_generated_record_tables_match_the_records():
    spec = importlib.util.spec_from_file_location("gen", REPO / "scripts" / "gen_format_tables.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    doc = (REPO / "docs" / "trace-format.md").read_text()
    assert gen.generate() in doc, "docs/trace-format.md is stale: run python scripts/gen_format_tables.py"
