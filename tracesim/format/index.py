"""One pass over a trace's records that pairs each engine step's records and finds the trace start.

Every reader of steps (checkers, plots, the step-time fit, replay, fidelity) takes this index from
``Trace.index()`` instead of pairing records itself: a step is ``(proc, step)``, and its ``StepScheduled`` /
``StepExecuted`` / ``StepUpdated`` are matched here once, under one rule, with what did not fit recorded as
faults rather than dropped.

The pairing rule is stream order's: the first ``StepScheduled`` of a key makes the step; an execution counts
only after its schedule and before its update, an update only after its schedule and once. A merged trace is
sorted by time, a single-process trace is written in the order things happened, so stream order is the order
of facts. Records the rule does not take are kept in ``extras`` with which side of the taken ones they fall on,
so the readers that take the *last* record of a key (plots, step costs: a repeated record overrides) still
see what they saw when each paired records itself (``last_records``).
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import itemgetter

from tracesim.format.records import EVENT_TYPES, StepExecuted, StepScheduled, StepUpdated

if any(kind._fields[0] != "t_ns" for kind in EVENT_TYPES):
    raise TypeError("start_of reads t_ns as field 0 of every event record: a record type changed that")


class Step:
    """The records of one engine step ``(proc, step)`` the pairing took (``None``: not recorded, or only
    recorded out of order: see ``TraceIndex.step_faults``)."""

    __slots__ = ("proc", "sched", "exec", "upd")

    def __init__(self, proc: int, sched: StepScheduled):
        self.proc, self.sched = proc, sched
        self.exec: StepExecuted | None = None
        self.upd: StepUpdated | None = None

    def __repr__(self) -> str:
        return (f"Step(proc={self.proc}, step={self.sched.step}, exec={self.exec is not None}, "
                f"upd={self.upd is not None})")


def start_of(records) -> int:
    """The trace start: the earliest ``t_ns`` of ``records`` (0 if none). Records are in stream order, which
    is not time order (a step's record is written when the step ends), so this is a minimum, not the first."""
    if type(records) is list:  # millions of records: the minimum as a typed C loop where compiled (~10x)
        from tracesim.format.trace import compiled_columnizer  # imported late: trace imports this module

        fast = compiled_columnizer()
        if fast is not None:
            least_ns = fast.min_t_ns(records)  # None: a record only the Python path below judges
            if least_ns is not None:
                return least_ns
    try:
        return min(map(itemgetter(0), records), default=0)  # C loop: every event record has t_ns first
    except (TypeError, IndexError):  # not only event records
        return min((r.t_ns for r in records if hasattr(r, "t_ns")), default=0)


class TraceIndex:
    """What ``index_trace`` found. Attributes:

    ``start_ns``: the earliest t_ns (the zero of plots, replay and fidelity); ``first_ns``: the t_ns of the
    first record that has an int one (check messages count from it; None if none);
    ``steps``: (proc, step) -> Step, in order of first schedule (``step_order`` lists the same Steps);
    ``step_faults``: ``(code, Step or None, record, detail...)`` in stream order, codes ``sched_twice``
    and ``sched_order`` (detail of both: the process's previous highest step), ``exec_unscheduled``, ``exec_twice``,
    ``upd_unscheduled``, ``upd_twice``, ``upd_order`` (detail: the last updated step), then ``upd_missing``
    (detail: a later step of the process that was updated);
    ``in_flight_at_end``: proc -> steps scheduled and never updated, none of the process's updates after them;
    ``extras``: ``(proc, record, late)`` for each step record not taken, in stream order; ``late``: it came
    after the taken record of its kind (a repeat), else before any (its schedule was not yet seen);
    ``n_exec`` / ``n_upd``: StepExecuted / StepUpdated records, taken or not.
    """

    __slots__ = ("_source", "_start_ns", "first_ns", "steps", "step_order", "step_faults", "in_flight_at_end",
                 "extras", "n_exec", "n_upd", "_last", "_engine_steps", "_unpaired", "_lifecycles")

    def __init__(self, records=(), procs=()):
        self._source = (records, procs)  # for what is built on first use: trace start, pairing, lifecycles
        self._start_ns: int | None = None
        self._unpaired = False  # the steps are paired on first use (index_trace)
        self._last = None
        self._engine_steps = None
        self._lifecycles = None

    def __getattr__(self, name: str):
        # Only reached while a paired attribute (a slot) is still unset: ``index_trace`` defers the pairing
        # pass to its first reader, so a caller that wants only ``start_ns`` (fidelity) never pays for it.
        if not self._unpaired or name not in _PAIRED:
            raise AttributeError(name)
        self._unpaired = False
        records, procs = self._source
        # Only step records reach the Python loop: the filter runs in C (a trace is mostly other records).
        taken = compress(zip(procs, records) if procs else zip(repeat(0), records),
                         map(_STEP_TYPES.__contains__, map(type, records)))
        _pair(self, taken, records)
        return getattr(self, name)

    @property
    def start_ns(self) -> int:
        if self._start_ns is None:
            self._start_ns = start_of(self._source[0])
        return self._start_ns

    @property
    def lifecycles(self) -> dict:
        """``req_id -> [Lifecycle, ...]``: each engine-side incarnation of a request (added, first scheduled,
        preempted, finished or aborted), in order of first sight; built on first use (format/lifecycle.py)."""
        if self._lifecycles is None:
            from tracesim.format.lifecycle import request_lifecycles

            records, procs = self._source
            self._lifecycles = request_lifecycles(records, procs, self.steps)
        return self._lifecycles

    def last_records(self) -> tuple:
        """``(sched, execs, upds)``: dicts (proc, step) -> the *last* StepScheduled / StepExecuted /
        StepUpdated of that key in stream order, including keys never scheduled (built once, shared)."""
        if self._last is None:
            sched, execs, upds = {}, {}, {}
            for key, st in self.steps.items():
                sched[key] = st.sched
                if st.exec is not None:
                    execs[key] = st.exec
                if st.upd is not None:
                    upds[key] = st.upd
            if self.extras:
                by_kind = {StepScheduled: sched, StepExecuted: execs, StepUpdated: upds}
                # Every record that came before the taken one of its key came before the key's schedule,
                # every repeat after it: so the last of a key is its last repeat, else the taken one, else
                # the last of those seen early.
                for proc, rec, late in self.extras:
                    d = by_kind[type(rec)]
                    key = (proc, rec.step)
                    if late or key not in d or not self._taken(key, rec):
                        d[key] = rec
            self._last = (sched, execs, upds)
        return self._last

    def _taken(self, key, rec) -> bool:
        """Whether ``key`` has a taken record of ``rec``'s kind (an early extra then does not override it)."""
        st = self.steps.get(key)
        if st is None:
            return False
        return (st.exec if type(rec) is StepExecuted else st.upd if type(rec) is StepUpdated else st.sched) is not None

    def adopt_engine_steps(self, proc: int, sched: dict, execs: dict, upds: dict) -> None:
        """Take ``engine_steps()`` from a reader that walked every record anyway (replay's scan,
        sim/replay.py) and found the steps well formed: every step record of one process ``proc``, each step
        scheduled once, then executed at most once and updated at most once, in that order. Under the pairing
        rule (module doc) such a stream makes no fault that leaves a record out, so ``engine_steps()`` is
        exactly these dicts, without the pairing pass; the steps themselves are still paired on first use."""
        if self._engine_steps is None:
            self._engine_steps = (proc, sched, execs, upds)

    def engine_steps(self) -> tuple:
        """``(proc, sched, execs, upds)`` for one engine: the process that scheduled the first step (0 if
        none); dicts step -> the last record of each kind of that process (what a step-time fit and an exact
        replay read; a trace from several engines is one engine's timing per process)."""
        if self._engine_steps is None:
            proc = self.step_order[0].proc if self.step_order else 0
            if not self.extras and all(st.proc == proc for st in self.step_order):  # one engine, well formed
                sched, execs, upds = {}, {}, {}
                for st in self.step_order:
                    k = st.sched.step
                    sched[k] = st.sched
                    if st.exec is not None:
                        execs[k] = st.exec
                    if st.upd is not None:
                        upds[k] = st.upd
            else:
                sched, execs, upds = ({k[1]: r for k, r in d.items() if k[0] == proc} for d in self.last_records())
            self._engine_steps = (proc, sched, execs, upds)
        return self._engine_steps


_STEP_TYPES = frozenset((StepScheduled, StepExecuted, StepUpdated))


def index_trace(trace, start_ns: int | None = None) -> TraceIndex:
    """Index ``trace`` (a ``Trace``: ``records`` and ``procs``) in one pass; never raises on odd content.
    Use ``trace.index()``, which builds it once per trace. ``start_ns``: the trace start when the caller knows
    it (found while reading), else found on first use."""
    ix = TraceIndex(trace.records, trace.procs)
    ix._start_ns = start_ns
    ix._unpaired = True  # paired when a step attribute is first read (TraceIndex.__getattr__)
    return ix


_PAIRED = frozenset(("first_ns", "steps", "step_order", "step_faults", "in_flight_at_end", "extras", "n_exec",
                     "n_upd"))


def _pair(ix: TraceIndex, step_records, records) -> None:
    """Fill ``ix``'s paired attributes (``_PAIRED``) from ``step_records``: ``(proc, record)`` for each
    StepScheduled / StepExecuted / StepUpdated of ``records``, in stream order."""
    ix.steps, ix.step_order, ix.step_faults, ix.in_flight_at_end, ix.extras = {}, [], [], {}, []
    ix.first_ns = next((r.t_ns for r in records if type(getattr(r, "t_ns", None)) is int), None)
    steps, order, faults, extras = ix.steps, ix.step_order, ix.step_faults, ix.extras
    last_sched: dict = {}  # proc -> highest scheduled step
    last_upd: dict = {}  # proc -> last updated step
    n_exec = n_upd = 0
    get, add_fault, add_extra = steps.get, faults.append, extras.append
    for proc, rec in step_records:
        kind = type(rec)
        if kind is StepScheduled:
            s = rec.step
            key = (proc, s)
            st = get(key)
            if st is not None:
                add_fault(("sched_twice", st, rec, last_sched.get(proc)))
                add_extra((proc, rec, True))
                continue
            last = last_sched.get(proc)
            if last is not None and s != last + 1:
                add_fault(("sched_order", None, rec, last))
            last_sched[proc] = s if last is None or s > last else last
            steps[key] = st = Step(proc, rec)
            order.append(st)
        elif kind is StepExecuted:
            n_exec += 1
            st = get((proc, rec.step))
            if st is None or st.exec is not None or st.upd is not None:
                add_fault(("exec_unscheduled" if st is None else "exec_twice", st, rec))
                add_extra((proc, rec, st is not None))
                continue
            st.exec = rec
        else:  # StepUpdated
            n_upd += 1
            s = rec.step
            st = get((proc, s))
            if st is None or st.upd is not None:
                add_fault(("upd_unscheduled" if st is None else "upd_twice", st, rec))
                add_extra((proc, rec, st is not None))
                continue
            last = last_upd.get(proc)
            if last is not None and s <= last:
                add_fault(("upd_order", st, rec, last))
            last_upd[proc] = s
            st.upd = rec
    ix.n_exec, ix.n_upd = n_exec, n_upd
    # Steps never updated: skipped if a later step of their process was updated, else still in flight when
    # the trace ends (the recording stopped, or the engine died).
    for (proc, _step), st in steps.items():
        if st.upd is None:
            last = last_upd.get(proc)
            if last is not None and st.sched.step < last:
                faults.append(("upd_missing", st, st.sched, last))
            else:
                ix.in_flight_at_end.setdefault(proc, []).append(st.sched.step)
