"""The hot records' builders (tracesim/sim/records_hot.py): each takes its record's fields by name, in the
record's order, and builds exactly what the NamedTuple's own constructor builds (in whichever build runs)."""

from __future__ import annotations

import ast
import os

import pytest

from tracesim.format import records
from tracesim.sim import records_hot

SOURCE = os.path.join(os.path.dirname(records_hot.__file__), "records_hot.py")


def _signatures() -> dict:
    """builder name -> parameter names, read from records_hot.py (a compiled builder hides its signature)."""
    tree = ast.parse(open(SOURCE).read())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef)}


@pytest.mark.parametrize("cls", list(records_hot.BUILDERS), ids=lambda c: c.__name__)
def test_builder_takes_the_record_fields_in_order_and_builds_the_record(cls):
    build = records_hot.BUILDERS[cls]
    assert _signatures()[build.__name__] == list(cls._fields)
    values = {name: f"<{name}>" for name in cls._fields}  # distinct values: a swapped pair shows
    made = build(**values)
    assert type(made) is cls
    assert made == cls(**values)
    assert made._asdict() == values


def test_every_builder_is_listed():
    assert set(_signatures()) == {b.__name__ for b in records_hot.BUILDERS.values()}
    assert all(getattr(records, c.__name__) is c for c in records_hot.BUILDERS)
