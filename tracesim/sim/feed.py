"""Exact replay's engine inputs: each recorded input is due before the engine action that followed it.

vLLM's engine core is one thread: it takes inputs (adds, aborts, pause / resume, cache resets) between its
own actions (``schedule()`` / ``update_from_output()``; aborts also just before an update). A recording
therefore says not only when an input arrived but which action it preceded. Delivering inputs by time alone
makes the replayed batches depend on sub-microsecond agreement of two clocks (an add recorded 8 us before a
``schedule()`` lands after it when the replayed step runs 9 us early); delivering each input before the same
action as in the recording does not. The input still waits for its recorded time, so the engine never sees
it early. When the replay has diverged (the model performs actions the recording did not), an idle engine
takes the next input when it arrives, whatever action it was due before.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from tracesim.format.records import StepScheduled, StepUpdated


class FeedItem(NamedTuple):
    t_ns: int  # recorded arrival, rebased
    before: int  # engine actions (sched / upd records) that preceded it in the recording
    kind: str  # "add", "abort", "pause", "resume", "reset"
    payload: object


class Feed:
    """Engine inputs in recording order; ``make(kind, payload)`` turns one into ``(kind, engine payload)``
    at delivery (so an add's ``SimReq`` is created when it arrives)."""

    def __init__(self, items, make):
        self.items = deque(items)
        self.make = make
        self.on_empty = None  # called once the last input was taken (replay's end-of-run watch)

    def __bool__(self) -> bool:
        return bool(self.items)

    def is_due(self, actions: int) -> bool:
        """Whether an input is still to be delivered before action number ``actions``."""
        return bool(self.items) and self.items[0].before <= actions

    def deliver(self, engine):
        """SimPy sub-process: wait for the next input's recorded time and queue it at the engine."""
        item = self.items.popleft()
        if not self.items and self.on_empty is not None:
            self.on_empty()
        if item.t_ns > engine.env.now:
            yield engine.env.timeout(item.t_ns - engine.env.now)
        kind, payload = self.make(item.kind, item.payload, engine)
        engine.submit(kind, payload)


def engine_actions_before(records) -> list:
    """For each record (stream order): how many engine actions (sched / upd records) came before it."""
    out, n = [], 0
    for r in records:
        out.append(n)
        if type(r) is StepScheduled or type(r) is StepUpdated:
            n += 1
    return out
