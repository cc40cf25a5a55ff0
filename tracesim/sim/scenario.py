"""Scenario: everything a simulated run needs besides the seed and the perturbations.

A scenario has three parts, each a frozen dataclass so a run's inputs can be hashed, compared and written
into a trace header: ``Workload`` (what the rollout client submits), ``EngineConfig`` (the vLLM V1 engine
settings that matter to timing and binding) and ``LoopPolicy`` (the RL-loop policies of DESIGN §4).

``load_scenario(path)`` reads a TOML file with the tables ``[workload]``, ``[engine]``, ``[loop]`` and
``[steptime]``; unknown keys and bad values raise ``ScenarioError`` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields

from tracesim.inputs import InputError, read_toml


class ScenarioError(InputError):
    """A scenario file or value is invalid; the message names the file (when known) and the field."""


@dataclass(frozen=True)
class Workload:
    num_prompts: int = 32  # groups submitted in all (requeued retries come on top)
    group_size: int = 4  # samples per prompt (n)
    prompt_len: tuple = (64, 256)  # tokens, uniform in [lo, hi] per prompt
    output_len: tuple = (16, 128)  # tokens the sample would generate before its stop token, per sample
    max_tokens: int = 96  # sampling max_tokens: output_len above it finishes with "length"
    concurrency: int = 8  # closed loop: groups kept in flight by the rollout client
    submit_gap_us: int = 200  # client think time between two group submissions
    # Tokens of a system prefix every prompt starts with (part of prompt_len): its full blocks are the same for
    # every group, so prefix-cache hits cross groups (a chat template or system prompt shared by the dataset).
    shared_prefix_len: int = 0
    # Share of groups, in [0, 1], whose prompt is an earlier group's (drawn uniformly): duplicate prompts in the
    # dataset (grouping.py). 0: every group has its own prompt.
    duplicate_prompt_share: float = 0.0
    # "independent": a group is group_size requests of n = 1 | "parent": one request with n = group_size, fanned
    # out into children by vLLM's frontend, its output delivered when the last child finishes (parent.py)
    sampling: str = "independent"


@dataclass(frozen=True)
class EngineConfig:
    max_num_batched_tokens: int = 512  # token budget per step
    max_num_seqs: int = 64  # running requests at most
    block_size: int = 16  # tokens per KV block
    num_gpu_blocks: int = 2048  # KV blocks, the null block included (vLLM reserves one)
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = 0  # 0: no cap on one request's prefill chunk
    reserve_full_sequence: bool = True  # admit only if the whole sequence fits in KV (vLLM scheduler_reserve_full_isl)
    watermark: float = 0.0  # fraction of KV blocks kept free when admitting while others run (vLLM watermark)
    async_scheduling: bool = False  # vLLM's AsyncScheduler: output placeholders, requests scheduled ahead of output
    # Batches in flight in the engine core (vLLM's max_concurrent_batches): 1 runs the core's plain step()
    # (schedule, forward, update), > 1 step_with_batch_queue (schedule N+1 before applying N's output).
    # 0: as vLLM derives it, 2 with async scheduling, else 1. A CPU engine forced onto AsyncScheduler runs it
    # through step() with 1 (its platform turns async scheduling off in the config).
    max_concurrent_batches: int = 0
    # Who steps the core. "busy": EngineCoreProc's busy loop (AsyncLLM, or LLM with multiprocessing) steps
    # while the scheduler has requests, so an empty schedule() reports the last finished ids. "client": an
    # in-process core (LLM with VLLM_ENABLE_V1_MULTIPROCESSING=0) is stepped by LLMEngine only while the client
    # has unfinished requests: no step follows the last output.
    engine_loop: str = "busy"
    discard_stale_frames: bool = True  # False: fault_frame_to_new_incarnation = 1 (the old name of that bug)
    # Engine fault modes (docs/simulator.md "Engine fault modes"): the probability, in [0, 1], that each
    # occurrence of the fault's window goes wrong; 0 (the default) is vLLM's correct behaviour.
    fault_drop_inflight_frame: float = 0.0  # a stale-share frame (in flight at a preemption) never reaches the client
    fault_frame_to_new_incarnation: float = 0.0  # a frame voided by a reset is applied to the resumed request
    fault_resume_context_missing_tokens: float = 0.0  # a resume rebuilds the context without its stale share's tokens
    fault_duplicate_frame: float = 0.0  # a stale-share frame reaches the client twice
    sched_us: int = 150  # schedule() cost
    update_us: int = 100  # update_from_output() cost
    step_gap_us: int = 50  # engine-core overhead between update and the next schedule
    output_latency_us: int = 400  # engine core -> client transport of one output frame
    add_latency_us: int = 200  # client -> engine core transport of one request
    scheduler_backend: str = "native"  # native (scheduler.py) | vllm (vLLM's own scheduler, vllm_scheduler.py)
    # External KV tier (an offload cache / KV connector) of this many blocks beside the GPU prefix cache: evicted
    # and reset cached blocks move there, admissions hit it after the GPU cache, and only a reset with
    # reset_connector empties it (kvcache.py). 0: none. Native backend only.
    kv_offload_blocks: int = 0
    # Data-parallel engine cores (dp.py, docs/simulator.md "Data-parallel engines"): each with its own scheduler
    # and KV pool, recorded as its own process; requests routed to the least loaded rank. 1: one core.
    data_parallel_size: int = 1
    # tpu-inference#3362: the DP scheduler's finish_requests returns nothing, so an abort-mode pause aborts a
    # rank's requests without sending their abort outputs (probability per rank and pause). Needs DP > 1.
    fault_dp_finish_no_output: float = 0.0
    # Prefill/decode disaggregation (pd.py, docs/simulator.md "Prefill/decode KV transfer"): the engine is the
    # decode instance, each prompt's KV arrives by a transfer of this many µs. 0: no disaggregation.
    pd_transfer_us: int = 0
    # vllm#37837 / prime-rl#2841: an abort during a request's KV transfer frees it at once instead of holding its
    # blocks until the transfer completes (probability per such abort): the completion comes for a freed request.
    fault_pd_free_in_transfer: float = 0.0


ENGINE_FAULTS = ("fault_drop_inflight_frame", "fault_frame_to_new_incarnation", "fault_resume_context_missing_tokens",
                 "fault_duplicate_frame", "fault_dp_finish_no_output", "fault_pd_free_in_transfer")
# Faults inside the native scheduler: vLLM's own scheduler (backend "vllm") cannot behave like them.
SCHEDULER_FAULTS = ("fault_frame_to_new_incarnation", "fault_resume_context_missing_tokens")


def batch_queue_depth(cfg: EngineConfig) -> int:
    """Batches the engine core keeps in flight under ``cfg`` (see ``EngineConfig.max_concurrent_batches``)."""
    if cfg.max_concurrent_batches > 0:
        return cfg.max_concurrent_batches
    return 2 if cfg.async_scheduling else 1


@dataclass(frozen=True)
class StepTime:
    """Forward-pass cost: base + per prefill token + per decode token + per 1k tokens of context."""

    base_us: float = 2000.0
    prefill_us: float = 25.0
    decode_us: float = 60.0
    context_us_per_1k: float = 8.0


@dataclass(frozen=True)
class LoopPolicy:
    version_label: str = "spans"  # admission | first_token | finish | spans
    version_read: str = "once"  # once | late (read again after the reward await: a stale-read bug)
    reward_match: str = "id"  # id | arrival (pair reward results with samples by completion order: bug)
    pause_mode: str = "abort"  # abort | wait | keep
    clear_cache: bool = True  # reset the prefix cache at the pause
    # what the loop does with an aborted sample: drop (drop the whole group) | requeue (resubmit it from scratch)
    # | continue (a partial rollout: resubmit prompt + tokens so far for the rest of the output, same group)
    on_abort: str = "drop"
    # on_abort = "continue": the label the joined sample keeps. "spans": the version spans of every segment
    # (correct); "first": the first segment's label only, no spans (slime#2092: tokens of later versions unmasked)
    continue_label: str = "spans"
    retry_ids: str = "fresh"  # fresh | reuse (a requeued sample keeps its request id)
    # a request not finished this long after its admission is retried (0: no timeout): resubmitted from scratch
    # under a fresh or the same id (retry_ids), the first incarnation aborted first, or left running with
    # abort_on_timeout = false (an HTTP client that gives up while the server generates on: it is never accounted)
    request_timeout_ms: int = 0
    abort_on_timeout: bool = True
    timeout_retries: int = 1  # retries a sample gets by timeout; after them it waits (a bound ends the run)
    wait_for_drain: bool = True  # False: write weights without waiting for the pause to drain (bug)
    max_version_lag: int = -1  # drop groups older than this at consumption; -1: no bound enforced
    reward_workers: int = 4
    reward_us: tuple = (2000, 20000)  # reward latency per sample, uniform: workers finish out of order
    batch_groups: int = 4  # groups per training batch
    train_us: int = 30000  # one training step
    update_every: int = 2  # push weights every K training steps (0: never)
    weight_write_us: int = 20000  # writing new weights into the engine
    # where the trainer's behaviour logprobs (the ratio's denominator) come from: "none" (not recorded),
    # "engine" (returned with the tokens: the sampling weights), "recompute" (the trainer's weights at consumption)
    behaviour_logprobs: str = "none"
    # The loop's own reset_prefix_cache() call in the update cycle (NeMo-RL's refit), after the pause and before
    # the weight write, without reset_running: vLLM refuses it (ok = false) while any request holds KV blocks.
    reset_prefix_cache: bool = False
    # With data-parallel engines: the pause the loop awaits before writing weights. "all": every rank's (vLLM's
    # client); "first": the first rank's to complete (a bug: another rank may still run a forward pass).
    dp_pause_wait: str = "all"
    # What the loop does when that call is refused: "ignore" (goes on: the bug), "retry" (every
    # RESET_RETRY_US until ok; needs the pause to drain, so not with pause_mode "keep"), "reset_running"
    # (asks again with reset_running_requests = true, preempting running requests)
    on_reset_refused: str = "reset_running"
    # the call's reset_connector: also empty the external KV tier ([engine].kv_offload_blocks)
    reset_connector: bool = True
    # Who aborts the requests at the update's pause (abort_ids.py): "engine" (vLLM's pause_generation: mode "abort"
    # aborts all) | "external" (the loop first calls engine.abort(ids) with the ids it submitted) | "internal" (the
    # loop passes vLLM's internal ids as external ones: nothing is aborted, NovaSky-AI/SkyRL#1243). Not "engine":
    # the pause then aborts nothing itself and the loop waits for its abort call to return, not for the drain.
    abort_ids: str = "engine"
    # How the trainer forms training groups (grouping.py): "id" (the client's group) | "prompt" (by prompt text:
    # duplicate prompts in flight together merge) | "position" (consecutive rewarded samples: R1-V's reshape)
    group_by: str = "id"
    # sampling = "parent": what the loop does with a parent output that holds an aborted child (parent.py):
    # "handle" (its on_abort policy) | "train_rest" (trains the finished ones: bug) | "forget" (loses the group: bug)
    aborted_child: str = "handle"
    # The version publisher (publisher.py) and the weight payload (weights.py), docs/simulator.md "Publishing a
    # version and the weights served". Where the label source moves to the new version in an update cycle:
    # "before_pause" | "publish" (the write starts) | "apply" (the weights are in: correct) | "after_resume"
    label_advance: str = "apply"
    publish_aborts_all: bool = False  # the version publish aborts every request the engine holds (miles#2296)
    version_reset_at: int = 0  # the N-th update publishes version 1 again (a trainer failover); 0: never
    # what reaches the engine at a sync: "none" (the published weights) | "skip" (nothing: it keeps its weights)
    # | "reload_base" (the base checkpoint reloaded at wake-up over them) | "torn" (a mix of old and new)
    weight_sync_fault: str = "none"
    weight_fingerprints: bool = False  # record WeightsFingerprint of both sides (on with any weight_sync_fault)
    # At each update, once its pause is taken, the loop cancels every live group that would be more than
    # max_version_lag versions behind the new one (prime-rl's off-policy cancellation, cancel.py)
    cancel_off_policy: bool = False


PAUSE_MODES = ("abort", "wait", "keep")
_CHOICES = {
    "version_label": ("admission", "first_token", "finish", "spans"),
    "version_read": ("once", "late"),
    "reward_match": ("id", "arrival"),
    "pause_mode": PAUSE_MODES,
    "on_abort": ("drop", "requeue", "continue"),
    "continue_label": ("spans", "first"),
    "retry_ids": ("fresh", "reuse"),
    "behaviour_logprobs": ("none", "engine", "recompute"),
    "on_reset_refused": ("ignore", "retry", "reset_running"),
    "abort_ids": ("engine", "external", "internal"),
    "group_by": ("id", "prompt", "position"),
    "aborted_child": ("handle", "train_rest", "forget"),
    "label_advance": ("before_pause", "publish", "apply", "after_resume"),
    "weight_sync_fault": ("none", "skip", "reload_base", "torn"),
    "dp_pause_wait": ("all", "first"),
}


@dataclass(frozen=True)
class Scenario:
    workload: Workload = field(default_factory=Workload)
    engine: EngineConfig = field(default_factory=EngineConfig)
    loop: LoopPolicy = field(default_factory=LoopPolicy)
    steptime: StepTime = field(default_factory=StepTime)
    name: str = "default"

    def to_dict(self) -> dict:
        """Plain dict (lists for tuples) for a trace header; ``scenario_from_dict`` reads it back."""
        return {"name": self.name, **{part: _plain(dataclasses.asdict(getattr(self, part))) for part in _PARTS}}

    def replace(self, **parts) -> "Scenario":
        return dataclasses.replace(self, **parts)


_PARTS = {"workload": Workload, "engine": EngineConfig, "loop": LoopPolicy, "steptime": StepTime}


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def scenario_from_dict(data: dict, where: str = "scenario") -> Scenario:
    """Build a Scenario from nested tables; raise ScenarioError naming ``where`` and the bad field."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a table")
    unknown = sorted(set(data) - set(_PARTS) - {"name"})
    if unknown:
        raise ScenarioError(f"{where}: unknown table {unknown[0]!r} (expected one of {sorted(_PARTS)})")
    name = data.get("name", "default")
    if not isinstance(name, str):
        raise ScenarioError(f"{where}: field name: expected a string, got {name!r}")
    parts = {part: _build(cls, data.get(part, {}), f"{where}: [{part}]") for part, cls in _PARTS.items()}
    scenario = Scenario(name=name, **parts)
    _validate(scenario, where)
    return scenario


