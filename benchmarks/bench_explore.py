"""Exploration speed and search power: ``python benchmarks/bench_explore.py [--quick]``.

1. Throughput. ``explore(Base("scenario", scenarios/default.toml), budget=--budget, shrink_failures=False)``
   with ``workers=1`` (runs inline: the baseline) and ``workers=2`` (a pool of spawned worker processes made
   per call, as explore does it), and four prototypes patched into ``tracesim.explore.search``'s module
   globals from here (nothing in ``tracesim/explore`` is edited): a pool started and warmed before the call
   (start-up and exit paid outside it, as when one pool serves many calls), the same with an in-flight window
   of 8 instead of 4, a per-call pool using the 'fork' start method (no re-import in the workers), and the
   per-call spawned pool whose workers' exit is not waited for. Each of ``--reps`` repetitions runs every
   variant once, in an order rotated per repetition, after waiting (at most 10 s) for the machine to look idle;
   each ratio is to the workers=1 run of the same repetition. Before each call (untimed) the parent and the
   warm pool's workers run a full GC collection, so every call starts from the same heap. Also printed: the
   cores each call kept busy (its own processes) and the cores other processes kept busy meanwhile (from
   /proc/stat), CPU per run, where a spawned pool's start-up goes, and what a worker holds after explore's
   runs and how long its exit then takes.

2. Runs needed to the first finding, per scenario and invariant, over ``--seeds`` exploration seeds
   S = 0, 1000, 2000, ...: *targeted* is explore's run plan (``RunPlan(base, S).spec(0), spec(1), ...``: rounds
   of 32 runs, run 0 of round r the unperturbed base with workload seed S + r, the others perturbing it);
   *plain* is the unperturbed scenario with workload seeds S, S + 1, S + 2, ... Each search stops at
   ``--cap`` runs ("> cap": nothing found). The seeds are 1000 apart so the plain searches of two
   repetitions never share a workload seed. For each scenario the first seed is searched with ``explore()``
   itself over the whole cap (which also gives the invariants it can break); the later seeds run the same
   specs through ``run_one`` on a pool of two and stop once every invariant known for the scenario has been
   seen. Every ``scenarios/*.toml`` is searched; one that shows nothing at the first seed is a control: it is
   then searched with ``explore()`` over the whole cap at the second seed too, and no further (time).

Ratios are measured in the same run; the machine's load average is printed with them. A full run takes about
4-5 minutes on 2 cores; ``--quick`` about one.
"""

from __future__ import annotations

import argparse
import gc
import glob
import math
import multiprocessing as mp
import os
import resource
import statistics
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

# A stale compiled build is said once by main() (as STATUS); spawned workers re-import this module.
warnings.filterwarnings("ignore", category=RuntimeWarning, module="tracesim.sim")

from tracesim.explore import Base, explore  # noqa: E402
from tracesim.explore import pool as P  # noqa: E402
from tracesim.explore import search as S  # noqa: E402
from tracesim.explore.runner import RunSpec, run_one  # noqa: E402
from tracesim.sim import _compiled  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_STRIDE = 1000


def _load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


