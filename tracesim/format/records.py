"""The event vocabulary: every fact a trace can hold, recorded or simulated.

Each record is a frozen, typed ``NamedTuple``. On the wire a record is a msgpack array of its fields in
declaration order (see ``docs/trace-format.md``), so the evolution rules are those of array-like structs:

* fields are only ever appended, and every appended field has a default;
* a reader drops trailing fields it does not know and fills missing trailing fields with their defaults;
* the meaning of a field never changes.

Units and clocks: every ``*_ns`` field is nanoseconds on the monotonic clock of the process that wrote the
record (a merged trace rebases every process onto the clock of its first process; see ``merge.py``).
``step`` is the engine's step index, counted from 0 by the scheduler that wrote it. ``version`` is the integer
policy (weight) version. ``side`` says who observed a fact: ``"engine"`` (inside the engine core) or
``"client"`` (the RL loop around it).
"""

from typing import Annotated, NamedTuple

import msgspec

from tracesim.format.engine_settings import EngineSettings

# Field types are real annotations: the reader validates every field against them (in C, by msgspec; see
# codec.py). Int32: token ids, which the digests hash as int32 (digest.py).
Int32 = Annotated[int, msgspec.Meta(ge=-(1 << 31), le=(1 << 31) - 1)]

# Pause states, numbered as vLLM's ``PauseState`` (vllm/v1/core/sched/interface.py).
UNPAUSED, PAUSED_NEW, PAUSED_ALL = 0, 1, 2


class ProcessInfo(NamedTuple):
    """One process that contributed records; ``proc`` indices in a trace point into the header's list."""

    role: str  # "engine-core", "client", "sim", ...
    host: str  # hostname; processes on one host share the monotonic clock
    pid: int  # operating-system process id (0 in simulated traces)
    rank: int = 0  # data-parallel rank of an engine core; 0 otherwise
    mono_anchor_ns: int = 0  # monotonic clock reading taken together with wall_anchor_ns
    wall_anchor_ns: int = 0  # time.time_ns() at the same moment


class Header(NamedTuple):
    """First frame of every trace."""

    KIND = "header"
    format_major: int  # readers refuse another major version
    format_minor: int  # readers accept newer minors, skipping fields and kinds they do not know
    tracesim_version: str  # version of the tracesim that wrote the file
    source: str  # "vllm" (recorded), "sim" (simulated) or "synthetic" (generated without an engine)
    processes: tuple[ProcessInfo, ...]  # index = proc of each record
    engine_config: EngineSettings = EngineSettings()  # the engine's settings: a map on disk (engine_settings.py)
    seed: int | None = None  # simulated traces: the seed of the run
    inputs: dict = {}  # simulated traces: base trace / scenario and perturbations that made it
    created_wall_ns: int = 0  # wall clock (time.time_ns) when the trace was started; 0 in simulated traces


# --- nested entries -------------------------------------------------------------------------------------


class SchedReq(NamedTuple):
    """One request in a scheduled step. prefill_tokens + decode_tokens + spec_tokens = tokens scheduled."""

    req_id: str
    prefill_tokens: int  # prompt (or recomputed) tokens in this step's chunk
    decode_tokens: int  # generated-token positions fed this step (1 per running decode)
    resumed: bool = False  # re-admitted after preemption in this step
    cached_tokens: int = 0  # prefix-cache hit tokens, on the step that admitted the request
    spec_tokens: int = 0  # speculative draft tokens scheduled
    computed_tokens: int = 0  # num_computed_tokens before this step
    placeholders: int = 0  # async scheduling: output placeholders outstanding after this schedule


