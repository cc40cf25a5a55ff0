"""NamedTuple records built and read on the simulator's hot paths, several times per request per step.

* ``new_tuple(cls, values)``: an instance of the NamedTuple ``cls`` from all its field values, without the
  NamedTuple's Python-level ``__new__``.
* ``item(t, i)``: field ``i`` of a NamedTuple instance (compiled code indexes and unpacks a tuple
  *subclass* through the generic protocol, several times slower than a plain tuple).

In plain Python these are ``tuple.__new__`` and ``operator.getitem``. Modules compiled by setup.py
``cimport`` this module as well (``tuplenew.pxd``) and get inline C versions: allocate the instance and fill
it in place; read the item straight from the tuple. This module is never compiled itself: the .pxd holds
the compiled versions, this file the plain ones, and both give the same results.
"""

from operator import getitem as item

new_tuple = tuple.__new__

__all__ = ["item", "new_tuple"]
