"""Offline batch generation through vLLM's ``LLM`` with the engine recorder on, and an independent observer.

The workload (``BatchConfig``): ``requests`` token-id prompts, each one of ``prefixes`` shared prefixes of
``prefix_len`` tokens plus its own suffix, so the prefix cache hits across requests; mixed output lengths
(``ignore_eos``); a token budget small enough that prefills chunk and a KV pool small enough that requests
are preempted and recomputed. It runs on a tiny Llama with dummy weights (``tinymodel.py``) on whatever vLLM
is installed (the CPU build here).

``scheduler`` picks the engine core's scheduler class:

* ``"auto"``: what vLLM picks (``RecordingScheduler``): on a GPU ``async_scheduling=True`` gives the
  ``AsyncScheduler`` run by ``step_with_batch_queue`` (2 batches in flight); the CPU platform turns async
  scheduling off, so there it is the synchronous ``Scheduler``;
* ``"async"``: vLLM's ``AsyncScheduler`` (output placeholders) whatever the platform says. On the CPU the core
  then runs it through the plain ``step()``, one batch in flight (``max_concurrent_batches=1``), which is what
  an engine forced onto ``AsyncScheduler`` does there. No per-request seeds: the CPU worker rejects them
  under async scheduling;
* ``"sync"``: vLLM's ``Scheduler``.

``observe=True`` runs the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and wraps its
scheduler instance with a plain observer that writes down, from vLLM's own objects and without any of the
recorder's code, every schedule (tokens per request, preempted and finished ids) and every update (sampled
token ids per request): what a test compares the recording with.

    python -m tracesim.record.batch OUT.msgpack [--scheduler auto|sync|async] [--seed N] [--requests N]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tracesim.record.config import enable_engine_recording
from tracesim.record.tinymodel import write_tiny_model

FLUSH_S = 0.25  # the engine recorder's write interval

SCHEDULERS = {"auto": "tracesim.record.scheduler.RecordingScheduler",
              "sync": "tracesim.record.scheduler.RecordingSyncScheduler",
              "async": "tracesim.record.scheduler.RecordingAsyncScheduler"}


@dataclass
class BatchConfig:
    requests: int = 48
    prefixes: int = 4  # distinct shared prefixes; request i uses prefix i % prefixes
    prefix_len: int = 32  # tokens
    suffix_len: tuple = (4, 40)  # tokens after the prefix, uniform
    max_tokens: tuple = (4, 80)  # output tokens, uniform (ignore_eos: every request runs to its max)
    num_gpu_blocks: int = 12  # KV pool: small enough to preempt
    block_size: int = 32  # tokens per KV block (the CPU attention backend needs a multiple of 32)
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 96  # token budget per step: prefills chunk
    max_model_len: int = 256  # prefix + suffix + max_tokens must fit
    scheduler: str = "auto"  # auto | sync | async (see the module doc)
    seed: int = 0
    record_tokens: bool = True  # OutReq.token_ids: what the test compares with the engine's outputs


@dataclass
class Observed:
    """What the observer saw, in call order, with vLLM's internal request ids."""

    schedules: list = field(default_factory=list)  # (num_scheduled_tokens dict, preempted set, finished set)
    updates: list = field(default_factory=list)  # {req_id: sampled token ids} per update_from_output call


@dataclass
class BatchResult:
    path: str  # the engine trace written
    outputs: dict  # request id -> (output token ids, finish reason), as LLM.generate returned them
    observed: Observed | None


def _requests(cfg: BatchConfig):
    from vllm import SamplingParams

    rng = random.Random(cfg.seed)
    prefixes = [[rng.randrange(3, 500) for _ in range(cfg.prefix_len)] for _ in range(cfg.prefixes)]
    prompts, params = [], []
    for i in range(cfg.requests):
        prompt = prefixes[i % cfg.prefixes] + [rng.randrange(3, 500) for _ in range(rng.randint(*cfg.suffix_len))]
        prompts.append({"prompt_token_ids": prompt})
        params.append(SamplingParams(max_tokens=rng.randint(*cfg.max_tokens), ignore_eos=True, temperature=1.0))
    return prompts, params


