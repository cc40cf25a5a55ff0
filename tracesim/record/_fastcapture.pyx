# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled reduction of one ``update_from_output`` result (``reduce.upd_columns`` is the reference).

One pass over vLLM's per-request outputs, reading each output object once: the pure-Python reference makes
three ``map`` passes (ids, token lists, finish reasons), each touching all of the step's objects again, and
builds an id list only to compare it with the batch. Same values, same order, same exceptions' causes.
"""

from cpython.dict cimport PyDict_Next
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
