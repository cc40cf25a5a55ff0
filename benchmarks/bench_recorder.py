"""Overhead of the recording scheduler on vLLM's scheduling path.

Drives vLLM's real scheduler standalone (no model) with 256 running decode requests and times
``schedule()`` + ``update_from_output()`` per step, for the plain vLLM scheduler and the recorded one, in
the same run, interleaved in rounds so drift hits both alike. The recorder's background thread runs as it
would in an engine, so its GIL share is part of the measurement. Target: at most 3% more time per step.

    python benchmarks/bench_recorder.py [--steps 300] [--rounds 5] [--sync]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

N_REQUESTS = 256


def time_steps(scheduler_cls, *, async_scheduling: bool, steps: int, warmup: int = 10) -> list:
    """Per-step seconds of schedule + update for ``steps`` steady decode steps of 256 requests."""
    from tracesim.record.standalone import StandaloneDriver

    driver = StandaloneDriver(scheduler_cls, async_scheduling=async_scheduling, num_blocks=20000,
                              max_num_seqs=N_REQUESTS, max_num_batched_tokens=16384)
    for i in range(N_REQUESTS):
        driver.add(f"req{i}-{i:08x}", [3 + (i + j) % 400 for j in range(32)], max_tokens=1500)
    sched = driver.scheduler
    queue = []
    durations = []
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        out = sched.schedule()
        t1 = time.perf_counter()
        model_output = driver.fake_output(out)
        queue.append((out, model_output))
        spent = t1 - t0
        if len(queue) == driver.queue_size:  # async: apply the older step's output after scheduling the next
            old, old_output = queue.pop(0)
            t2 = time.perf_counter()
            sched.update_from_output(old, old_output)
            spent += time.perf_counter() - t2
        if k >= warmup:
            durations.append(spent)
    sched.shutdown()
    return durations


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sync", action="store_true", help="vLLM's synchronous Scheduler instead of AsyncScheduler")
    args = parser.parse_args(argv)

    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from tracesim.record.scheduler import RecordingScheduler

    plain_cls = Scheduler if args.sync else AsyncScheduler
    plain, recorded = [], []
    with tempfile.TemporaryDirectory() as out_dir:
        os.environ["TRACESIM_RECORD_DIR"] = out_dir
        for r in range(args.rounds):
            plain.extend(time_steps(plain_cls, async_scheduling=not args.sync, steps=args.steps))
            recorded.extend(time_steps(RecordingScheduler, async_scheduling=not args.sync, steps=args.steps))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    base_us = statistics.median(plain) * 1e6
    rec_us = statistics.median(recorded) * 1e6
    kind = "Scheduler" if args.sync else "AsyncScheduler"
    print(f"{kind}, {N_REQUESTS} running requests, {args.rounds} x {args.steps} steps each")
    print(f"plain    median {base_us:8.1f} us/step (mean {statistics.fmean(plain) * 1e6:.1f})")
    print(f"recorded median {rec_us:8.1f} us/step (mean {statistics.fmean(recorded) * 1e6:.1f})")
    print(f"ratio recorded/plain: {rec_us / base_us:.3f} (target <= 1.03); trace bytes written: {size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