def _build(cls, table, where: str):
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table, got {table!r}")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ScenarioError(f"{where}: unknown field {key!r}")
        default = known[key].default
        values[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**values)


def _coerce(value, default, where: str):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ScenarioError(f"{where}: expected true or false, got {value!r}")
    elif isinstance(default, tuple):
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
                or value[0] > value[1]):
            raise ScenarioError(f"{where}: expected [lo, hi] with 0 <= lo <= hi, got {value!r}")
        return tuple(value)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ScenarioError(f"{where}: expected a non-negative number, got {value!r}")
        return float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{where}: expected an integer, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ScenarioError(f"{where}: expected a string, got {value!r}")
    return value


def _validate(s: Scenario, where: str) -> None:
    for name, choices in _CHOICES.items():
        value = getattr(s.loop, name)
        if value not in choices:
            raise ScenarioError(f"{where}: [loop].{name}: {value!r} is not one of {', '.join(choices)}")
    positive = {
        "[workload].num_prompts": s.workload.num_prompts, "[workload].group_size": s.workload.group_size,
        "[workload].max_tokens": s.workload.max_tokens, "[workload].concurrency": s.workload.concurrency,
        "[engine].max_num_batched_tokens": s.engine.max_num_batched_tokens,
        "[engine].max_num_seqs": s.engine.max_num_seqs, "[engine].block_size": s.engine.block_size,
        "[engine].num_gpu_blocks": s.engine.num_gpu_blocks - 1, "[loop].reward_workers": s.loop.reward_workers,
        "[loop].batch_groups": s.loop.batch_groups,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ScenarioError(f"{where}: {name}: must be positive, got {value}")
    if s.loop.request_timeout_ms < 0:
        raise ScenarioError(f"{where}: [loop].request_timeout_ms: must be 0 (no timeout) or positive, "
                            f"got {s.loop.request_timeout_ms}")
    if s.loop.timeout_retries < 0:
        raise ScenarioError(f"{where}: [loop].timeout_retries: must be 0 or positive, got {s.loop.timeout_retries}")
    if s.loop.request_timeout_ms and not s.loop.abort_on_timeout and s.loop.retry_ids == "reuse":
        raise ScenarioError(f"{where}: [loop].abort_on_timeout: false with retry_ids = 'reuse' adds an id that is "
                            "still running; vLLM 0.32 makes the two internal ids distinct and the model does not "
                            "follow that: use retry_ids = 'fresh' or abort_on_timeout = true")
    if s.engine.watermark >= 1.0:
        raise ScenarioError(f"{where}: [engine].watermark: must be below 1, got {s.engine.watermark}")
    need = -(-(s.workload.prompt_len[1] + s.workload.max_tokens) // s.engine.block_size)
    if need > s.engine.num_gpu_blocks - 1:
        raise ScenarioError(f"{where}: [engine].num_gpu_blocks: {s.engine.num_gpu_blocks} blocks cannot hold "
                            f"one request of {s.workload.prompt_len[1] + s.workload.max_tokens} tokens")
    if s.workload.prompt_len[0] < 1:
        raise ScenarioError(f"{where}: [workload].prompt_len: prompts need at least one token")
    if not 0 <= s.workload.shared_prefix_len <= s.workload.prompt_len[0]:
        raise ScenarioError(f"{where}: [workload].shared_prefix_len: must be in [0, the shortest prompt "
                            f"({s.workload.prompt_len[0]})], got {s.workload.shared_prefix_len}")
    if s.engine.max_concurrent_batches < 0:
        raise ScenarioError(f"{where}: [engine].max_concurrent_batches: must be 0 (derived) or positive, "
                            f"got {s.engine.max_concurrent_batches}")
    for name in ENGINE_FAULTS:
        if getattr(s.engine, name) > 1.0:
            raise ScenarioError(f"{where}: [engine].{name}: a probability, must be in [0, 1], "
                                f"got {getattr(s.engine, name)}")
    if s.engine.kv_offload_blocks < 0:
        raise ScenarioError(f"{where}: [engine].kv_offload_blocks: must be 0 (no external KV tier) or positive, "
                            f"got {s.engine.kv_offload_blocks}")
    if s.loop.reset_prefix_cache and s.loop.on_reset_refused == "retry" and s.loop.pause_mode == "keep":
        raise ScenarioError(f"{where}: [loop].on_reset_refused: 'retry' never succeeds under pause_mode 'keep' "
                            "(the held requests keep their KV blocks until resume); use 'reset_running'")
    if s.workload.duplicate_prompt_share > 1.0:
        raise ScenarioError(f"{where}: [workload].duplicate_prompt_share: a share, must be in [0, 1], "
                            f"got {s.workload.duplicate_prompt_share}")
    if s.workload.sampling not in ("independent", "parent"):
        raise ScenarioError(f"{where}: [workload].sampling: {s.workload.sampling!r} is not one of independent, parent")
    if s.loop.cancel_off_policy and s.loop.max_version_lag < 0:
        raise ScenarioError(f"{where}: [loop].cancel_off_policy: cancels groups older than max_version_lag, which "
                            "is -1 (no bound): set [loop].max_version_lag")
    if s.loop.version_reset_at < 0 or s.loop.version_reset_at == 1:
        raise ScenarioError(f"{where}: [loop].version_reset_at: must be 0 (never) or the update (2 or later) that "
                            f"publishes version 1 again, got {s.loop.version_reset_at}")
    if s.engine.engine_loop not in ENGINE_LOOPS:
        raise ScenarioError(f"{where}: [engine].engine_loop: {s.engine.engine_loop!r} is not one of "
                            f"{', '.join(ENGINE_LOOPS)}")
    validate_dp_pd(s, where)
    _validate_backend(s, where)


def refuse_in_replay(engine: EngineConfig, where: str) -> None:
    """Replay models one engine core without KV transfers: data-parallel ranks and prefill/decode transfer are
    settings of ``simulate`` only (raise ScenarioError naming the field rather than ignore them)."""
    if engine.data_parallel_size > 1:
        raise ScenarioError(f"{where}: [engine].data_parallel_size: replay runs one engine core; data-parallel ranks "
                            "are simulated only (tracesim simulate)")
    if engine.pd_transfer_us > 0:
        raise ScenarioError(f"{where}: [engine].pd_transfer_us: replay runs without KV transfers; prefill/decode "
                            "transfer is simulated only (tracesim simulate)")


def validate_dp_pd(s: Scenario, where: str) -> None:
    """Data-parallel ranks and prefill/decode transfer: their values and the settings they combine with."""
    if s.engine.data_parallel_size < 1:
        raise ScenarioError(f"{where}: [engine].data_parallel_size: must be positive, "
                            f"got {s.engine.data_parallel_size}")
    if s.engine.data_parallel_size == 1 and s.engine.fault_dp_finish_no_output > 0:
        raise ScenarioError(f"{where}: [engine].fault_dp_finish_no_output: a fault of the data-parallel scheduler, "
                            "needs data_parallel_size > 1")
    if s.engine.pd_transfer_us < 0:
        raise ScenarioError(f"{where}: [engine].pd_transfer_us: must be 0 (no disaggregation) or positive, "
                            f"got {s.engine.pd_transfer_us}")
    if s.engine.pd_transfer_us == 0 and s.engine.fault_pd_free_in_transfer > 0:
        raise ScenarioError(f"{where}: [engine].fault_pd_free_in_transfer: a fault of the KV transfer, needs "
                            "pd_transfer_us > 0")
    if s.engine.pd_transfer_us > 0 and s.engine.data_parallel_size > 1:
        raise ScenarioError(f"{where}: [engine].pd_transfer_us: prefill/decode transfer is modelled on one engine "
                            "core; use data_parallel_size = 1")
    if (s.engine.pd_transfer_us > 0 and s.loop.reset_prefix_cache and s.loop.on_reset_refused == "retry"
            and s.loop.pause_mode == "abort"):
        raise ScenarioError(f"{where}: [loop].on_reset_refused: 'retry' never succeeds under pause_mode 'abort' with "
                            "KV transfers (pd_transfer_us): requests aborted during their transfer hold their blocks "
                            "until its completion, which a paused engine does not apply; use 'reset_running' or "
                            "pause_mode 'wait'")
    if s.engine.pd_transfer_us > 0 and s.engine.scheduler_backend == "vllm":
        raise ScenarioError(f"{where}: [engine].pd_transfer_us: the vLLM backend runs without a KV connector; "
                            "use scheduler_backend = 'native'")
    if s.engine.data_parallel_size > 1 and s.engine.scheduler_backend == "vllm":
        raise ScenarioError(f"{where}: [engine].data_parallel_size: data-parallel ranks are modelled by the native "
                            "backend only; use scheduler_backend = 'native'")


ENGINE_LOOPS = ("busy", "client")


SCHEDULER_BACKENDS = ("native", "vllm")


def _validate_backend(s: Scenario, where: str) -> None:
    """``[engine].scheduler_backend``: a known backend; "vllm" needs an importable vLLM and a setting it has."""
    backend = s.engine.scheduler_backend
    if backend not in SCHEDULER_BACKENDS:
        raise ScenarioError(f"{where}: [engine].scheduler_backend: {backend!r} is not one of "
                            f"{', '.join(SCHEDULER_BACKENDS)}")
    if backend != "vllm":
        return
    from tracesim.sim.vllm_scheduler import MAX_MODEL_LEN, vllm_available

    if not vllm_available():
        raise ScenarioError(f"{where}: [engine].scheduler_backend: 'vllm' needs vLLM installed "
                            "(import vllm failed); use 'native'")
    if not s.engine.discard_stale_frames:
        raise ScenarioError(f"{where}: [engine].discard_stale_frames: false has no vLLM counterpart; "
                            "use scheduler_backend = 'native'")
    for name in SCHEDULER_FAULTS:
        if getattr(s.engine, name) > 0:
            raise ScenarioError(f"{where}: [engine].{name}: a fault inside the native scheduler, vLLM's own "
                                "scheduler has no counterpart; use scheduler_backend = 'native'")
    if s.engine.kv_offload_blocks > 0:
        raise ScenarioError(f"{where}: [engine].kv_offload_blocks: an external KV tier of the native model, the "
                            "vLLM backend runs without a KV connector; use scheduler_backend = 'native'")
    longest = s.workload.prompt_len[1] + s.workload.max_tokens
    if longest > MAX_MODEL_LEN:
        raise ScenarioError(f"{where}: [workload]: requests of up to {longest} tokens exceed the vLLM backend's "
                            f"max_model_len {MAX_MODEL_LEN}")


def load_scenario(path: str | os.PathLike) -> Scenario:
    """Read a TOML scenario; raise ScenarioError (file unreadable, bad TOML, bad field)."""
    return scenario_from_dict(read_toml(path, "scenario", ScenarioError), str(path))
