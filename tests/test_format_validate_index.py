"""``validate`` pairs steps through the trace index (Trace.index(), format/index.py): per process, in stream
order, each problem reported once at the record it concerns."""

from __future__ import annotations

from helpers import header

from tracesim.format import ProcessInfo, StepExecuted, StepScheduled, StepUpdated, Trace
from tracesim.format.validate import validate


def _procs_header():
    return header()._replace(processes=(ProcessInfo("engine-core", "h", 1), ProcessInfo("engine-core", "h", 2)))


def test_steps_of_two_processes_are_paired_apart():
    records = [StepScheduled(0, 1, 0), StepScheduled(0, 1, 0), StepUpdated(2, 3, 0), StepUpdated(2, 3, 0)]
    assert validate(Trace(_procs_header(), records, [0, 1, 0, 1])) == []
    # the same records from one process: a repeated step, and its output applied twice
    problems = validate(Trace(_procs_header(), records, [0, 0, 0, 0]))
    assert problems == ["record 1 (sched, t_ns 0): step 0 does not follow step 0",
                        "record 3 (upd, t_ns 2): output of step 0 applied twice"]


def test_a_gap_in_the_steps_is_no_problem_but_going_back_is():
    records = [StepScheduled(0, 1, 0), StepScheduled(2, 3, 5), StepScheduled(4, 5, 3), StepScheduled(6, 7, 4)]
    problems = validate(Trace(header(), records))
    # step 4 comes after step 5 as well: both are behind the highest step scheduled before them
    assert problems == ["record 2 (sched, t_ns 4): step 3 does not follow step 5",
                        "record 3 (sched, t_ns 6): step 4 does not follow step 5"]


def test_execution_and_output_before_their_schedule_are_reported_where_they_stand():
    records = [StepExecuted(0, 1, 0), StepUpdated(1, 2, 0), StepScheduled(3, 9, 0), StepUpdated(4, 5, 0),
               StepUpdated(10, 11, 0)]
    problems = validate(Trace(header(), records))
    assert problems == [
        "record 0 (exec, t_ns 0): execution of step 0, which was never scheduled before it",
        "record 1 (upd, t_ns 1): output of step 0, which was never scheduled before it",
        "record 3 (upd, t_ns 4): output of step 0 applied before its schedule() returned",
        "record 4 (upd, t_ns 10): output of step 0 applied twice",
    ]
