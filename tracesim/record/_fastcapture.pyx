# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled reductions of one ``schedule()`` and one ``update_from_output`` step (``capture.upd_columns`` and
``reduce.sched_columns`` are the references).

One pass over vLLM's per-request objects each, reading each object once: the pure-Python references make
three or four C-level passes (ids, token lists, finish reasons; ids, counts, the compare with the previous
batch, the placeholder lookups), each touching all of the step's objects again. Same values, same order.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.ref cimport PyObject


def upd_columns(result, dict scheduled):
    """(weight-version label, output ids or None when they are the batch in order, tokens sampled per
    output, finish reason per output as str or None when none finished) of ``result`` ({client: outputs})."""
    cdef object label = None
    cdef list outputs
    if not result:
        outputs = []
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
    cdef object o, rid, reason
    for i in range(n):
        o = outputs[i]
        rid = o.request_id
        if same:
            PyDict_Next(scheduled, &pos, &key, &value)
            if <PyObject *> rid is not key and rid != <object> key:
                same = False
        sampled[i] = len(o.new_token_ids)
        reason = o.finish_reason
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
