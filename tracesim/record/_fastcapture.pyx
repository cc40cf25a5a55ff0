# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled reductions of one ``schedule()`` and one ``update_from_output`` step (``capture.upd_columns`` and
``reduce.sched_columns`` are the references).

One pass over vLLM's per-request objects each, reading each object once: the pure-Python references make
three or four C-level passes (ids, token lists, finish reasons; ids, counts, the compare with the previous
batch, the placeholder lookups), each touching all of the step's objects again. Same values, same order.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.ref cimport PyObject


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member


# vLLM's EngineCoreOutput is a msgspec Struct: its fields are slots, read by a member descriptor at a fixed offset
# of the object. Reading them at that offset skips the attribute lookup (~10 ns a field, 3 fields, 256 outputs
# a step). Used only for a type whose three fields are plain object slots and whose attribute access is
# Python's own; anything else (another vLLM, a subclass, an unset slot) reads by attribute.
cdef object _slot_type = None  # the type the offsets below are for (None: none found yet, or not usable)
cdef Py_ssize_t _off_rid = -1, _off_tokens = -1, _off_reason = -1
_T_OBJECT, _T_OBJECT_EX = 6, 16


cdef Py_ssize_t _slot_offset(type cls, str name):
    descr = getattr(cls, name, None)
    if type(descr).__name__ != "member_descriptor" or descr.__objclass__ is not cls:
        return -1
    cdef PyMemberDef *member = (<PyMemberDescrObject *> descr).d_member
    if member.type != _T_OBJECT and member.type != _T_OBJECT_EX:
        return -1
    return member.offset


cdef bint _use_slots(type cls):
    """Whether the outputs of type ``cls`` can be read at their slots' offsets (finds them on first sight)."""
    global _slot_type, _off_rid, _off_tokens, _off_reason
    if cls is _slot_type:
        return True
    if cls.__getattribute__ is not object.__getattribute__:
        return False
    rid, tokens, reason = (_slot_offset(cls, "request_id"), _slot_offset(cls, "new_token_ids"),
                           _slot_offset(cls, "finish_reason"))
    if rid < 0 or tokens < 0 or reason < 0:
        return False
    _slot_type, _off_rid, _off_tokens, _off_reason = cls, rid, tokens, reason
    return True


cdef inline PyObject *_slot(object o, Py_ssize_t offset):
    return (<PyObject **> ((<char *> <PyObject *> o) + offset))[0]


def upd_columns(result, dict scheduled):
    """(weight-version label, output ids or None when they are the batch in order, tokens sampled per
    output, finish reason per output as str or None when none finished) of ``result`` ({client: outputs})."""
    cdef object label = None
    cdef list outputs
    if not result:
        outputs = []
    elif len(result) == 1:  # one client (the usual case): its list as it is, no copy
        for batch in result.values():
            label = getattr(batch, "weight_version", None)
            outputs = batch.outputs if type(batch.outputs) is list else list(batch.outputs)
    else:
        outputs = []
        for batch in result.values():
            if label is None:
                label = getattr(batch, "weight_version", None)
            outputs.extend(batch.outputs)
    if label is not None and not isinstance(label, (int, str)):
        label = str(label)
    cdef Py_ssize_t n = len(outputs), i, pos = 0
    cdef PyObject *key
    cdef PyObject *value
    cdef bint same = n == len(scheduled)
    cdef list sampled = [0] * n
    cdef object reasons = None
    cdef object o, rid, reason, tokens
    cdef PyObject *p_rid
    cdef PyObject *p_tokens
    cdef PyObject *p_reason
    for i in range(n):
        o = outputs[i]
        p_rid = p_tokens = p_reason = NULL
        if _use_slots(type(o)):
            p_rid, p_tokens, p_reason = _slot(o, _off_rid), _slot(o, _off_tokens), _slot(o, _off_reason)
        if p_rid is NULL or p_tokens is NULL or p_reason is NULL:  # by attribute (raises as the reference)
            rid, tokens, reason = o.request_id, o.new_token_ids, o.finish_reason
        else:
            rid, tokens, reason = <object> p_rid, <object> p_tokens, <object> p_reason
        if same:
            PyDict_Next(scheduled, &pos, &key, &value)
            if <PyObject *> rid is not key and rid != <object> key:
                same = False
        sampled[i] = len(tokens)
        if reason is not None:
            if reasons is None:
                reasons = [None] * n
            reasons[i] = str(reason)
    return label, (None if same else [o.request_id for o in outputs]), sampled, reasons


def sched_columns(dict scheduled, prev_ids, dict requests):
    """(the batch's ids, tokens scheduled per request, output placeholders per request or None, whether the ids
    are ``prev_ids``, element for element) of a ``SchedulerOutput.num_scheduled_tokens``; ``requests``: the
    scheduler's requests by id to read placeholders from (AsyncScheduler), or None. ``reduce.sched_columns`` is
    the reference: one pass here instead of its four (ids, counts, compare, placeholder lookups)."""
    cdef Py_ssize_t n = len(scheduled), i = 0, pos = 0
    cdef PyObject *key
    cdef PyObject *value
    cdef PyObject *request
    cdef list ids = [None] * n
    cdef list counts = [None] * n
    cdef list holds = None if requests is None else [0] * n
    cdef list prev = prev_ids if type(prev_ids) is list else None
    cdef bint same = prev is not None and len(prev) == n
    while PyDict_Next(scheduled, &pos, &key, &value):
        ids[i] = <object> key
        counts[i] = <object> value
        if same:
            if <PyObject *> prev[i] is not key and prev[i] != <object> key:
                same = False
        if holds is not None:
            request = PyDict_GetItem(requests, <object> key)
            # a scheduled request already gone: 0 for it (as the reference)
            holds[i] = 0 if request is NULL else getattr(<object> request, "num_output_placeholders", 0)
        i += 1
    return ids, counts, holds, same
