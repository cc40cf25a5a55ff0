"""SimPy's ``Environment`` with its event loop compiled and far-future events kept in a heap of their own.

A simulation runs ~8 SimPy events per engine step, and ``Environment.step`` (pop the next event, run its
callbacks) is plain Python in SimPy. Here it is compiled with the simulator's hot modules (setup.py), and
the events due at least ``FAR_NS`` after they were scheduled (a replayed RL loop's train steps, drops and
late rewards: thousands of them scheduled at the start) wait in a second heap. The engine's own events then
share a heap of a few dozen entries instead of thousands, and each pop compares ~4 entries instead of ~11.

The order of events is SimPy's exactly: every event keeps its ``(time, priority, id)`` key from one shared
counter, and ``step`` takes the smaller of the two heaps' first keys, so a run gives the same events in the
same order, and the same trace, as ``simpy.Environment`` (tests/test_sim_simloop.py).
"""

from __future__ import annotations

from heapq import heappop, heappush

import simpy
from simpy.core import EmptySchedule, Infinity, StopSimulation
from simpy.events import NORMAL, EventPriority

FAR_NS = 1_000_000_000  # virtual ns: an event due this far ahead waits in the far heap


class Environment(simpy.Environment):
    """``simpy.Environment`` for the simulator's virtual-ns clock (module doc)."""

    def __init__(self, initial_time=0):
        super().__init__(initial_time)
        self._far: list = []

    def schedule(self, event, priority=NORMAL, delay=0) -> None:
        heappush(self._far if delay >= FAR_NS else self._queue, (self._now + delay, priority, next(self._eid), event))

    def peek(self):
        queue, far = self._queue, self._far
        if far and (not queue or far[0] < queue[0]):
            return far[0][0]
        return queue[0][0] if queue else Infinity

    def step(self) -> None:
        # simpy.Environment.step, taking the next event from whichever heap holds it
        queue, far = self._queue, self._far
        if far and (not queue or far[0] < queue[0]):
            self._now, _, _, event = heappop(far)
        elif queue:
            self._now, _, _, event = heappop(queue)
        else:
            raise EmptySchedule from None
        callbacks, event.callbacks = event.callbacks, None
        i = 0
        try:
            for callback in callbacks:
                callback(event)
                i += 1
        except StopSimulation:
            # as SimPy: the remaining callbacks run when the simulation resumes
            event.callbacks = callbacks[i + 1:]
            self.schedule(event, EventPriority(-1))
            raise
        if not event._ok and not hasattr(event, "_defused"):
            # a failed event nobody defused crashes the environment, with a copy of its exception
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            raise exc
