"""Hypothesis strategies for every record type, derived from the field annotations the codec checks."""

from __future__ import annotations

from hypothesis import strategies as st

from tracesim.format.codec import HEADER_SPEC, SPECS
from tracesim.format.engine_settings import RENAMED, SETTINGS

_INT = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_TEXT = st.text(max_size=12)
# Map keys: anything but the engine settings' own names (typed when read: a value of another type is bad input,
# which test_format_engine_settings covers). Hypothesis also draws string literals found in the code under test,
# so without the filter it finds "block_size" sooner or later.
_KEY = _TEXT.filter(lambda k: k not in SETTINGS and k not in RENAMED)
_SCALARS = {
    int: _INT, str: _TEXT, bool: st.booleans(), float: st.floats(allow_nan=False),
    dict: st.dictionaries(_KEY, st.one_of(_INT, _TEXT, st.booleans()), max_size=4),
}


def _field(types: tuple, nested, element: tuple = (str,), bounds=None):
    if nested is not None:
        inner = st.lists(records_of(nested), max_size=4).map(tuple)
    elif tuple in types:  # a tuple of scalars of the element type the codec checks (codec.ELEMENT_TYPES)
        scalar = st.integers(*bounds) if bounds else _SCALARS[float if float in element else element[0]]
        inner = st.lists(scalar, max_size=4).map(tuple)
    else:
        inner = st.one_of([_SCALARS[t] for t in types if t in _SCALARS and not (t is int and float in types)])
    return st.one_of(st.none(), inner) if type(None) in types else inner


def records_of(spec):
    elements = {name: (named, bounds) for _i, name, _allowed, named, bounds in spec.elements}
    return st.tuples(*[_field(types, nested, *elements.get(name, ((str,), None)))
                       for _i, name, types, nested in spec.checks]).map(spec.cls._make)


EVENT_RECORDS = st.one_of([records_of(spec) for spec in SPECS.values()])
HEADERS = records_of(HEADER_SPEC).map(lambda h: h._replace(format_major=1))
