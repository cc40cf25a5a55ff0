"""Drive vLLM's real scheduler without an engine, as vLLM's own scheduler tests do.

The CPU platform forces async scheduling off, so the batch-queue path (schedule N+1 before N's output is
applied, output placeholders) cannot be exercised through ``LLM`` on this machine. ``StandaloneDriver``
builds a real ``Scheduler``/``AsyncScheduler`` (recorded or not) on a tiny local model config, and plays
the engine core: ``step_sync`` is ``EngineCore.step`` (schedule, fake forward, update) and ``step_async``
is ``step_with_batch_queue`` with a queue of 2 (schedule and enqueue; once the queue is full, pop the
oldest and apply its output). The fake model output samples token ``7`` (never EOS) for every request that
finished its prefill chunk, and nothing for one still in a prefill chunk.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque

os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

import torch  # noqa: E402
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from tracesim.record.tinymodel import write_tiny_model  # noqa: E402

BLOCK_SIZE = 16
SAMPLED_TOKEN = 7


def make_vllm_config(model_dir: str, *, async_scheduling: bool, max_num_seqs: int = 256,
                     max_num_batched_tokens: int = 8192, prefix_caching: bool = True,
                     num_blocks: int = 10000, max_model_len: int = 2048, block_size: int = BLOCK_SIZE,
                     enable_chunked_prefill: bool = True, **scheduler_options) -> VllmConfig:
    """``scheduler_options``: further ``SchedulerConfig`` fields (e.g. ``watermark``, ``long_prefill_token_threshold``)."""
    model_config = ModelConfig(model=model_dir, skip_tokenizer_init=True, dtype="float32", seed=0,
                               max_model_len=max_model_len)
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
        enable_chunked_prefill=enable_chunked_prefill, async_scheduling=async_scheduling, is_encoder_decoder=False,
        **scheduler_options)
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=prefix_caching)
    cache_config.num_gpu_blocks = num_blocks
    vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                             cache_config=cache_config)
    # The CPU platform turns async scheduling off while validating; we play the engine ourselves, so the
    # setting is restored (the recorder picks its scheduler class from it, as in a real engine).
    vllm_config.scheduler_config.async_scheduling = async_scheduling
    return vllm_config


class StandaloneDriver:
    """A real vLLM scheduler fed by a fake model. ``scheduler_cls``: a scheduler class or ``RecordingScheduler``.

    Raises whatever vLLM raises for an invalid configuration.
    """

    def __init__(self, scheduler_cls=None, *, async_scheduling: bool = True, model_dir: str | None = None,
                 num_blocks: int = 10000, **config):
        model_dir = model_dir or write_tiny_model(os.path.join(tempfile.gettempdir(), "tracesim-tiny-llama"))
        self.vllm_config = make_vllm_config(model_dir, async_scheduling=async_scheduling,
                                            num_blocks=num_blocks, **config)
        block_size = config.get("block_size", BLOCK_SIZE)
        spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=64, dtype=torch.float32)
        kv_cache_config = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                                        kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
        if scheduler_cls is None:
            scheduler_cls = AsyncScheduler if async_scheduling else Scheduler
        self.scheduler = scheduler_cls(vllm_config=self.vllm_config, kv_cache_config=kv_cache_config,
                                       structured_output_manager=StructuredOutputManager(self.vllm_config),
                                       block_size=block_size, log_stats=False)
        init_none_hash(sha256)
        self._block_hasher = get_request_block_hasher(block_size, sha256)
        self.queue: deque = deque()  # (scheduler_output) in flight, oldest on the right
        self.queue_size = 2 if async_scheduling else 1

    def add(self, req_id: str, prompt_ids: list, max_tokens: int) -> None:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        self.scheduler.add_request(Request(req_id, list(prompt_ids), params, None,
                                           block_hasher=self._block_hasher))

    def fake_output(self, scheduler_output) -> ModelRunnerOutput:
        req_ids = list(scheduler_output.num_scheduled_tokens)
        sampled = []
        requests = self.scheduler.requests
        for req_id in req_ids:
            request = requests.get(req_id)
            in_prefill = request is not None and request.is_prefill_chunk
            sampled.append([] if in_prefill else [SAMPLED_TOKEN])
        return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                                 sampled_token_ids=sampled)

    def step(self) -> bool:
        """One engine-core step; returns whether any work was done."""
        if len(self.queue) < self.queue_size and self.scheduler.has_requests():
            out = self.scheduler.schedule()
            # Output for a step is fixed when the step is scheduled (as a forward pass would compute it).
            self.queue.appendleft((out, self.fake_output(out)))
            if len(self.queue) < self.queue_size:
                return True
        if not self.queue:
            return False
        out, model_output = self.queue.pop()
        self.scheduler.update_from_output(out, model_output)
        return True

    def run(self, max_steps: int = 100000) -> int:
        """Step until idle; returns the number of steps taken."""
        steps = 0
        while steps < max_steps and self.step():
            steps += 1
        return steps


def run_standalone(out_path, *, groups: int = 12, n: int = 4, prompt_len: int = 80, max_tokens: int = 24,
                   arrive_every: int = 3, num_blocks: int = 48, max_num_batched_tokens: int = 192,
                   async_scheduling: bool = True, pause_at_step: int | None = 40, seed: int = 0,
                   record_tokens: bool = False):
    """Record vLLM's real (Async)Scheduler driven standalone and write the trace to ``out_path``.

    A group of ``n`` requests (shared 32-token prefix, so the prefix cache hits) arrives every
    ``arrive_every`` steps; a small KV cache (``num_blocks`` blocks of 16 tokens) forces preemption, and
    ``max_num_batched_tokens`` chunks the prefills. At ``pause_at_step`` the driver pauses like a keep-mode
    weight update: PAUSED_ALL, drain the batch queue, reset the prefix cache, resume. Returns the Trace.
    """
    import dataclasses
    import random

    from tracesim.format.trace import read_trace
    from tracesim.record.config import RecorderConfig
    from tracesim.record.engine import EngineRecorder
    from tracesim.record.scheduler import RecordingScheduler

    rng = random.Random(seed)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # The recorder reads its path from the environment in an engine; here we hand it the file directly.
    saved = EngineRecorder.start

    def start(scheduler, *, is_async, config=None, path=None):
        config = dataclasses.replace(RecorderConfig.from_env(), record_tokens=record_tokens)
        return saved(scheduler, is_async=is_async, config=config, path=out_path)

    EngineRecorder.start = start
    try:
        driver = StandaloneDriver(RecordingScheduler, async_scheduling=async_scheduling, num_blocks=num_blocks,
                                  max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=32)
    finally:
        EngineRecorder.start = saved
    from vllm.v1.core.sched.interface import PauseState

    prefix = [rng.randrange(3, 500) for _ in range(32)]
    added, step = 0, 0
    while added < groups or driver.scheduler.has_requests() or driver.queue:
        if added < groups and step % arrive_every == 0:
            prompt = prefix + [rng.randrange(3, 500) for _ in range(prompt_len - 32)]
            for i in range(n):  # vLLM's ids for sample i of request g<k>: "<i>_g<k>-<8 hex>"
                driver.add(f"{i}_g{added}-{rng.getrandbits(32):08x}", prompt, rng.randrange(max_tokens // 2,
                                                                                            max_tokens + 1))
            added += 1
        if pause_at_step is not None and step == pause_at_step:
            driver.scheduler.set_pause_state(PauseState.PAUSED_ALL)
            while driver.queue:  # keep mode: in-flight steps drain, nothing new is scheduled
                driver.step()
            driver.scheduler.reset_prefix_cache(reset_running_requests=True)
            driver.scheduler.set_pause_state(PauseState.UNPAUSED)
        driver.step()
        step += 1
    driver.scheduler.shutdown()
    return read_trace(out_path)