def _sys_busy():
    """(busy, total) jiffies of the whole machine so far (Linux /proc/stat; idle and iowait count as free)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def _wait_idle(limit_s=10.0) -> float:
    """Wait (at most ``limit_s``) for a second in which other processes keep less than 0.15 of a core busy;
    returns the seconds waited. The machine this was written on is shared with other jobs."""
    t0 = time.perf_counter()
    while True:
        b0, n0 = _sys_busy()
        time.sleep(1.0)
        b1, n1 = _sys_busy()
        if (b1 - b0) / max(1, n1 - n0) * (os.cpu_count() or 1) < 0.15 or time.perf_counter() - t0 > limit_s:
            return time.perf_counter() - t0


def _spread(xs, fmt="{:.0f}"):
    return f"median {fmt.format(statistics.median(xs))}  (range {fmt.format(min(xs))}-{fmt.format(max(xs))})"


# --- 1. throughput ----------------------------------------------------------------------------------------

def _proc_cpu(pids) -> float:
    """CPU seconds (user + system) used so far by the live processes ``pids`` (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _probe(spec):
    """In a worker: when it took this task, and how long a first and a second run of ``spec`` take."""
    t_in = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    run_one(spec)
    t1 = time.perf_counter()
    run_one(spec)
    return os.getpid(), t_in, t1 - t_in, time.perf_counter() - t1


def _collect_and_wait():
    gc.collect()
    time.sleep(0.2)  # so that each worker takes one of these


def _heap():
    """In a worker: (RSS MB, objects tracked by the cyclic GC, full collections so far)."""
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    time.sleep(0.2)  # so that each worker takes one of these
    return rss, len(gc.get_objects()), gc.get_stats()[2]["collections"]


class _WarmPool(P.ProcessExecutor):
    """Prototype: a ProcessExecutor started once, warmed, and kept open across explore() calls."""

    def __init__(self, workers, base):
        super().__init__(workers)
        spec = RunSpec(base, 0)
        for f in [self.pool.submit(run_one, spec) for _ in range(2 * workers)]:
            f.result()  # every worker has imported tracesim, loaded the base, made one run

    def cpu(self) -> float:
        return _proc_cpu(self.pool._processes)

    def collect(self):
        """Free what the runs so far left for the cyclic GC in every worker (untimed, between calls)."""
        for f in [self.pool.submit(_collect_and_wait) for _ in range(len(self.pool._processes))]:
            f.result()

    def close(self):  # kept for the next call
        self.futures.clear()

    def shutdown(self):
        super().close()


class _ForkPool(P.ProcessExecutor):
    """Prototype: ProcessExecutor with the 'fork' start method (workers inherit the warm parent)."""

    def __init__(self, workers):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"),
                                        initializer=P._init_worker)
        self.futures = {}


class _NoWaitPool(P.ProcessExecutor):
    """Prototype: ProcessExecutor as it is, but close() does not wait for the workers to exit (they are joined
    by ``join()`` once the call has been timed): what the call would take if a worker's exit cost nothing."""

    made: list = []

    def __init__(self, workers):
        super().__init__(workers)
        _NoWaitPool.made.append(self)

    def close(self):
        for f in self.futures:
            f.cancel()
        self.futures.clear()
        pool = self.pool
        self._join = [pool._executor_manager_thread, *pool._processes.values()]  # shutdown forgets them
        pool.shutdown(wait=False, cancel_futures=True)

    @classmethod
    def join(cls):
        while cls.made:
            for t in cls.made.pop()._join:
                t.join()


def _explore_variant(base, budget, variant, warm):
    """One explore(workers=1 or 2) call as it is, or with a prototype patched into search.py's module
    globals (restored after). Returns (result, wall s, CPU s of parent + workers, seconds until the workers
    had exited, cores other processes on the machine kept busy meanwhile)."""
    saved = S.make_executor, S._width
    workers = 1 if variant == "w1" else 2
    try:
        if variant.startswith("warm"):
            S.make_executor = lambda workers, ray: warm
        if variant == "warm8":
            S._width = lambda ex: 4  # explore's window is 2 * _width
        if variant == "fork":
            S.make_executor = lambda workers, ray: _ForkPool(2)
        if variant == "nowait":
            S.make_executor = lambda workers, ray: _NoWaitPool(2)
        # Untimed: free what earlier calls left for the cyclic GC (see the README: each run's simulated world
        # is a reference cycle that no collection frees in time), so every call starts from the same heap.
        gc.collect()
        warm.collect()
        (p0, c0), w0, (b0, n0), t0 = _cpu(), warm.cpu(), _sys_busy(), time.perf_counter()
        r = explore(base, budget=budget, seed=0, workers=workers, shrink_failures=False)
        wall = time.perf_counter() - t0
        _NoWaitPool.join()
        span = time.perf_counter() - t0  # = wall, except for "nowait": until its workers have exited
        (p1, c1), w1, (b1, n1) = _cpu(), warm.cpu(), _sys_busy()
    finally:
        S.make_executor, S._width = saved
    assert r.runs == budget and not r.errors, (r.runs, r.errors[:1])
    cpu = (p1 - p0) + (c1 - c0) + (w1 - w0 if variant.startswith("warm") else 0.0)
    machine = (b1 - b0) / max(1, n1 - n0) * (os.cpu_count() or 1) * span  # CPU s of every process on the machine
    return r, wall, cpu, span, max(0.0, machine - cpu) / span


VARIANTS = (
    ("w1", "workers=1 (inline, the baseline)"),
    ("w2", "workers=2 (spawned pool made per call: as it is)"),
    ("warm", "prototype: pool of 2 started and warmed before the call (window 4)"),
    ("warm8", "prototype: as warm, in-flight window 8 instead of 4"),
    ("fork", "prototype: pool of 2 made per call with the 'fork' start method"),
    ("nowait", "prototype: as workers=2, the workers' exit not waited for"),
)


