"""Conversion between records and msgpack frames.

A frame is a msgpack array ``[kind, fields]`` or ``[kind, fields, proc]``: ``kind`` is a short string naming
the record type (``Header.KIND``, ``StepScheduled.KIND``, ...), ``fields`` the record's fields in declaration
order, ``proc`` the index of the writing process in the header (omitted when 0). Records are ``NamedTuple``s,
which msgpack packs as arrays natively, so encoding costs no more than packing the same tuples by hand.

Two decoders give the same records, checked against the same field annotations (records.py):

* ``FrameDecoder`` (bulk): msgspec decodes many frames at once straight into the record types, validating
  every field in C. It is what ``read_trace`` uses.
* ``build`` / ``decode_frame`` (reference): one decoded frame at a time, in Python. It applies the evolution
  rules msgspec does not (fields appended by a newer minor, kinds it does not know) and words the errors
  (``sched.reqs[3].req_id: expected str, got int``); the bulk path hands it any frames it cannot take.
"""

from __future__ import annotations

import struct
import types as pytypes
import typing
from typing import Annotated, NamedTuple, Union

import msgspec

from tracesim.format.engine_settings import EngineSettings
from tracesim.format.errors import FieldError, short_repr
from tracesim.format.records import EVENT_KINDS, Header

# Bounds applied while unpacking: a hostile length prefix is refused before memory is allocated for it.
MAX_STR_BYTES = 1 << 20
MAX_ARRAY_LEN = 1 << 20
MAX_MAP_LEN = 1 << 16
MAX_FRAME_BYTES = 64 << 20

_SCALARS = {int: (int,), str: (str,), bool: (bool,), float: (float, int), dict: (dict,), type(None): (type(None),),
            EngineSettings: (dict,)}  # a map on disk; build_header reads it into an EngineSettings


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
    float_fields: tuple = ()  # indices of the float fields (an int there is taken as a float, as msgspec does)


def _is_record(t) -> bool:
    return isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields")


