"""Conversion between records and msgpack frames.

A frame is a msgpack array ``[kind, fields]`` or ``[kind, fields, proc]``: ``kind`` is a short string naming
the record type (``Header.KIND``, ``StepScheduled.KIND``, ...), ``fields`` the record's fields in declaration
order, ``proc`` the index of the writing process in the header (omitted when 0). Records are ``NamedTuple``s,
which msgpack packs as arrays natively, so encoding costs no more than packing the same tuples by hand.
"""

from __future__ import annotations

from typing import NamedTuple

from tracesim.format.errors import FieldError, short_repr
from tracesim.format.records import (
    EVENT_KINDS, NESTED, Aborted, Header, OutReq, RequestAdded, SampleDropped, StepScheduled,
)

# Bounds applied while unpacking: a hostile length prefix is refused before memory is allocated for it.
MAX_STR_BYTES = 1 << 20
MAX_ARRAY_LEN = 1 << 20
MAX_MAP_LEN = 1 << 16
MAX_FRAME_BYTES = 64 << 20

_TYPES = {
    "int": (int,), "str": (str,), "bool": (bool,), "float": (float, int), "tuple": (tuple,), "dict": (dict,),
}


# Element type of every tuple field that holds scalars rather than nested entries (records.py says which in
# each field's comment). The elements are checked on every read: a record's signature (its fields' types)
# says nothing about what its tuples hold. A new tuple field of scalars must be listed here (checked at import).
ELEMENT_TYPES: dict = {
    RequestAdded: {"block_keys": "int"},
    StepScheduled: {"preempted": "str", "finished": "str"},
    OutReq: {"token_ids": "int32", "logprobs": "float"},  # token ids are digested as int32 (digest.py)
    Aborted: {"req_ids": "str"},
    SampleDropped: {"req_ids": "str"},
}

# Header.engine_config entries that the checkers and the simulator read, and the types they accept.
ENGINE_CONFIG_TYPES: dict = {"weight_version": (int, str, type(None))}
_INT32 = (-(1 << 31), (1 << 31) - 1)


class _Spec(NamedTuple):
    cls: type
    required: int  # number of leading fields without a default
    defaults: tuple  # default of every field from `required` on
    checks: tuple  # (index, name, allowed types, nested entry spec or None)
    nested: tuple  # (index, name, nested entry spec) of the fields holding entries
    # tuple of exact value types already seen to pass every check -> the ``elements`` entries whose value
    # is a tuple in that signature (those are checked on every read; usually none)
    good_signatures: dict
    # (index, name, exact element types allowed, the types as named, (min, max) or None) of every tuple field
    # of scalars
    elements: tuple = ()


def _field_types(annotation) -> tuple:
    annotation = getattr(annotation, "__forward_arg__", annotation)  # NamedTuple keeps postponed annotations
    types: tuple = ()
    for part in annotation.split("|"):
        part = part.strip()
        if part == "None":
            types += (type(None),)
        else:
            types += _TYPES[part]
    return types


def _spec(cls: type) -> _Spec:
    names = cls._fields
    required = len(names) - len(cls._field_defaults)
    defaults = tuple(cls._field_defaults[n] for n in names[required:])
    nested = NESTED.get(cls, {})
    checks = tuple(
        (i, name, _field_types(cls.__annotations__[name]), _spec(nested[name]) if name in nested else None)
        for i, name in enumerate(names)
    )
    declared = ELEMENT_TYPES.get(cls, {})
    elements = []
    for i, name, types, sub in checks:
        if tuple in types and sub is None:
            if name not in declared:
                raise TypeError(f"{cls.__name__}.{name} is a tuple of scalars: declare its element type in "
                                "codec.ELEMENT_TYPES")
            bounds = _INT32 if declared[name] == "int32" else None
            allowed = _field_types("int" if bounds else declared[name])
            elements.append((i, name, frozenset(allowed + ((bool,) if int in allowed else ())), allowed, bounds))
    return _Spec(cls, required, defaults, checks, tuple((i, n, sub) for i, n, _t, sub in checks if sub), {},
                 tuple(elements))


SPECS: dict = {kind: _spec(cls) for kind, cls in EVENT_KINDS.items()}
HEADER_SPEC = _spec(Header)


_MAX_SIGNATURES = 512  # per record type; optional fields make a few combinations, hostile input many
_new_tuple = tuple.__new__