class OutReq(NamedTuple):
    """One request's share of a step's model output, as applied by update_from_output.

    A ``stale`` frame belongs to a request that was preempted or reset while the step was in flight. vLLM
    still applies it after a plain preemption (the request resumes only once its stale share has drained);
    after a drop-mode reset the frame is discarded and ``sampled`` is 0.
    """

    req_id: str
    sampled: int  # tokens appended to the request by this output (0 in a prefill chunk)
    finish_reason: str | None = None  # "stop", "length", "abort", ... when the request finished here
    stale: bool = False  # the request was preempted or reset after this step scheduled it (see class doc)
    token_ids: tuple[Int32, ...] | None = None  # optional (recorder flag): the sampled ids
    logprobs: tuple[float, ...] | None = None  # optional (recorder flag): their logprobs


class VersionSpan(NamedTuple):
    """Output tokens [start, end) of a request were sampled by weights of ``version``."""

    version: int
    start: int
    end: int


class ConsumedSample(NamedTuple):
    """One sample in a training batch, as the trainer believes it to be."""

    req_id: str
    group_id: str | None = None
    version: int | None = None  # policy version the sample is labelled with
    digest: str | None = None  # digest of the tokens the trainer trains on
    reward: float | None = None


# --- events ---------------------------------------------------------------------------------------------


class RequestAdded(NamedTuple):
    KIND = "add"
    t_ns: int
    req_id: str
    side: str = "engine"
    group_id: str | None = None  # samples of one prompt share a group
    sample_idx: int = 0  # index within the group
    group_size: int = 1  # n samples per prompt
    prompt_len: int = 0  # tokens
    max_tokens: int | None = None
    logprobs: int | None = None  # number of logprobs requested (None: none)
    prompt_digest: str | None = None
    version: int | None = None  # client: policy version labelled at admission
    block_keys: tuple[int, ...] | None = None  # engine: prefix-cache key of each full prompt block (int; equal = shared)


class StepScheduled(NamedTuple):
    KIND = "sched"
    t_ns: int  # schedule() entered
    end_ns: int  # schedule() returned
    step: int
    reqs: tuple[SchedReq, ...] = ()  # in the scheduler's batch order
    preempted: tuple[str, ...] = ()  # req_ids preempted (KV freed, to be recomputed) by this schedule
    finished: tuple[str, ...] = ()  # req_ids the scheduler reported finished since the previous step
    waiting: int = 0  # requests waiting after this schedule
    running: int = 0  # requests running after this schedule
    queue_depth: int = 0  # steps scheduled and not yet updated, this one included
    pause_state: int = UNPAUSED
    kv_usage: float = 0.0  # fraction of KV blocks in use after this schedule


class StepExecuted(NamedTuple):
    """A forward pass on the device (simulated, or recorded by wrapping the executor)."""

    KIND = "exec"
    t_ns: int
    end_ns: int
    step: int
    version: int | None = None  # weights the forward pass ran with


class StepUpdated(NamedTuple):
    KIND = "upd"
    t_ns: int  # update_from_output entered
    end_ns: int  # returned
    step: int  # the step whose output this is
    outs: tuple[OutReq, ...] = ()
    version: int | None = None  # weight version stamped on these outputs


class Paused(NamedTuple):
    KIND = "pause"
    t_ns: int  # pause requested (client) or pause state entered (engine)
    side: str = "engine"
    mode: str | None = None  # "abort", "wait" or "keep" (client); None when unknown
    clear_cache: bool = False
    state: int = PAUSED_ALL  # engine pause state entered
    end_ns: int | None = None  # client: the pause call returned (engine drained)


class Resumed(NamedTuple):
    KIND = "resume"
    t_ns: int
    side: str = "engine"


class CacheReset(NamedTuple):
    KIND = "cache_reset"
    t_ns: int
    ok: bool  # whether the prefix cache was actually reset
    side: str = "engine"
    reset_running: bool = False  # running requests were preempted to make the reset possible


class WeightsUpdated(NamedTuple):
    KIND = "weights"
    t_ns: int  # weight write started
    end_ns: int  # weight write finished
    version: int  # version of the new weights
    side: str = "client"
    set_ns: int | None = None  # when the engine's version label changed (None: at end_ns)


