"""Pause Python's cyclic garbage collector around bulk work that allocates millions of acyclic objects.

Reading a trace, indexing it for the checkers and running the simulator all build millions of tuples and
keep them: with the collector on, its collections rescan the growing live set and free nothing (a third to
a half of the run time). The previous state is restored afterwards.
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def cyclic_gc_paused():
    """Run the block with the cyclic collector off; usable as a decorator too."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Re-enabled as is, the collector would at once scan every object the block allocated (the young
            # generation was never collected): park them in the oldest generation instead, which is scanned
            # at the next full collection, on the collector's usual schedule.
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.enable()
                gc.unfreeze()
            else:  # someone else froze objects: leave their freeze alone
                gc.enable()


@contextlib.contextmanager
def young_garbage_collected():
    """Run the block with the cyclic collector off, then collect only what the block allocated.

    For many short simulations in one process (explore's runs): a SimPy world is a web of reference cycles
    (the environment, its processes' generators and their frames), so it outlives its run until a collection
    finds it. ``cyclic_gc_paused`` parks a run's objects in the oldest generation, which Python collects
    rarely, and thousands of runs then grew a worker by ~3 MB each (11.9 GB before the kernel stopped it).
    Here the collector stays off for the whole block (nested ``cyclic_gc_paused`` blocks leave it off), so
    everything the block allocated is still in the youngest generation; one young collection at the end
    frees the run's cycles and scans nothing older."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect(0)
        if was_enabled:
            gc.enable()