def _union_parts(hint) -> tuple:
    if typing.get_origin(hint) in (Union, pytypes.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _scalar(hint) -> tuple:
    """(types isinstance accepts, (min, max) or None) of a scalar annotation (``Int32`` carries bounds)."""
    if typing.get_origin(hint) is Annotated:
        base, *metas = typing.get_args(hint)
        bounds = next(((m.ge, m.le) for m in metas if isinstance(m, msgspec.Meta)), None)
        return _SCALARS[base], bounds
    return _SCALARS[hint], None


def _spec(cls: type) -> _Spec:
    """What ``build`` checks for ``cls``, derived from its annotations: every field's types, nested entries
    (``tuple[Record, ...]``) and the element type of every tuple of scalars (``tuple[str, ...]``)."""
    names = cls._fields
    hints = typing.get_type_hints(cls, include_extras=True)
    required = len(names) - len(cls._field_defaults)
    defaults = tuple(cls._field_defaults[n] for n in names[required:])
    checks, elements = [], []
    for i, name in enumerate(names):
        allowed, sub = (), None
        for part in _union_parts(hints[name]):
            if typing.get_origin(part) is tuple:
                allowed += (tuple,)
                element = typing.get_args(part)[0]
                if _is_record(element):
                    sub = _spec(element)
                else:
                    named, bounds = _scalar(element)
                    elements.append((i, name, frozenset(named), named, bounds))
            else:
                allowed += _scalar(part)[0]
        checks.append((i, name, allowed, sub))
    float_fields = tuple(i for i, _n, allowed, _s in checks if float in allowed)
    return _Spec(cls, required, defaults, tuple(checks), tuple((i, n, sub) for i, n, _t, sub in checks if sub),
                 {}, tuple(elements), float_fields)


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
        elements, int_floats = spec.good_signatures[signature]
    except KeyError:
        _check_fields(spec, values, path)
        elements = tuple(e for e in spec.elements if signature[e[0]] is tuple)
        int_floats = tuple(i for i in spec.float_fields if signature[i] is int)
        if len(spec.good_signatures) < _MAX_SIGNATURES:
            spec.good_signatures[signature] = elements, int_floats
    if int_floats:
        values = tuple(float(v) if i in int_floats else v for i, v in enumerate(values))
    if elements:
        values = _check_elements(elements, values, path)
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
        if type(values[i]) not in types:  # exact types, as msgspec checks them: a bool is not an int
            raise FieldError(f"{path}.{name}", f"expected {_type_names(types)}, got {type(values[i]).__name__}")


def _check_elements(elements: tuple, values: tuple, path: str) -> tuple:
    """``values`` with each tuple of scalars checked (C-speed scans); ints in a tuple of floats become floats."""
    for i, name, allowed, named, bounds in elements:
        value = values[i]
        if value:
            types = set(map(type, value))
            if not allowed.issuperset(types):
                j = next(j for j, v in enumerate(value) if type(v) not in allowed)
                raise FieldError(f"{path}.{name}[{j}]", f"expected {_type_names(named)}, got "
                                 f"{type(value[j]).__name__}")
            if bounds is not None and (min(value) < bounds[0] or max(value) > bounds[1]):
                j = next(j for j, v in enumerate(value) if not bounds[0] <= v <= bounds[1])
                raise FieldError(f"{path}.{name}[{j}]", f"expected an int32, got {short_repr(value[j])}")
            if int in types and float in allowed:
                values = values[:i] + (tuple(map(float, value)),) + values[i + 1:]
    return values


def build_header(fields, path: str = "header") -> Header:
    """``Header`` built from a decoded array (see ``build``), its engine configuration read into an
    ``EngineSettings`` (old key names mapped to the current ones, known keys' types checked); raise FieldError."""
    header = build(HEADER_SPEC, fields, path)
    return header._replace(engine_config=EngineSettings(header.engine_config, f"{path}.engine_config"))


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


# --- bulk decoding (msgspec) ----------------------------------------------------------------------------

# Fields naming requests and groups. A trace names each of its requests in millions of places (every step entry
# and delivery), and decoding makes each occurrence its own str: 11.5 M of them, ~0.7 GB, on a 118k-step trace
# of 190k requests. The bulk reader (compiled) keeps one str per distinct id instead (``id_plans``). Digests
# and other strings that rarely recur are left alone.
ID_FIELDS = frozenset({"req_id", "group_id", "from_req_id", "parent_id"})
ID_TUPLE_FIELDS = frozenset({"req_ids", "child_ids", "preempted", "finished"})
ID_STR, ID_TUPLE, ID_ENTRIES = 0, 1, 2  # what a plan step holds: an id, a tuple of ids, entries with ids


def _id_plan(spec: _Spec) -> tuple:
    plan = [(i, ID_STR, ()) for i, name, allowed, _sub in spec.checks if name in ID_FIELDS and str in allowed]
    plan += [(i, ID_TUPLE, ()) for i, name, named, _t, _b in spec.elements
             if name in ID_TUPLE_FIELDS and str in named]
    for i, _name, sub in spec.nested:
        entry = tuple(j for j, op, _e in _id_plan(sub) if op == ID_STR)
        if entry:
            plan.append((i, ID_ENTRIES, entry))
    return tuple(sorted(plan))


def id_plans() -> dict:
    """``{record type: ((field index, ID_STR | ID_TUPLE | ID_ENTRIES, entry field indexes), ...)}``: where each
    kind holds request and group ids (``ID_ENTRIES``: a tuple of entries, ids at the given entry fields)."""
    plans = {spec.cls: _id_plan(spec) for spec in SPECS.values()}
    return {cls: plan for cls, plan in plans.items() if plan}


_PROC = Annotated[int, msgspec.Meta(ge=0)]
_ARRAY32 = struct.Struct(">BI")  # msgpack array32 header: 0xdd, element count


def _frame_type(cls: type) -> type:
    # One array-like Struct per kind, tagged by the kind string in position 0: exactly the frame's layout
    # ``[kind, fields(, proc)]``, so one Union of them decodes any frame and builds its record in C.
    return msgspec.defstruct(f"{cls.__name__}Frame", [("record", cls), ("proc", _PROC, 0)], array_like=True,
                             tag=cls.KIND, tag_field="kind", gc=False)


FRAME_TYPES: tuple = tuple(_frame_type(cls) for cls in EVENT_KINDS.values())


class FrameDecoder:
    """Decodes ``count`` complete event frames lying back to back in a buffer, in one call into C.

    Returns ``(records, procs)``, or ``None`` when any frame is outside what msgspec takes (a kind or a field
    appended by a newer minor version, a field of the wrong type): the caller then decodes those frames with
    the reference decoder, which applies the evolution rules or words the error.
    """

    def __init__(self):
        self._decode = msgspec.msgpack.Decoder(list[Union[FRAME_TYPES]]).decode

    def decode(self, body: bytes, count: int):
        try:
            # The frames are made one msgpack array by an array32 header in front (they are complete: the
            # reader found each one's end with a bounded unpacker first).
            frames = self._decode(_ARRAY32.pack(0xDD, count) + body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        return [f.record for f in frames], [f.proc for f in frames]