class Aborted(NamedTuple):
    KIND = "abort"
    t_ns: int
    req_ids: tuple[str, ...]
    reason: str = ""
    side: str = "engine"


class OutputDelivered(NamedTuple):
    KIND = "deliver"
    t_ns: int
    req_id: str
    start_idx: int  # output position of the first token in this frame
    num_tokens: int
    finished: bool = False
    finish_reason: str | None = None
    spans: tuple[VersionSpan, ...] | None = None  # the engine reported them; usually on the final frame
    digest: str | None = None  # token_digest of all output tokens so far; always on the final frame


class RewardBound(NamedTuple):
    KIND = "reward"
    t_ns: int
    req_id: str  # the request the client believes it scored
    digest: str | None = None  # token_digest of the tokens the reward was computed on
    version: int | None = None  # policy version the client stamped on the sample
    reward: float = 0.0
    group_id: str | None = None
    worker: int = 0


class TrainerConsumed(NamedTuple):
    KIND = "consume"
    t_ns: int
    train_step: int
    samples: tuple[ConsumedSample, ...] = ()
    trainer_version: int | None = None  # policy version being trained when the batch was consumed


class SampleDropped(NamedTuple):
    """The client explicitly discarded samples (accounted for, not lost)."""

    KIND = "drop"
    t_ns: int
    req_ids: tuple[str, ...]
    reason: str = ""
    group_id: str | None = None


class RecorderLost(NamedTuple):
    """The recorder could not keep up or could not write; this many records are missing before t_ns."""

    KIND = "lost"
    t_ns: int
    count: int
    reason: str = ""


class SampleSettings(NamedTuple):
    """What defines a sample's processed sampling distribution, and its prompt: written once per request by a
    recorder asked to record logprobs (engine side: from its ``SamplingParams``; client side: what it asked).

    ``logprobs_mode`` is vLLM's: ``"raw_logprobs"`` (log-softmax of the model's raw logits),
    ``"processed_logprobs"`` (after temperature, penalties, top-k/top-p/min-p), or the ``*_logits`` variants.
    """

    KIND = "sampling"
    t_ns: int
    req_id: str
    side: str = "engine"
    logprobs_mode: str | None = None  # None: unknown (vLLM's default is "raw_logprobs")
    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k
    top_p: float = 1.0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    prompt_ids: tuple[Int32, ...] | None = None  # the prompt's token ids (parity recomputes from them)


class SampleLogprobs(NamedTuple):
    """Per-token logprobs of a sample's output tokens as one party holds them.

    ``role`` says whose: ``"returned"`` (what the engine returned to the rollout client), ``"behaviour"`` (what
    the trainer used as the behaviour policy's logprobs, the ratio's denominator) or ``"current"`` (the trainer's
    current policy). ``version`` is the policy version of the weights that computed them, where known
    (behaviour logprobs recomputed by the trainer: the trainer's version at recompute). ``logprobs`` may be None
    in simulated traces, which stamp only the version.
    """

    KIND = "logprobs"
    t_ns: int
    req_id: str
    role: str  # "returned", "behaviour" or "current"
    side: str = "client"  # "engine", "client" or "trainer"
    start_idx: int = 0  # output position of the first token
    token_ids: tuple[Int32, ...] | None = None
    logprobs: tuple[float, ...] | None = None
    version: int | None = None  # weights that computed them (None: unknown)


class WeightsFingerprint(NamedTuple):
    """A cheap fingerprint of a set of weights: published by the trainer as ``version``, or found applied on an
    engine (``side="engine"``, ``rank``) after it installed ``version``. Equal fingerprints = same weights."""

    KIND = "fingerprint"
    t_ns: int
    version: int
    fingerprint: str
    side: str = "trainer"  # "trainer" (published) or "engine" (applied)
    rank: int = 0  # engine: data-parallel / tensor-parallel rank that computed it
    method: str = ""  # how it was computed (e.g. "slices-v1"): only equal methods compare


