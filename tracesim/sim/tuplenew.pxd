# The compiled versions of tuplenew.new_tuple and tuplenew.item, inlined into the modules that cimport
# them (see tuplenew.py).
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE, PyTuple_SET_ITEM

cdef extern from "Python.h":
    object PyType_GenericAlloc(type cls, Py_ssize_t nitems)
    bint PyType_IsSubtype(type a, type b)


cdef inline object new_tuple(type cls, tuple values):
    """What tuple.__new__(cls, values) returns, for a tuple subclass ``cls``: allocated at its final size and
    filled in place, where tuple.__new__ parses its arguments and copies through a temporary tuple."""
    cdef Py_ssize_t i, n
    cdef object item
    if not PyType_IsSubtype(cls, tuple):
        return tuple.__new__(cls, values)  # raises the TypeError tuple.__new__ gives
    n = PyTuple_GET_SIZE(values)
    out = PyType_GenericAlloc(cls, n)
    for i in range(n):
        item = <object>PyTuple_GET_ITEM(values, i)
        Py_INCREF(item)  # PyTuple_SET_ITEM steals a reference
        PyTuple_SET_ITEM(out, i, item)
    return out


cdef inline object item(object t, Py_ssize_t i):
    """t[i] for a tuple (or tuple subclass) ``t``, read in place; anything else takes the generic path."""
    if PyTuple_Check(t) and 0 <= i < PyTuple_GET_SIZE(t):
        return <object>PyTuple_GET_ITEM(t, i)
    return t[i]
