"""Checking adversarial traces against a normal trace of the same record count, each in its own process.

    python benchmarks/bench_check_adversarial.py [--mb 10] [--repeat 2] [--only NAME ...]

Each adversarial trace is shaped to hit one checker where a naive implementation is quadratic (one sample
consumed over and over, many samples sharing a digest, one forward pass spanning the run while the weights are
written many times, ...). The script builds each at about ``--mb`` MB, writes and reads it back, and times
``check_trace`` on it; the baseline is a correct synthetic RL trace with as many records. It prints the time
ratio adversarial / normal (target: a small constant, < 3x) and the peak RSS of each child process.
The builders are shared with ``tests/test_check_hostile.py``, which checks their results at small sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from tracesim.format import (
    Aborted, ConsumedSample, OutputDelivered, OutReq, ProcessInfo, RequestAdded, RewardBound, SampleDropped,
    SchedReq, StepExecuted, StepScheduled, StepUpdated, Trace, TrainerConsumed, VersionSpan, WeightsUpdated,
    make_header, token_digest,
)

US = 1_000


def _header():
    return make_header("synthetic", (ProcessInfo("test", "h", 1),))


def consumed_many(n: int) -> Trace:
    """A group of 2 whose first sample the trainer consumes ``n`` times (groups, sample ends, lag, bindings)."""
    recs, t = [], 0
    for i in range(2):
        recs.append(RequestAdded(t := t + US, f"s{i}", "client", "g0", i, 2, 8, 16, None, "p0", 0))
        recs.append(OutputDelivered(t := t + US, f"s{i}", 0, 1, True, "stop", (VersionSpan(0, 0, 1),), f"d{i}"))
        recs.append(RewardBound(t := t + US, f"s{i}", f"d{i}", 0, 0.5, "g0"))
    recs.append(TrainerConsumed(t := t + US, 0, (ConsumedSample("s1", "g0", 0, "d1", 0.5),), 0))
    sample = ConsumedSample("s0", "g0", 0, "d0", 0.5)
    for k in range(n):
        recs.append(TrainerConsumed(t := t + US, k + 1, (sample,), 0))
    return Trace(_header(), recs)


def shared_digest(n: int) -> Trace:
    """``n`` samples: half delivered the same tokens (digest ``D``), the other half had rewards computed on
    ``D`` instead of their own tokens: every one of those names whose tokens were scored."""
    recs, t, same = [], 0, token_digest([1, 2, 3])
    for i in range(n):
        r = f"r{i}"
        own = same if i % 2 == 0 else token_digest([10**6 + i])
        recs.append(RequestAdded(t := t + US, r, "client", f"g{i}", 0, 1, 8, 16, None, None, 0))
        recs.append(OutputDelivered(t := t + US, r, 0, 3, True, "stop", None, own))
        recs.append(RewardBound(t := t + US, r, same, 0, 0.5, f"g{i}"))
    return Trace(_header(), recs)


def long_step(n: int) -> Trace:
    """Step 0's forward pass spans the whole run; ``n`` short steps follow, with a weight write between each
    two: every write overlaps step 0 and nothing else."""
    recs, t = [], 0
    recs.append(StepScheduled(0, 1, 0))
    recs.append(StepExecuted(2, 10 * US * (n + 2), 0, 0))
    t = 10
    for s in range(1, n + 1):
        recs.append(StepScheduled(t := t + US, t + 1, s))
        recs.append(StepExecuted(t := t + US, t + US // 2, s, s))
        recs.append(StepUpdated(t := t + US, t + 1, s, (), s))
        recs.append(WeightsUpdated(t := t + US, t + US // 2, s + 1, "client"))
    recs.append(StepUpdated(10 * US * (n + 3), 10 * US * (n + 3) + 1, 0, (), 0))
    return Trace(_header(), recs)


def late_admissions(n: int) -> Trace:
    """``n`` samples whose final frames come before their admissions (unsorted merged clocks)."""
    recs, t = [], 0
    for i in range(n):
        recs.append(OutputDelivered(t := t + US, f"r{i}", 0, 1, True, "stop", None, "d"))
    for i in range(n):
        recs.append(RequestAdded(t := t + US, f"r{i}", "client", None, 0, 1, 8, 16, None, None, 0))
    return Trace(_header(), recs)


def group_drops(n: int) -> Trace:
    """A group of ``n // 2`` samples dropped as a whole ``n // 2`` times (group-wide SampleDropped)."""
    m, recs, t = n // 2, [], 0
    for i in range(m):
        recs.append(RequestAdded(t := t + US, f"r{i}", "client", "g", i, m, 8, 16, None, None, 0))
    for _ in range(m):
        recs.append(SampleDropped(t := t + US, (), "stale", "g"))
    return Trace(_header(), recs)


