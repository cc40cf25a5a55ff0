"""Overhead of the recording scheduler on vLLM's scheduling path.

Drives vLLM's real scheduler standalone (no model: a fake output samples one token per request) with 256
running decode requests, with and without recording, in the same run. Targets: at most 3% more time per step
on the scheduling path (issue 3), and on the whole engine loop with all of the recorder's engine-process
work charged (issue 16).

How it is measured, so that noise and bookkeeping can neither hide nor invent the difference:

* one driver (a ``RecordingScheduler``) runs rounds of one block of ``--block`` steps per variant: recorder
  detached ("plain"), the default compact reduction ("compact", ``tracesim/record/reduce.py``) and, as the
  baseline measured in the same rounds, a second recorder with the reduction before issue 16 ("legacy",
  ``TRACESIM_RECORD_REDUCE=legacy``; ``--no-legacy`` leaves it out). The order of the variants goes through
  every permutation: slow phases of the machine hit all alike, and all run on the same requests and memory.
  Three separately built plain drivers of the same configuration differed by up to 16% from each other here,
  far more than the 3% to resolve. Detached, each hook costs one attribute check before calling vLLM's method;
* the GC heap is frozen after warm-up, as vLLM's ``EngineCore`` does once initialised (without it, full
  collections rescan torch's and vLLM's startup objects and stall single blocks by a few hundred ms);
* a step is one engine-core iteration: ``schedule()``, the fake forward pass and ``update_from_output()``
  (in the batch-queue order of ``step_with_batch_queue`` for the AsyncScheduler);
* the recorders' background threads are stopped and their work (reducing what is left of vLLM's objects,
  packing, writing to the converter process) is done by a ``drain()`` after every recorded block, timed and
  charged to the block, so every microsecond a recorder spends in the engine process is accounted for and
  none of it lands in another variant's block.

Numbers that come out, per recorded variant against plain:

1. scheduling path: ``schedule()`` + ``update_from_output()`` per step: what the hooks add to the engine's
   critical path;
2. engine loop with all of the recorder's engine-process work charged (the hooks and the drains): what
   recording costs an engine that never waits on a device, where the recorder's thread can only run by
   taking the GIL from the scheduler (a GPU engine runs that thread while it waits on the forward pass);
   for both, the pooled mean and median per step and the spread of the per-round ratios (each round: one
   block of each variant);
3. the time spent inside the hooks, timed from within, and in the drains;
4. the converter processes' CPU time, which runs on other cores.

Records are built in the recorder's converter process (``TRACESIM_RECORD_CONVERT=process``, the default);
``--convert thread`` measures the variant that builds them in the engine process. ``--hog`` runs a process
that burns a core beside the benchmark (a machine busy with other work).

With ``--device-ms X`` each step also waits X ms with the GIL released (what a GPU forward pass looks like
to the engine-core thread) and the recorders' threads run on their own, as in a GPU engine, instead of being
drained after each block: the scheduling-path ratio then includes the threads' interference.

    python benchmarks/bench_recorder.py [--drivers 3] [--rounds 60] [--block 10] [--sync] [--convert thread]
                                        [--device-ms 0] [--hog] [--no-legacy] [--cpu-times] [--converter-nice N]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

N_REQUESTS = 256


def make_driver(scheduler_cls, *, async_scheduling: bool, max_tokens: int):
    from tracesim.record.standalone import StandaloneDriver

    driver = StandaloneDriver(scheduler_cls, async_scheduling=async_scheduling, num_blocks=40000,
                              max_num_seqs=N_REQUESTS, max_num_batched_tokens=16384)
    for i in range(N_REQUESTS):
        driver.add(f"req{i}-{i:08x}", [3 + (i + j) % 400 for j in range(32)], max_tokens=max_tokens)
    return driver


def run_block(driver, steps: int, device_s: float = 0.0) -> tuple[list, list]:
    """``steps`` engine-core iterations: (seconds in schedule + update, seconds of the whole iteration).
    ``device_s``: a GIL-free wait per iteration standing in for the forward pass."""
    sched = driver.scheduler
    queue = driver.queue
    path_s, loop_s = [], []
    clock = time.perf_counter
    for _ in range(steps):
        t0 = clock()
        out = sched.schedule()
        t1 = clock()
        queue.appendleft((out, driver.fake_output(out)))
        if device_s:
            time.sleep(device_s)
        t2 = t3 = clock()
        if len(queue) == driver.queue_size:
            old, old_output = queue.pop()
            sched.update_from_output(old, old_output)
            t3 = clock()
        path_s.append((t1 - t0) + (t3 - t2))
        loop_s.append(t3 - t0)
    return path_s, loop_s


def _no_cpu_clock() -> float:
    return 0.0


def time_hooks(recorder, cpu_times: bool = False) -> list:
    """Wrap the recorder's hook methods with timers; returns [wall seconds, thread CPU seconds] accumulating.
    The CPU time (``cpu_times``) is what the hooks themselves computed: unlike the wall time, it does not grow
    when another process takes the engine's core in the middle of a hook, so it is the load-insensitive figure.
    Off by default: reading it is a system call (``perf_counter`` is not), and on a busy machine a system call
    is where the kernel hands the core to another process: measured here, ~1/3 of the recorded steps then
    stalled for a time slice inside a hook, which the recorder itself never does."""
    spent = [0.0, 0.0]
    clock, cpu = time.perf_counter, (time.thread_time if cpu_times else _no_cpu_clock)
    for name in ("on_add", "on_schedule", "stale_before_update", "on_update"):
        method = getattr(recorder, name)

        def timed(*args, _method=method):
            t0, c0 = clock(), cpu()
            try:
                return _method(*args)
            finally:
                spent[0] += clock() - t0
                spent[1] += cpu() - c0

        setattr(recorder, name, timed)
    return spent


def freeze_gc_heap() -> None:
    try:
        from vllm.utils.gc_utils import freeze_gc_heap as vllm_freeze
    except ImportError:  # a vLLM without it: what it does
        gc.collect()
        gc.freeze()
    else:
        vllm_freeze()


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's children that have exited (the converter, once reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


VARIANTS = ("plain", "compact", "legacy")  # recorder detached; the default reduction; the one before issue 16


def attach_legacy(driver, recorder):
    """A second recorder on the same scheduler with the reduction before issue 16 (``reduce="legacy"``):
    measured in the same run, on the same requests, as the baseline."""
    import dataclasses

    from tracesim.record.config import RecorderConfig
    from tracesim.record.engine import EngineRecorder

    config = dataclasses.replace(RecorderConfig.from_env(), reduce="legacy")
    path = recorder.sink.path.replace(".msgpack", "-legacy.msgpack")
    legacy = EngineRecorder.start(driver.scheduler, is_async=recorder.is_async, config=config, path=path)
    legacy.step = recorder.step
    return legacy


def measure(args, out_dir: str, times: dict) -> None:
    """One driver: warm up, then ``args.rounds`` rounds of one block per variant; appends to ``times``."""
    from tracesim.record.scheduler import RecordingScheduler

    warmup = 20
    variants = VARIANTS if args.legacy else VARIANTS[:2]
    max_tokens = warmup + len(variants) * args.rounds * args.block + 10  # every request decodes the whole run
    driver = make_driver(RecordingScheduler, async_scheduling=not args.sync, max_tokens=max_tokens)
    sched = driver.scheduler
    recorders = {"compact": sched._tracesim}
    device_s = args.device_ms / 1000
    run_block(driver, warmup)  # admit and prefill every request: the blocks are all decode
    if args.legacy:
        recorders["legacy"] = attach_legacy(driver, recorders["compact"])
    hook_s = {}
    for name, recorder in recorders.items():
        if not device_s:
            recorder.sink.stop_thread()  # its work is done by the timed drains below
        hook_s[name] = time_hooks(recorder, args.cpu_times)
        recorder.sink.drain()
    freeze_gc_heap()  # as vLLM's EngineCore does once initialised: startup objects leave the cyclic GC's scans
    times["converter"] = times["converter"] or getattr(recorders["compact"].sink, "converter_pid", None) is not None
    times["compiled"] = recorders["compact"].reducer is not None and recorders["compact"].reducer.compiled
    children_cpu0 = children_cpu_seconds()
    cpu_clock = time.thread_time if args.cpu_times else _no_cpu_clock
    for h in hook_s.values():
        h[0] = h[1] = 0.0
    n = len(variants)
    for r in range(args.rounds):
        # Every order of the variants in turn: none always runs first or after another one.
        order = [variants[(r + i * (1 if (r // n) % 2 == 0 else -1)) % n] for i in range(n)]
        path_block, loop_block = {}, {}
        for name in order:
            recorder = recorders.get(name)
            sched._tracesim = recorder
            path_s, loop_s = run_block(driver, args.block, device_s)
            if recorder is not None and not device_s:
                t0, c0 = time.perf_counter(), cpu_clock()
                recorder.sink.drain()
                spent = time.perf_counter() - t0
                times["drain_s"][name] += spent
                times["drain_cpu_s"][name] += cpu_clock() - c0
                loop_s[-1] += spent  # charged to the block's last step
            times["path"][name].extend(path_s)
            times["loop"][name].extend(loop_s)
            path_block[name], loop_block[name] = sum(path_s), sum(loop_s)
        for name in variants[1:]:
            times["round_path"][name].append(path_block[name] / path_block["plain"])
            times["round_loop"][name].append(loop_block[name] / loop_block["plain"])
    for name in recorders:
        times["hook_s"][name] += hook_s[name][0]
        times["hook_cpu_s"][name] += hook_s[name][1]
        times["backlog_bytes"][name] = max(times["backlog_bytes"][name],
                                           getattr(recorders[name].sink, "peak_backlog_bytes", 0))
    sched._tracesim = recorders["compact"]
    if "legacy" in recorders:
        recorders["legacy"].close()
    sched.shutdown()  # waits for the converter to finish the trace
    gc.unfreeze()  # as vLLM's EngineCore does at shutdown
    times["converter_s"] += children_cpu_seconds() - children_cpu0


def start_hog():
    """A process that burns one core for the whole run (the machine busy with other work)."""
    import subprocess

    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def spread(values: list) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return (f"mean {statistics.fmean(values):.3f}  median {q[1]:.3f}  quartiles {q[0]:.3f}-{q[2]:.3f}  "
            f"min {min(values):.3f}  max {max(values):.3f}  sd {statistics.pstdev(values):.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=3, help="drivers measured one after the other")
    parser.add_argument("--rounds", type=int, default=60, help="rounds per driver (each: one block per variant)")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    parser.add_argument("--sync", action="store_true", help="vLLM's synchronous Scheduler instead of AsyncScheduler")
    parser.add_argument("--convert", choices=("process", "thread"), default="process",
                        help="where the recorder builds records (default: its converter process)")
    parser.add_argument("--device-ms", type=float, default=0.0,
                        help="GIL-free wait per step standing in for a GPU forward pass; the recorder's thread "
                             "then runs freely, as in an engine, instead of being drained after each block")
    parser.add_argument("--no-legacy", dest="legacy", action="store_false",
                        help="leave out the baseline: the reduction before issue 16 (TRACESIM_RECORD_REDUCE=legacy), "
                             "measured by default in the same rounds by a second recorder")
    parser.add_argument("--hog", action="store_true", help="run a CPU-burning process beside the benchmark")
    parser.add_argument("--cpu-times", action="store_true",
                        help="also read the engine thread's CPU time around every hook and drain (the load-insensitive "
                             "cost; the extra system calls perturb the wall-time figures on a busy machine)")
    parser.add_argument("--converter-nice", type=int, default=None,
                        help="the converter process's niceness above the engine's (TRACESIM_RECORD_CONVERTER_NICE; "
                             "default: the recorder's, 10)")
    args = parser.parse_args(argv)
    n_variants = len(VARIANTS) if args.legacy else 2
    if 20 + n_variants * args.rounds * args.block + 10 + 32 > 2048:  # the tiny model's context (tinymodel.py)
        parser.error(f"{n_variants} x --rounds x --block must stay under ~1980 steps")

    variants = VARIANTS[:n_variants]
    times: dict = {"path": {v: [] for v in variants}, "loop": {v: [] for v in variants},
                   "round_path": {v: [] for v in variants[1:]}, "round_loop": {v: [] for v in variants[1:]},
                   "drain_s": dict.fromkeys(variants, 0.0), "hook_s": dict.fromkeys(variants, 0.0),
                   "drain_cpu_s": dict.fromkeys(variants, 0.0), "hook_cpu_s": dict.fromkeys(variants, 0.0),
                   "backlog_bytes": dict.fromkeys(variants, 0),
                   "converter_s": 0.0, "converter": False, "compiled": False}
    hog = start_hog() if args.hog else None
    try:
        with tempfile.TemporaryDirectory() as out_dir:
            os.environ["TRACESIM_RECORD_DIR"] = out_dir
            os.environ["TRACESIM_RECORD_CONVERT"] = args.convert
            if args.converter_nice is not None:
                os.environ["TRACESIM_RECORD_CONVERTER_NICE"] = str(args.converter_nice)
            for d in range(args.drivers):
                measure(args, out_dir, times)
                print(f"driver {d + 1}/{args.drivers} done", file=sys.stderr)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    path, loop = times["path"], times["loop"]
    steps = len(path["compact"])
    kind = "Scheduler" if args.sync else "AsyncScheduler"
    where = "converter process" if times["converter"] else "engine process (thread)"
    print(f"{kind}, {N_REQUESTS} running requests, {args.drivers} drivers x {args.rounds} rounds x {args.block} "
          f"steps per variant; records built in: {where}; update pass: "
          f"{'compiled' if times['compiled'] else 'pure Python'}; device wait: {args.device_ms:g} ms/step"
          + (" (recorder thread running freely)" if args.device_ms else "")
          + ("; CPU hog running beside it" if hog is not None else "")
          + (f"; converter niceness +{args.converter_nice}" if args.converter_nice is not None else ""))
    for title, variant, rounds in (("scheduling path (schedule + update_from_output)", path, times["round_path"]),
                                   ("engine loop, all recorder work in the engine process charged", loop,
                                    times["round_loop"])):
        base_mean, base_median = statistics.fmean(variant["plain"]), statistics.median(variant["plain"])
        print(f"{title}:")
        print(f"  plain    mean {base_mean * 1e6:8.1f} us/step   median {base_median * 1e6:8.1f} us/step")
        for name in variants[1:]:
            mean, median = statistics.fmean(variant[name]), statistics.median(variant[name])
            print(f"  {name:8s} mean {mean * 1e6:8.1f} us/step   median {median * 1e6:8.1f} us/step   "
                  f"ratio mean {mean / base_mean:.3f}  median {median / base_median:.3f}  "
                  f"(+{(mean - base_mean) * 1e6:.1f} us/step)")
            print(f"           per-round ratios ({len(rounds[name])} rounds): {spread(rounds[name])}")
    base_mean = statistics.fmean(loop["plain"])
    for name in variants[1:]:
        hook_cpu, drain_cpu = times["hook_cpu_s"][name] / steps, times["drain_cpu_s"][name] / steps
        cpu = (f", {hook_cpu * 1e6:.1f} CPU" if args.cpu_times else "", f", {drain_cpu * 1e6:.1f} CPU; engine-process "
               f"CPU {(hook_cpu + drain_cpu) * 1e6:.1f} us/step = {(hook_cpu + drain_cpu) / base_mean * 100:.2f}% of a "
               f"plain step" if args.cpu_times else "")
        print(f"{name}: hooks {times['hook_s'][name] / steps * 1e6:.1f} us/step wall{cpu[0]} (timed from within, "
              f"timer calls included); drains {times['drain_s'][name] / steps * 1e6:.1f} us/step wall{cpu[1]}; "
              f"converter backlog peak {times['backlog_bytes'][name]} bytes")
    if times["converter"]:
        print(f"converter processes' CPU (all variants): {times['converter_s'] / steps * 1e6:.1f} us per recorded "
              f"step of each, on other cores")
    print("target: engine loop with all recorder work charged, compact / plain <= 1.03 (mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
