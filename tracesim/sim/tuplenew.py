"""``new_tuple(cls, values)``: a NamedTuple instance built from all its field values, without the Python-level
``__new__`` of the NamedTuple (the simulator builds several records per request per step).

In plain Python this is ``tuple.__new__``. Modules compiled by setup.py ``cimport`` this module as well
(``tuplenew.pxd``) and get an inline C version that allocates the instance and fills it in place, about
twice as fast. This module is never compiled itself: the .pxd holds the compiled version, this file the
plain one, and both give an equal tuple of the same class.
"""

new_tuple = tuple.__new__