def throughput(base, budget, reps) -> None:
    print(f"== 1. throughput: explore({os.path.relpath(base.path, ROOT)}, budget={budget}, "
          f"shrink_failures=False), {reps} repetitions; each repetition runs every variant once, in an order "
          f"rotated per repetition; ratios are to that repetition's workers=1; {_load()}")
    explore(base, budget=S.ROUND, workers=1, shrink_failures=False)  # warm-up: imports, base loaded (not timed)
    warm = _WarmPool(2, base)
    rpm = {v: [] for v, _ in VARIANTS}
    ratio = {v: [] for v, _ in VARIANTS}
    busy = {v: [] for v, _ in VARIANTS}
    cpu_run = {v: [] for v, _ in VARIANTS}
    others = []  # per repetition: the most cores other processes kept busy during one of its calls
    found = set()
    try:
        for rep in range(reps):
            waited = _wait_idle()
            order = [v for v, _ in VARIANTS]
            order = order[rep % len(order):] + order[:rep % len(order)]
            row = {}
            for v in order:
                r, wall, cpu, span, other = _explore_variant(base, budget, v, warm)
                found.add(tuple((f.found_at, str(f.signature)) for f in r.findings))
                row[v] = (r.runs / wall * 60, cpu / span, cpu / r.runs, other)
            for v, (x, b, c, _) in row.items():
                rpm[v].append(x)
                busy[v].append(b)
                cpu_run[v].append(c)
                ratio[v].append(x / row["w1"][0])
            others.append(max(o for *_, o in row.values()))
            print(f"  rep {rep}: " + "   ".join(f"{v} {row[v][0]:.0f}/min ({row[v][1]:.2f}|{row[v][3]:.2f})"
                                                for v, _ in VARIANTS)
                  + f"   [waited {waited:.0f} s for idle; {_load()}]")
    finally:
        warm.shutdown()
    assert len(found) == 1, "findings differ between variants"
    print("\n  | variant | runs/min: median (range) | vs workers=1: median (range) | cores busy | CPU ms per run |")
    print("  |---|---|---|---|---|")
    for v, label in VARIANTS:
        print(f"  | {label} | {statistics.median(rpm[v]):.0f} ({min(rpm[v]):.0f}-{max(rpm[v]):.0f}) | "
              f"**{statistics.median(ratio[v]):.2f}x** ({min(ratio[v]):.2f}-{max(ratio[v]):.2f}) | "
              f"{statistics.median(busy[v]):.2f} | {statistics.median(cpu_run[v]) * 1000:.1f} |")
    print("  (per call above: runs/min (cores this benchmark kept busy | cores other processes kept busy))")
    clean = [i for i in range(reps) if others[i] < 0.25]
    print(f"  repetitions in which other processes kept < 0.25 core busy during every call: {len(clean)} of {reps}"
          + (": " + ", ".join(f"{v} {statistics.median([ratio[v][i] for i in clean]):.2f}x "
                              f"({min(ratio[v][i] for i in clean):.2f}-{max(ratio[v][i] for i in clean):.2f})"
                              for v, _ in VARIANTS if v != "w1") if clean else ""))

    # Where the 2-worker time goes.
    run_s = statistics.median(cpu_run["w1"])
    print(f"  workers=1: {run_s * 1000:.1f} ms CPU per run (its run plan included); ideal workers=2 wall "
          f"{budget * run_s / 2:.2f} s for {budget} runs")
    ready, first_run, second_run, ready_all, shut = [], [], [], [], []
    for _ in range(max(2, reps)):
        t0 = time.perf_counter()
        ex = P.ProcessExecutor(2)  # what explore(workers=2) makes
        futs = [ex.pool.submit(_probe, RunSpec(base, 0, (), -1)) for _ in range(4)]
        res = [f.result() for f in futs]
        ready_all.append(time.perf_counter() - t0)
        firsts = {}
        for pid, t_in, t_run1, t_run2 in res:
            firsts.setdefault(pid, (t_in, t_run1, t_run2))
        for t_in, t_run1, _ in firsts.values():
            ready.append(t_in - t0)
            first_run.append(t_run1)
        second_run += [t2 for _, _, _, t2 in res]
        t0 = time.perf_counter()
        ex.close()
        shut.append(time.perf_counter() - t0)
    print(f"  spawned pool of 2 (as explore makes it): a worker takes its first task after "
          f"{_spread(ready, '{:.2f}')} s (interpreter, spawn, imports); its first run takes "
          f"{_spread(first_run, '{:.3f}')} s (scenario loaded, numpy imported), a later one "
          f"{_spread(second_run, '{:.3f}')} s; both workers past their first runs after "
          f"{_spread(ready_all, '{:.2f}')} s; shutdown {_spread(shut, '{:.3f}')} s")
    ex = P.ProcessExecutor(2)
    plan = S.RunPlan(base, 0)
    list(P.map_ordered(ex, [plan.spec(i) for i in range(budget)], 4))  # explore's runs, as explore takes them
    kept = [f.result() for f in [ex.pool.submit(_heap) for _ in range(2)]]
    t0 = time.perf_counter()
    ex.close()
    t_close = time.perf_counter() - t0
    print(f"  after explore's {budget} runs, a worker holds {_spread([k[0] for k in kept])} MB RSS and "
          f"{_spread([k[1] / 1e6 for k in kept], '{:.1f}')} M objects tracked by the GC, after "
          f"{max(k[2] for k in kept)} full collections; the pool's shutdown then takes {t_close:.2f} s "
          f"(after 2 runs a worker: {_spread(shut, '{:.3f}')} s)")
    plan = S.RunPlan(base, 12345)
    rounds = math.ceil(budget / S.ROUND)
    t0 = time.perf_counter()
    for i in range(rounds * S.ROUND):
        plan.spec(i)
    t_plan = time.perf_counter() - t0
    print(f"  parent's run plan (one base run + meeting points per round, {rounds} rounds): {t_plan:.2f} s "
          f"per call = {t_plan / budget * 1000:.1f} ms per run")