def build(spec: _Spec, values, path: str):
    """Return ``spec.cls`` built from a decoded array, applying the evolution rules; raise FieldError."""
    if type(values) is not tuple:
        raise FieldError(path, f"expected an array of fields, got {type(values).__name__}")
    n, names = len(values), spec.cls._fields
    if n != len(names):
        if n < spec.required:
            raise FieldError(f"{path}.{names[n]}", f"missing required field (record has {n} of {len(names)} fields)")
        if n > len(names):
            values = values[: len(names)]  # fields appended by a newer minor version
        else:
            values = values + spec.defaults[n - spec.required:]
    # Fast path: a record whose exact field types were seen before needs no per-field checks, only those of
    # the elements of its tuples of scalars (none when they are null, as token_ids and logprobs mostly are).
    signature = tuple(map(type, values))
    try:
        elements = spec.good_signatures[signature]
    except KeyError:
        _check_fields(spec, values, path)
        elements = tuple(e for e in spec.elements if signature[e[0]] is tuple)
        if len(spec.good_signatures) < _MAX_SIGNATURES:
            spec.good_signatures[signature] = elements
    if elements:
        _check_elements(elements, values, path)
    for i, name, nested in spec.nested:
        value = values[i]
        if value:
            if type(value) is not tuple:
                raise FieldError(f"{path}.{name}", f"expected an array of entries, got {type(value).__name__}")
            entries = tuple([build(nested, entry, f"{path}.{name}[{j}]") for j, entry in enumerate(value)])
            values = values[:i] + (entries,) + values[i + 1:]
    return _new_tuple(spec.cls, values)


def _check_fields(spec: _Spec, values: tuple, path: str) -> None:
    for i, name, types, _nested in spec.checks:
        if not isinstance(values[i], types):
            raise FieldError(f"{path}.{name}", f"expected {_type_names(types)}, got {type(values[i]).__name__}")


def _check_elements(elements: tuple, values: tuple, path: str) -> None:
    for i, name, allowed, named, bounds in elements:  # C-speed scans of each tuple
        value = values[i]
        if value:
            if not allowed.issuperset(map(type, value)):
                j = next(j for j, v in enumerate(value) if type(v) not in allowed)
                raise FieldError(f"{path}.{name}[{j}]", f"expected {_type_names(named)}, got "
                                 f"{type(value[j]).__name__}")
            if bounds is not None and (min(value) < bounds[0] or max(value) > bounds[1]):
                j = next(j for j, v in enumerate(value) if not bounds[0] <= v <= bounds[1])
                raise FieldError(f"{path}.{name}[{j}]", f"expected an int32, got {short_repr(value[j])}")


def build_header(fields, path: str = "header") -> Header:
    """``Header`` built from a decoded array (see ``build``), with the engine_config entries that readers of
    the trace use checked too (``ENGINE_CONFIG_TYPES``); raise FieldError."""
    header = build(HEADER_SPEC, fields, path)
    config = header.engine_config
    for key, types in ENGINE_CONFIG_TYPES.items():
        if key in config and not isinstance(config[key], types):
            raise FieldError(f"{path}.engine_config.{key}", f"expected {_type_names(types)}, got "
                             f"{type(config[key]).__name__}")
    return header


def _type_names(types: tuple) -> str:
    return " or ".join(sorted({"null" if t is type(None) else t.__name__ for t in types}))


def decode_frame(frame):
    """Return ``(record, proc)`` for an event frame, ``None`` for an unknown kind; raise FieldError."""
    if type(frame) is not tuple or not 2 <= len(frame) <= 3:
        raise FieldError("frame", "expected an array [kind, fields] or [kind, fields, proc]")
    kind = frame[0]
    if type(kind) is not str:  # checked first: a map (dict) cannot even be looked up
        raise FieldError("frame.kind", f"expected a string, got {type(kind).__name__}")
    spec = SPECS.get(kind)
    if spec is None:
        if kind == Header.KIND:
            raise FieldError("frame", "a second header in the middle of the stream")
        return None  # a kind added by a newer minor version: skipped
    proc = frame[2] if len(frame) == 3 else 0
    if type(proc) is not int or proc < 0:
        raise FieldError(f"{kind}.proc", f"expected a non-negative int, got {short_repr(proc)}")
    return build(spec, frame[1], kind), proc


def encode_frame(record, proc: int = 0) -> tuple:
    return (record.KIND, record) if proc == 0 else (record.KIND, record, proc)
