"""Overhead of the recording scheduler on vLLM's scheduling path.

Drives vLLM's real scheduler standalone (no model: a fake output samples one token per request) with 256
running decode requests, with and without recording, in the same run. Target (issue 3): at most 3% more time
per step on the scheduling path.

How it is measured, so that noise and bookkeeping can neither hide nor invent the difference:

* one driver (a ``RecordingScheduler``) runs alternating blocks of ``--block`` steps with its recorder
  attached and detached (order swapped every round): slow phases of the machine hit both alike, and both
  run on the same requests and memory. Three separately built plain drivers of the same configuration
  differed by up to 16% from each other here, far more than the 3% to resolve. Detached, each hook costs
  one attribute check before calling vLLM's method;
* the GC heap is frozen after warm-up, as vLLM's ``EngineCore`` does once initialised (without it, full
  collections rescan torch's and vLLM's startup objects and stall single blocks by a few hundred ms);
* a step is one engine-core iteration: ``schedule()``, the fake forward pass and ``update_from_output()``
  (in the batch-queue order of ``step_with_batch_queue`` for the AsyncScheduler);
* the recorder's background thread is stopped and its work (reducing vLLM's objects to plain values,
  packing them, writing them to the converter process) is done by a ``drain()`` after every recorded block,
  timed, so every microsecond the recorder spends in the engine process is accounted for and none of it
  lands in a plain block.

Four numbers come out:

1. scheduling path: ``schedule()`` + ``update_from_output()`` per step, recorded vs plain: what the hooks
   add to the engine's critical path (the issue's target);
2. engine loop with all of the recorder's engine-process work charged to it (the hooks and the drains):
   what recording costs an engine that never waits on a device, where the recorder's thread can only run by
   taking the GIL from the scheduler. A GPU engine runs that thread while it waits on the forward pass;
3. the time spent inside the hooks, timed from within: the precise part of (1), which single steps vary
   too much to resolve below ~2% (per-step times move by tens of percent on a shared machine);
4. the converter process's CPU time per step, which runs on another core.

Records are built in the recorder's converter process (``TRACESIM_RECORD_CONVERT=process``, the default);
``--convert thread`` measures the variant that builds them in the engine process.

With ``--device-ms X`` each step also waits X ms with the GIL released (what a GPU forward pass looks like
to the engine-core thread) and the recorder's thread runs on its own, as in a GPU engine, instead of being
drained after each block: the scheduling-path ratio then includes the thread's interference.

    python benchmarks/bench_recorder.py [--drivers 3] [--rounds 90] [--block 10] [--sync] [--convert thread]
                                        [--device-ms 0]
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


def time_hooks(recorder) -> list:
    """Wrap the recorder's hook methods with a timer; returns the one-element list accumulating seconds."""
    spent = [0.0]
    clock = time.perf_counter
    for name in ("on_add", "on_schedule", "stale_before_update", "on_update"):
        method = getattr(recorder, name)

        def timed(*args, _method=method):
            t0 = clock()
            try:
                return _method(*args)
            finally:
                spent[0] += clock() - t0

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