# --- 2. runs to the first finding ----------------------------------------------------------------------------

def _init_worker():
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)


def _ordered_search(pool, specs, cap, want, window=8):
    """run_one over ``specs`` in order (at most ``cap``), ``window`` in flight; stop once every invariant of
    ``want`` has been seen. Returns ({invariant: runs needed (index + 1)}, runs taken)."""
    first, futures, done = {}, {}, {}
    it = iter(enumerate(specs))
    submitted = taken = 0
    try:
        while taken < cap:
            while submitted < cap and len(futures) < window:
                i, spec = next(it)
                futures[pool.submit(run_one, spec)] = i
                submitted += 1
            if taken not in done:
                fin, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for f in fin:
                    done[futures.pop(f)] = f.result()
                continue
            out = done.pop(taken)
            taken += 1
            for f in out.failures:
                first.setdefault(f.signature.invariant, taken)
            if want and want <= set(first):
                break
    finally:
        for f in futures:
            f.cancel()
        wait(list(futures))
    return first, taken


def _targeted_specs(base, seed):
    plan = S.RunPlan(base, seed)
    i = 0
    while True:
        yield plan.spec(i)
        i += 1


def _plain_specs(base, seed):
    k = seed
    while True:
        yield RunSpec(base, k)
        k += 1


def _median_runs(xs):
    return statistics.median([x if x is not None else math.inf for x in xs])


def _fmt(x, cap):
    return f"> {cap}" if x is None or x == math.inf else (f"{x:g}")