def span_runs(n: int) -> Trace:
    """One request decoded for ``n`` steps under alternating versions, delivered with ``n`` version spans
    that agree with them: every run of tokens against every span, naively."""
    recs, t = [RequestAdded(0, "r", "client", None, 0, 1, 8, n, None, None, 0), RequestAdded(1, "r", "engine")], 2
    for s in range(n):
        recs.append(StepScheduled(t := t + US, t + 1, s, (SchedReq("r", 8 if s == 0 else 0, 0 if s == 0 else 1),)))
        recs.append(StepExecuted(t := t + US, t + 10, s, s % 2))
        recs.append(StepUpdated(t := t + US, t + 1, s, (OutReq("r", 1, "stop" if s == n - 1 else None),), s % 2))
    spans = tuple(VersionSpan(s % 2, s, s + 1) for s in range(n))
    recs.append(OutputDelivered(t + US, "r", 0, n, True, "stop", spans, token_digest(range(n))))
    return Trace(_header(), recs)


def aborts_many(n: int) -> Trace:
    """One id admitted, aborted and re-admitted ``n`` times on both sides (incarnation linking)."""
    recs, t = [], 0
    for i in range(n):
        recs.append(RequestAdded(t := t + US, "r", "engine"))
        recs.append(RequestAdded(t := t + US, "r", "client", "g", i, 1, 8, 16, None, None, 0))
        recs.append(Aborted(t := t + US, ("r",), "retry", "engine"))
    return Trace(_header(), recs)


ADVERSARIAL = {f.__name__: f for f in (consumed_many, shared_digest, long_step, late_admissions, group_drops,
                                       span_runs, aborts_many)}


def normal(n_records: int) -> Trace:
    from tracesim.format.synthetic import synthetic_trace

    return synthetic_trace(waves=max(1, n_records // 1177), groups_per_wave=16, seed=1)  # ~1177 records a wave


def _scale_for(name: str, mb: float) -> int:
    """The builder argument that makes a trace of about ``mb`` MB (from a 2,000 sample)."""
    path = os.path.join(tempfile.mkdtemp(), "probe.msgpack")
    from tracesim.format import write_trace

    write_trace(path, ADVERSARIAL[name](2000))
    size = os.path.getsize(path)
    os.remove(path)
    return max(2000, int(2000 * mb * 1e6 / size))


def _child(name: str, scale: int, repeat: int) -> dict:
    import resource

    from tracesim.check import check_trace
    from tracesim.format import read_trace, write_trace

    trace = normal(scale) if name == "normal" else ADVERSARIAL[name](scale)
    path = os.path.join(tempfile.mkdtemp(), f"{name}.msgpack")
    write_trace(path, trace)
    del trace
    trace = read_trace(path)
    best, report = None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = check_trace(trace)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    result = {"name": name, "records": len(trace.records), "mb": os.path.getsize(path) / 1e6, "check_s": best,
              "violations": len(report.violations),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    os.remove(path)
    return result


def _run_child(name: str, scale: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, "--scale", str(scale), "--repeat", str(repeat)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="size of each adversarial trace (default 10 MB)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", action="append", choices=sorted(ADVERSARIAL))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.scale, args.repeat)))
        return
    print(f"{'trace':<16} {'records':>9} {'MB':>6} {'check s':>8} {'normal s':>9} {'ratio':>6} "
          f"{'violations':>10} {'peak RSS MB':>11}")
    for name in args.only or ADVERSARIAL:
        adv = _run_child(name, _scale_for(name, args.mb), args.repeat)
        base = _run_child("normal", adv["records"], args.repeat)
        print(f"{name:<16} {adv['records']:>9,} {adv['mb']:>6.1f} {adv['check_s']:>8.2f} {base['check_s']:>9.2f} "
              f"{adv['check_s'] / base['check_s']:>5.2f}x {adv['violations']:>10,} {adv['peak_rss_mb']:>11.0f}"
              f"  (normal: {base['records']:,} records, {base['mb']:.1f} MB, {base['peak_rss_mb']:.0f} MB RSS)")


if __name__ == "__main__":
    main()