def measure(args, out_dir: str, times: dict) -> None:
    """One driver: warm up, then ``args.rounds`` rounds of a plain and a recorded block; appends to ``times``."""
    from tracesim.record.scheduler import RecordingScheduler

    warmup = 20
    max_tokens = warmup + 2 * args.rounds * args.block + 10  # every request decodes through the whole run
    driver = make_driver(RecordingScheduler, async_scheduling=not args.sync, max_tokens=max_tokens)
    sched = driver.scheduler
    recorder = sched._tracesim
    sink = recorder.sink
    device_s = args.device_ms / 1000
    if not device_s:
        sink.stop_thread()  # its work is done by the timed drains below
    hook_s = time_hooks(recorder)
    run_block(driver, warmup)  # admit and prefill every request: the blocks are all decode
    sink.drain()
    freeze_gc_heap()  # as vLLM's EngineCore does once initialised: startup objects leave the cyclic GC's scans
    times["converter"] = times["converter"] or getattr(sink, "converter_pid", None) is not None
    children_cpu0 = children_cpu_seconds()
    hook_s[0] = 0.0
    for r in range(args.rounds):
        order = ("plain", "recorded") if r % 2 == 0 else ("recorded", "plain")
        block_s = {}
        for name in order:
            sched._tracesim = recorder if name == "recorded" else None
            path_s, loop_s = run_block(driver, args.block, device_s)
            if name == "recorded" and not device_s:
                t0 = time.perf_counter()
                sink.drain()
                spent = time.perf_counter() - t0
                times["drain_s"] += spent
                loop_s[-1] += spent  # charged to the block's last step
            times["path"][name].extend(path_s)
            times["loop"][name].extend(loop_s)
            block_s[name] = sum(path_s)
        times["round_ratios"].append(block_s["recorded"] / block_s["plain"])
    times["hook_s"] += hook_s[0]
    sched._tracesim = recorder
    sched.shutdown()  # waits for the converter to finish the trace
    gc.unfreeze()  # as vLLM's EngineCore does at shutdown
    times["converter_s"] += children_cpu_seconds() - children_cpu0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=3, help="drivers measured one after the other")
    parser.add_argument("--rounds", type=int, default=90, help="rounds per driver")
    parser.add_argument("--block", type=int, default=10, help="steps per block (each round: one block each)")
    parser.add_argument("--sync", action="store_true", help="vLLM's synchronous Scheduler instead of AsyncScheduler")
    parser.add_argument("--convert", choices=("process", "thread"), default="process",
                        help="where the recorder builds records (default: its converter process)")
    parser.add_argument("--device-ms", type=float, default=0.0,
                        help="GIL-free wait per step standing in for a GPU forward pass; the recorder's thread "
                             "then runs freely, as in an engine, instead of being drained after each block")
    args = parser.parse_args(argv)
    if 20 + 2 * args.rounds * args.block + 10 + 32 > 2048:  # the tiny model's context (tinymodel.py)
        parser.error("--rounds x --block must stay under ~990 steps")

    times: dict = {"path": {"plain": [], "recorded": []}, "loop": {"plain": [], "recorded": []},
                   "round_ratios": [], "drain_s": 0.0, "hook_s": 0.0, "converter_s": 0.0, "converter": False}
    with tempfile.TemporaryDirectory() as out_dir:
        os.environ["TRACESIM_RECORD_DIR"] = out_dir
        os.environ["TRACESIM_RECORD_CONVERT"] = args.convert
        for d in range(args.drivers):
            measure(args, out_dir, times)
            print(f"driver {d + 1}/{args.drivers} done", file=sys.stderr)
    path, loop = times["path"], times["loop"]
    steps = len(path["recorded"])
    round_ratios = times["round_ratios"]
    kind = "Scheduler" if args.sync else "AsyncScheduler"
    where = "converter process" if times["converter"] else "engine process (thread)"
    print(f"{kind}, {N_REQUESTS} running requests, {args.drivers} drivers x {args.rounds} rounds x {args.block} "
          f"steps each way; records built in: {where}; device wait: {args.device_ms:g} ms/step"
          + (" (recorder thread running freely)" if args.device_ms else ""))
    for title, variant in (("scheduling path (schedule + update_from_output)", path),
                           ("engine loop, all recorder work in the engine process charged", loop)):
        base_mean, rec_mean = statistics.fmean(variant["plain"]), statistics.fmean(variant["recorded"])
        base_median, rec_median = statistics.median(variant["plain"]), statistics.median(variant["recorded"])
        print(f"{title}:")
        print(f"  plain    mean {base_mean * 1e6:8.1f} us/step   median {base_median * 1e6:8.1f} us/step")
        print(f"  recorded mean {rec_mean * 1e6:8.1f} us/step   median {rec_median * 1e6:8.1f} us/step")
        print(f"  ratio    mean {rec_mean / base_mean:.3f}   median {rec_median / base_median:.3f}   "
              f"(+{(rec_mean - base_mean) * 1e6:.1f} us/step)")
    print(f"  of which the recorder's drains: {times['drain_s'] / steps * 1e6:.1f} us/step")
    print(f"time inside the hooks, timed from within (timer calls included): "
          f"{times['hook_s'] / steps * 1e6:.1f} us/step")
    if times["converter"]:
        print(f"converter process CPU: {times['converter_s'] / steps * 1e6:.1f} us/step on another core")
    print(f"per-round scheduling-path ratios: min {min(round_ratios):.3f}  median "
          f"{statistics.median(round_ratios):.3f}  max {max(round_ratios):.3f}")
    print("target: scheduling path recorded / plain <= 1.03 (mean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