def runs_to_first(scenarios, seeds, cap) -> None:
    print(f"\n== 2. runs to the first finding: seeds {seeds}, cap {cap} runs per search; {_load()}")
    pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    rows = []
    try:
        for path in scenarios:
            base = Base("scenario", path)
            name = os.path.relpath(path, ROOT)
            t0 = time.perf_counter()
            # First seed: explore() itself over the whole cap, and the plain seeds over the whole cap.
            r = explore(base, budget=cap, seed=seeds[0], workers=2, shrink_failures=False)
            targ = {}
            for f in r.findings:
                targ.setdefault(f.signature.invariant, f.found_at + 1)
            plain, _ = _ordered_search(pool, _plain_specs(base, seeds[0]), cap, None)
            per_seed = [(targ, plain)]
            known = set(targ) | set(plain)
            for s in seeds[1:]:
                if not known and s != seeds[1]:
                    continue  # a control: searched at the first two seeds only (time)
                if not known:  # a control so far: explore() itself over the whole cap
                    r = explore(base, budget=cap, seed=s, workers=2, shrink_failures=False)
                    t = {}
                    for f in r.findings:
                        t.setdefault(f.signature.invariant, f.found_at + 1)
                    p = {}  # plain seeds of a control: the first seed's block only
                else:
                    t, _ = _ordered_search(pool, _targeted_specs(base, s), cap, known)
                    p, _ = _ordered_search(pool, _plain_specs(base, s), cap, known)
                extra = (set(t) | set(p)) - known
                if extra:
                    print(f"  note: {name} seed {s} showed {sorted(extra)} not seen at seed {seeds[0]}; "
                          f"earlier seeds may have stopped before it")
                    known |= extra
                per_seed.append((t, p))
            el = time.perf_counter() - t0
            if not known:
                print(f"  {name}: control, no finding: explore() over {cap} runs at seeds {seeds[:2]}, "
                      f"plain seeds {seeds[0]}..{seeds[0] + cap - 1} ({el:.0f} s)")
                rows.append((name, "(none)", None, None, None, None))
                continue
            print(f"  {name} ({el:.0f} s):")
            for inv in sorted(known):
                tl = [t.get(inv) for t, _ in per_seed]
                pl = [p.get(inv) for _, p in per_seed]
                tm, pm = _median_runs(tl), _median_runs(pl)
                print(f"    {inv:32s} targeted {[_fmt(x, cap) for x in tl]}  plain {[_fmt(x, cap) for x in pl]}")
                rows.append((name, inv, tm, pm, tl, pl))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    print(f"\nMedian runs to the first finding over {len(seeds)} seeds; pooled: all runs searched / searches that "
          f"found it (a search that found nothing counts its {cap} runs), the mean of a geometric draw")
    print("\n| scenario | invariant | targeted: median runs | plain seeds: median runs | plain / targeted (median) "
          "| targeted: pooled runs per finding | plain: pooled | plain / targeted (pooled) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, inv, tm, pm, tl, pl in rows:
        if tl is None:
            print(f"| {name} | (control: nothing found) | > {cap} | > {cap} | - | - | - | - |")
            continue
        print(f"| {name} | {inv} | {_fmt(tm, cap)} | {_fmt(pm, cap)} | {_ratio(pm, tm, cap)} | "
              f"{_pooled(tl, cap)} | {_pooled(pl, cap)} | "
              f"{_ratio(_pooled_v(pl, cap), _pooled_v(tl, cap), sum(x or cap for x in pl))} |")


def _pooled_v(xs, cap):
    found = sum(x is not None for x in xs)
    return sum(x if x is not None else cap for x in xs) / found if found else math.inf


def _pooled(xs, cap):
    v = _pooled_v(xs, cap)
    return f"> {sum(x or cap for x in xs)}" if v == math.inf else f"{v:.1f}"


def _ratio(p, t, p_floor):
    """plain / targeted; ``p_floor``: what ``p`` is known to exceed where it is "> cap" (inf)."""
    if t == math.inf:
        return "-"
    if p == math.inf:
        return "> %.1fx" % (p_floor / t)
    return "%.1fx" % (p / t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller run (budget 64, 2 reps, 2 seeds, cap 100)")
    ap.add_argument("--budget", type=int, help="runs per explore call in the throughput part (default 200)")
    ap.add_argument("--reps", type=int, help="throughput repetitions per worker count (default 3)")
    ap.add_argument("--seeds", type=int, help="exploration seeds in part 2 (default 5)")
    ap.add_argument("--cap", type=int, help="runs per search in part 2 (default 300)")
    ap.add_argument("--skip", choices=("throughput", "first"), help="leave one part out")
    args = ap.parse_args()
    q = args.quick
    budget = args.budget or (64 if q else 200)
    reps = args.reps or (2 if q else 3)
    nseeds = args.seeds or (2 if q else 5)
    cap = args.cap or (100 if q else 300)
    t0 = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, {_load()}; simulator build: "
          f"{'compiled' if _compiled.STATUS.compiled else 'plain Python'} ({_compiled.STATUS.reason})")
    if args.skip != "throughput":
        throughput(Base("scenario", os.path.join(ROOT, "scenarios", "default.toml")), budget, reps)
    if args.skip != "first":
        scenarios = sorted(glob.glob(os.path.join(ROOT, "scenarios", "*.toml")))
        runs_to_first(scenarios, [i * SEED_STRIDE for i in range(nseeds)], cap)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; {_load()}")


if __name__ == "__main__":
    main()