def _observe(scheduler, seen: Observed) -> None:
    """Wrap ``scheduler``'s schedule / update_from_output (instance attributes over the class's methods)."""
    schedule, update = scheduler.schedule, scheduler.update_from_output

    def observed_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        seen.schedules.append((dict(out.num_scheduled_tokens), set(out.preempted_req_ids or ()),
                               set(out.finished_req_ids)))
        return out

    def observed_update(scheduler_output, model_output):
        sampled = model_output.sampled_token_ids or []
        seen.updates.append({rid: list(sampled[i]) if i < len(sampled) else []
                             for i, rid in enumerate(model_output.req_ids)})
        return update(scheduler_output, model_output)

    scheduler.schedule, scheduler.update_from_output = observed_schedule, observed_update


def run_batch(cfg: BatchConfig, out_path: str, *, observe: bool = False, work_dir: str | None = None) -> BatchResult:
    """Generate ``cfg``'s batch with the recorder on and write the engine's trace to ``out_path``.

    The caller's script must be import-safe (``__main__`` guard) unless ``observe`` keeps the engine core in
    this process. Raises what vLLM raises if the engine cannot start."""
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {cfg.scheduler!r}")
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    if observe:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        model_dir = write_tiny_model(os.path.join(tmp, "model"))
        engine_dir = os.path.join(tmp, "engine")
        kwargs = enable_engine_recording(engine_dir, record_tokens=cfg.record_tokens, flush_interval_s=FLUSH_S)
        kwargs["scheduler_cls"] = SCHEDULERS[cfg.scheduler]
        llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="float32",
                  max_model_len=cfg.max_model_len, max_num_seqs=cfg.max_num_seqs, enforce_eager=True,
                  max_num_batched_tokens=cfg.max_num_batched_tokens, block_size=cfg.block_size,
                  num_gpu_blocks_override=cfg.num_gpu_blocks, enable_prefix_caching=True, seed=cfg.seed,
                  gpu_memory_utilization=0.3, async_scheduling=cfg.scheduler == "async", **kwargs)
        seen = None
        if observe:
            seen = Observed()
            _observe(llm.llm_engine.engine_core.engine_core.scheduler, seen)
        prompts, params = _requests(cfg)
        results = llm.generate(prompts, params, use_tqdm=False)
        outputs = {r.request_id: (tuple(r.outputs[0].token_ids), r.outputs[0].finish_reason) for r in results}
        if not observe:  # a multiprocess core is killed after a short timeout: let its recorder send its last window
            time.sleep(0.3 + 2 * FLUSH_S)
        llm.llm_engine.engine_core.shutdown()  # closes the scheduler, whose recorder writes its last records
        del llm
        paths = glob.glob(os.path.join(engine_dir, "engine-*.msgpack"))
        if len(paths) != 1:
            raise RuntimeError(f"expected one engine trace in {engine_dir}, found {paths}")
        shutil.move(paths[0], out_path)
    return BatchResult(out_path, outputs, seen)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tracesim.record.batch", description=__doc__.split("\n")[0])
    p.add_argument("out", help="engine trace to write (.msgpack)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=BatchConfig.requests)
    p.add_argument("--num-gpu-blocks", type=int, default=BatchConfig.num_gpu_blocks)
    args = p.parse_args(argv)
    cfg = BatchConfig(requests=args.requests, scheduler=args.scheduler, seed=args.seed,
                      num_gpu_blocks=args.num_gpu_blocks)
    result = run_batch(cfg, args.out)
    print(f"wrote {result.path}: {len(result.outputs)} requests, "
          f"{sum(len(t) for t, _ in result.outputs.values())} output tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