class SampleContinued(NamedTuple):
    """The client resubmitted an aborted sample as a continuation (a partial rollout): request ``req_id``'s
    prompt is the prompt of ``from_req_id`` plus the ``carried_tokens`` output tokens the sample held when it
    was aborted, and its output continues the sample: the client's frames for ``req_id`` count positions from
    ``carried_tokens``, and its final frame's digest (and spans, when kept) cover the whole sample. Written just
    before the continuation's client ``RequestAdded``."""

    KIND = "continue"
    t_ns: int
    req_id: str  # the continuation's request id (fresh, or the aborted one's reused)
    from_req_id: str  # the aborted incarnation whose tokens it carries
    carried_tokens: int = 0  # output tokens carried into the prompt: the continuation's first output position
    group_id: str | None = None
    spans_kept: bool = True  # false: the loop keeps no version spans of the joined sample, only its first label


class ParentAdded(NamedTuple):
    """The client submitted one request with ``n > 1`` samples (``SamplingParams.n``): vLLM's frontend fans it
    out into ``n`` child requests (``ParentRequest.get_child_info``: ids ``"{index}_{parent id}"``), which the
    engine admits and runs independently. Written just before the children's client ``RequestAdded`` records
    (their ``group_id`` is ``parent_id``). With FINAL_ONLY output the client receives every child's output when
    the last child finishes; aborting the parent's id aborts every child still running."""

    KIND = "parent"
    t_ns: int
    parent_id: str  # the id the client submitted the request under
    child_ids: tuple[str, ...] = ()  # the children's request ids, by index
    side: str = "client"


class KvTransfer(NamedTuple):
    """Prefill/decode disaggregation, on the decode engine: a request's prompt KV arriving by transfer from a
    prefill instance (vLLM's KV connector). ``phase`` "start": blocks were allocated and the receive began
    (the request waits for remote KVs); "held": an abort finished the request while its transfer was in
    flight and its blocks stay allocated until the transfer completes (the connector's ``delay_free_blocks``);
    "done": the completion was applied (``finished_recving``): a live request becomes schedulable, a held
    one's blocks are freed."""

    KIND = "kv_transfer"
    t_ns: int
    req_ids: tuple[str, ...]
    phase: str  # "start" | "held" | "done"
    side: str = "engine"


__all__ = [
    "UNPAUSED", "PAUSED_NEW", "PAUSED_ALL", "ProcessInfo", "Header", "SchedReq", "OutReq", "VersionSpan",
    "ConsumedSample", "RequestAdded", "StepScheduled", "StepExecuted", "StepUpdated", "Paused", "Resumed",
    "CacheReset", "WeightsUpdated", "Aborted", "OutputDelivered", "RewardBound", "TrainerConsumed",
    "SampleDropped", "RecorderLost", "SampleSettings", "SampleLogprobs", "SampleContinued",
    "WeightsFingerprint", "ParentAdded", "KvTransfer", "EVENT_TYPES", "EVENT_KINDS", "Int32", "check_arity",
]

def check_arity(cls, n: int) -> None:
    """Hot paths (simulator, recorder) build ``cls`` records with ``tuple.__new__(cls, (all n values))``; if a
    field is appended to the record, fail at import rather than write records that lack it."""
    if len(cls._fields) != n:
        raise TypeError(f"{cls.__name__} has {len(cls._fields)} fields, a hot path builds it from {n}: "
                        "update its tuple.__new__ calls")


EVENT_TYPES: tuple = (
    RequestAdded, StepScheduled, StepExecuted, StepUpdated, Paused, Resumed, CacheReset, WeightsUpdated,
    Aborted, OutputDelivered, RewardBound, TrainerConsumed, SampleDropped, RecorderLost, SampleSettings,
    SampleLogprobs, WeightsFingerprint, SampleContinued, ParentAdded, KvTransfer,
)
EVENT_KINDS: dict = {cls.KIND: cls for cls in EVENT_TYPES}
