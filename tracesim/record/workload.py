"""The built-in RL-like workload behind ``tracesim record``: a real vLLM ``AsyncLLM`` on a tiny dummy model.

Rollout: groups of ``n`` samples per token-id prompt (a shared prefix, so the prefix cache hits), up to
``concurrency`` groups in flight. Each finished sample goes to one of ``reward_workers`` that takes a
random time, so rewards finish out of order; a group is complete when all its rewards are in. The trainer
consumes ``batch_groups`` complete groups per train step, and every ``update_every`` train steps updates
the weights in flight: pause (``pause_mode``, ``clear_cache``) → weight write (``write_ms``; dummy weights,
so the write is a timed wait) → set the version → resume. Groups hit by an abort-mode pause are dropped
(recorded as ``SampleDropped``) and their prompts submitted again under new request ids in the same group.

By default the loop is a correct one: no request is submitted while an update is in progress (so a sample's
version label, read at submission, is the version that will produce its tokens after an abort-mode pause
with a cache clear), groups whose version lags the trainer by more than ``max_lag`` are dropped instead of
consumed, and groups left over at the end are dropped, so every sample is accounted for.
``admit_during_pause=True`` reproduces a common bug: submissions during the pause are labelled with the old
version but served by the new weights.

Everything is recorded: the engine core through ``RecordingScheduler``, the loop through
``RolloutRecorder``; ``run_workload`` merges both into one trace.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
from dataclasses import asdict, dataclass

from tracesim.record.config import enable_engine_recording
from tracesim.record.rollout import RolloutRecorder, merge_run
from tracesim.record.tinymodel import write_tiny_model

ENGINE_FLUSH_S = 0.25


@dataclass
class WorkloadConfig:
    train_steps: int = 6
    update_every: int = 2  # train steps between weight updates
    pause_mode: str = "keep"  # "abort", "wait" or "keep"
    clear_cache: bool = False
    n: int = 4  # samples per prompt
    batch_groups: int = 2  # groups per train step
    concurrency: int = 4  # groups in flight
    prompt_len: int = 48  # tokens, of which the first 32 are shared
    max_tokens: int = 32
    reward_workers: int = 3
    reward_ms: float = 30.0  # mean reward time
    write_ms: float = 50.0  # weight write time
    seed: int = 0
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 128  # small: long prompts are prefilled in chunks
    record_tokens: bool = False
    admit_during_pause: bool = False  # True: submit (and label) while an update is in progress (a bug)
    max_lag: int = 0  # groups older than the trainer's version by more than this are dropped; -1: no bound
    num_gpu_blocks: int | None = None  # KV pool in blocks (None: what the engine's memory gives); small: preemption


def engine_args(model_dir: str, cfg: WorkloadConfig, scheduler_kwargs: dict):
    from vllm.engine.arg_utils import AsyncEngineArgs

    kv = {}
    if cfg.num_gpu_blocks is not None:
        # The CPU attention backend needs blocks of a multiple of 32 tokens; the model length must fit the pool.
        kv = dict(num_gpu_blocks_override=cfg.num_gpu_blocks, block_size=32,
                  max_model_len=min(512, (cfg.num_gpu_blocks - 1) * 32))  # vLLM keeps one null block
    return AsyncEngineArgs(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="float32",
                           max_num_seqs=cfg.max_num_seqs, enforce_eager=True, seed=cfg.seed,
                           enable_prefix_caching=True, max_num_batched_tokens=cfg.max_num_batched_tokens,
                           **{"max_model_len": 512, **kv}, **scheduler_kwargs)


class _Loop:
    """One run of the workload; all state lives on the asyncio loop (no locks needed)."""

    def __init__(self, engine, rec: RolloutRecorder, cfg: WorkloadConfig, progress):
        self.engine, self.rec, self.cfg, self.progress = engine, rec, cfg, progress
        self.rng = random.Random(cfg.seed)
        self.prefix = [self.rng.randrange(3, 500) for _ in range(32)]
        self.ready: list = []  # complete groups: (group_id, [(sid, tokens, reward, version)])
        self.next_group = 0
        self.active = 0
        self.rewards = asyncio.Semaphore(cfg.reward_workers)
        self.done = False
        self.unpaused = asyncio.Event()  # cleared while a weight update is in progress
        self.unpaused.set()

    async def run(self) -> None:
        await self.rec.set_version_async(self.engine, 0)
        feeders = [asyncio.create_task(self.feed()) for _ in range(self.cfg.concurrency)]
        for step in range(self.cfg.train_steps):
            while True:
                self.ready = self.drop_stale(self.ready)
                if len(self.ready) >= self.cfg.batch_groups:
                    break
                await asyncio.sleep(0.005)
            batch, self.ready = self.ready[:self.cfg.batch_groups], self.ready[self.cfg.batch_groups:]
            samples = [(sid, gid, version, tokens, reward) for gid, members in batch
                       for sid, tokens, reward, version in members]
            self.rec.consumed(step, samples, trainer_version=self.rec.version)
            self.progress.update(1)
            if (step + 1) % self.cfg.update_every == 0 and step + 1 < self.cfg.train_steps:
                await self.update_weights()
        self.done = True
        self.unpaused.set()
        await self.engine.abort(list(self.inflight_ids()))  # leftover rollouts are not needed
        await asyncio.gather(*feeders, return_exceptions=True)
        for gid, members in self.ready:  # complete but never trained on: accounted for, not lost
            self.rec.dropped([m[0] for m in members], "run finished", gid)
        self.ready = []

    def drop_stale(self, groups: list) -> list:
        """Drop (and record) groups whose version lags the trainer's by more than ``max_lag``."""
        if self.cfg.max_lag < 0:
            return groups
        fresh = []
        for gid, members in groups:
            lag = self.rec.version - members[0][3]
            if lag > self.cfg.max_lag:
                self.rec.dropped([m[0] for m in members], f"stale: version lag {lag}", gid)
            else:
                fresh.append((gid, members))
        return fresh

    def inflight_ids(self):
        return getattr(self, "_inflight", set())

    async def update_weights(self) -> None:
        cfg = self.cfg
        if not cfg.admit_during_pause:
            self.unpaused.clear()
        await self.rec.pause_async(self.engine, mode=cfg.pause_mode, clear_cache=cfg.clear_cache)
        async with self.rec.weight_update(self.engine, self.rec.version + 1):
            await asyncio.sleep(cfg.write_ms / 1000)  # dummy weights: the write is a timed wait
        await self.rec.resume_async(self.engine)
        self.unpaused.set()

    async def feed(self) -> None:
        while not self.done:
            group = self.next_group
            self.next_group += 1
            prompt = self.prefix + [self.rng.randrange(3, 500) for _ in range(self.cfg.prompt_len - 32)]
            attempt = 0
            while not self.done:
                members = await self.rollout(f"g{group}" + (f".r{attempt}" if attempt else ""), f"g{group}",
                                             prompt)
                if members is not None:
                    self.ready.append((f"g{group}", members))
                    break
                attempt += 1

    async def rollout(self, request_id: str, group_id: str, prompt: list):
        """Generate one group and reward it; None if the group was aborted (and dropped)."""
        from vllm import SamplingParams

        cfg = self.cfg
        await self.unpaused.wait()  # a correct loop does not submit while the weights are being replaced
        if self.done:
            return None
        max_tokens = self.rng.randrange(cfg.max_tokens // 2, cfg.max_tokens + 1)
        params = SamplingParams(n=cfg.n, max_tokens=max_tokens, temperature=1.0,  # per-request seeds fail on CPU
                                detokenize=False)
        version = self.rec.version
        ids = self.rec.submitted(request_id, prompt, n=cfg.n, max_tokens=max_tokens, group_id=group_id,
                                 version=version)
        self._inflight = self.inflight_ids() | {request_id}
        finished, aborted, tasks = {}, False, []
        async for out in self.engine.generate({"prompt_token_ids": prompt}, params, request_id=request_id):
            for sid, tokens in self.rec.output(out):
                reason = next(c.finish_reason for c in out.outputs if sid.startswith(f"{c.index}_"))
                if reason == "abort":
                    aborted = True
                    continue
                finished[sid] = tokens
                tasks.append(asyncio.create_task(self.score(sid, tokens, version, group_id)))
        self._inflight.discard(request_id)
        rewards = await asyncio.gather(*tasks)
        if aborted or len(finished) < len(ids):
            reason = "run finished" if self.done else "aborted by pause" if aborted else "incomplete"
            self.rec.dropped(ids, reason, group_id)
            return None
        return [(sid, finished[sid], reward, version) for sid, reward in zip(finished, rewards)]

    def worker_of(self, sid: str) -> int:
        return sum(map(ord, sid)) % self.cfg.reward_workers  # stable: no hash() randomisation

    async def score(self, sid: str, tokens: list, version: int, group_id: str) -> float:
        async with self.rewards:
            await asyncio.sleep(self.rng.expovariate(1000 / self.cfg.reward_ms))
            reward = (sum(tokens) % 97) / 97.0
            self.rec.reward(sid, tokens, reward, version=version, group_id=group_id, worker=self.worker_of(sid))
            return reward


async def _run_async(cfg: WorkloadConfig, work_dir: str, progress) -> str:
    from vllm.v1.engine.async_llm import AsyncLLM

    model_dir = write_tiny_model(os.path.join(work_dir, "model"))
    engine_dir = os.path.join(work_dir, "engine")
    kwargs = enable_engine_recording(engine_dir, record_tokens=cfg.record_tokens, flush_interval_s=ENGINE_FLUSH_S)
    engine = AsyncLLM.from_engine_args(engine_args(model_dir, cfg, kwargs))
    client_path = os.path.join(work_dir, "client.msgpack")
    try:
        with RolloutRecorder(client_path, engine_config={"workload": asdict(cfg)}) as rec:
            await _Loop(engine, rec, cfg, progress).run()
        await asyncio.sleep(0.3 + 2 * ENGINE_FLUSH_S)  # let the engine's recorder write its last window
    finally:
        engine.shutdown()
        del engine  # AsyncLLM.__del__ at interpreter exit would shut down a second time
    return client_path


def run_workload(cfg: WorkloadConfig, out_path: str, *, work_dir: str | None = None, progress=None):
    """Run the workload on a fresh engine and write the merged trace to ``out_path``; returns the Trace.

    Needs vllm (the CPU build works); the caller's script must be import-safe (``__main__`` guard), since
    vLLM spawns its engine core. Raises what vLLM raises if the engine cannot start.
    """
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if progress is None:
        from tqdm import tqdm

        progress = tqdm(total=cfg.train_steps, desc="train steps", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        client_path = asyncio.run(_run_async(cfg, tmp, progress))
        progress.close()
        trace = merge_run(client_path, os.path.join(tmp, "engine"), out_path)
    inputs = dict(trace.header.inputs)
    inputs.pop("merged_from", None)
    return trace
