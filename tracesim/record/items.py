"""What the recorder's hooks hand to its converter, as named values.

Two stages (see ``capture.py`` and ``convert.py``):

* **queued** items (``Queued*``) are what the scheduler hooks (``engine.py``) put on the sink's queue, in the
  engine's hot path: they still hold vLLM's per-step objects, so building one costs a tuple and no reads
  (the legacy reduction, ``TRACESIM_RECORD_REDUCE=legacy``; by default the hooks reduce schedule and update
  steps themselves, while vLLM's objects are still in the CPU's cache: ``reduce.py``);
* **plain** items are what ``capture.plain`` reduces a queued item to on the sink's thread: ints, strings,
  lists and dicts only, which msgpack packs at C speed. They cross the pipe to the converter process
  (``sidecar.py``) as msgpack arrays ``[kind, field, ...]`` (a NamedTuple packs as exactly that) and are
  named again there by ``from_wire``; ``convert.Converter`` turns each into records. Control items (aborts,
  pauses, cache resets, losses) are plain when queued.

The ``kind`` field, first, is the tag that names the item on the wire; it always equals the class's ``KIND``.
Lists are aligned with each other where their comments say so; ids are vLLM's internal request ids.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# --- queued by the hooks (hold vLLM's objects) --------------------------------------------------------------


class QueuedAdd(NamedTuple):
    """``on_add``: a request entered the scheduler."""

    t_ns: int
    req_id: str
    prompt_ids: Any  # the request's prompt token ids (a list, or None for embeddings)
    params: Any  # its SamplingParams (max_tokens and logprobs are read)
    block_hashes: Any  # vLLM's chained prefix-cache hashes (the list keeps growing after this)
    n_blocks: int  # how many of them cover the full prompt blocks: the list's length at add time
    record_sampling: bool = False  # recorder flag record_tokens: also write the request's SampleSettings
    logprobs_mode: str | None = None  # the engine's model_config.logprobs_mode (None: unknown)


class QueuedSched(NamedTuple):
    """``on_schedule``: one ``schedule()`` call."""

    t0_ns: int  # schedule() entered
    t1_ns: int  # schedule() returned
    step: int
    out: Any  # vLLM's SchedulerOutput
    placeholders: list | None  # async scheduling: output placeholders of each scheduled request, batch order
    running: int
    waiting: int
    queue_depth: int  # steps scheduled and not yet updated, this one included
    pause_state: int
    kv_usage: float  # fraction of KV blocks in use


class QueuedUpd(NamedTuple):
    """``on_update``: one ``update_from_output()`` call."""

    t0_ns: int
    t1_ns: int
    step: int
    num_scheduled: Any  # the step's {req_id: tokens}, in batch order (SchedulerOutput.num_scheduled_tokens)
    result: Any  # what update_from_output returned: {client index: EngineCoreOutputs}
    stale: list | None  # request ids whose output in this step vLLM treats as stale


class ReducedUpd(NamedTuple):
    """``on_update`` with the compact reduction (``reduce.py``): the step reduced in the hook, but for its
    weight-version label, which vLLM's engine core stamps on the outputs only after ``update_from_output``
    returned: read on the sink's thread (``reduce.finish_upd``), as the legacy reduction reads it."""

    upd: Any  # the PlainUpd, version_label not filled in
    result: Any  # what update_from_output returned: {client index: EngineCoreOutputs}


# --- plain (values only; the converter's input) ---------------------------------------------------------


class PlainAdd(NamedTuple):
    KIND = "add"
    kind: str
    t_ns: int
    req_id: str
    prompt_ids: list | None
    max_tokens: int | None
    logprobs: int | None  # logprobs requested per token (None: none)
    block_prefixes: list  # 8-byte prefix of each full prompt block's hash
    # recorder flag record_tokens: [logprobs_mode, temperature, top_k, top_p, min_p, presence_penalty,
    # frequency_penalty, repetition_penalty] (records.SampleSettings' fields, in its order); None: not recorded
    sampling: list | None = None


class PlainSched(NamedTuple):
    KIND = "sched"
    kind: str
    t0_ns: int
    t1_ns: int
    step: int
    num_scheduled: dict  # {req_id: tokens scheduled}, in batch order
    new_reqs: list  # [(req_id, num_computed_tokens), ...] of the requests admitted by this step
    cached_ids: list  # ids of the requests already running or resumed ...
    cached_computed: list  # ... and their num_computed_tokens, aligned
    resumed_ids: list  # ids resumed from preemption by this step
    spec_of: dict  # {req_id: speculative draft tokens scheduled}
    placeholders: list | None  # async scheduling: output placeholders, aligned with num_scheduled
    preempted: list  # ids preempted by this step
    finished: list  # ids the scheduler reported finished since the previous step
    running: int
    waiting: int
    queue_depth: int
    pause_state: int
    kv_usage: float


class PlainUpd(NamedTuple):
    KIND = "upd"
    kind: str
    t0_ns: int
    t1_ns: int
    step: int
    version_label: int | str | None  # the weight-version label the engine stamped on the outputs
    out_ids: list | None  # ids of the outputs; None: exactly the step's batch, in its order
    sampled: list  # tokens sampled per output, aligned with the ids
    reasons: list | None  # finish reason per output (None: none finished), aligned
    stale: list | None  # ids whose output is stale
    token_ids: list | None  # recorder flag record_tokens: the sampled ids per output, aligned
    logprobs: list | None  # the same flag: their logprobs per output (None where not requested), aligned


class CompactSched(NamedTuple):
    """``PlainSched`` as the compact reduction (``reduce.py``) makes it in the hook: ids only when they changed.

    In a decode step the batch is the previous step's batch, in the same order, and the running requests are
    all of it: comparing the id lists costs a pointer compare per request and no string is sent or packed.
    The converter expands it back into the ``PlainSched`` the legacy reduction makes (``convert.py``). Plain
    when queued (it holds no vLLM object).
    """

    KIND = "sched_c"
    kind: str
    t0_ns: int
    t1_ns: int
    step: int
    # ids scheduled, in batch order; or, as an int, the step of the earlier CompactSched whose ids they are
    # (the converter checks that it holds that step's ids: an item lost in between cannot mislabel requests)
    batch_ids: list | int
    counts: list  # tokens scheduled, aligned with the batch
    new_reqs: list  # as PlainSched
    cached_ids: list | None  # as PlainSched; None: exactly the batch ids
    cached_computed: list
    resumed_ids: list
    spec_of: dict
    placeholders: list | None
    preempted: list
    finished: list
    running: int
    waiting: int
    queue_depth: int
    pause_state: int
    kv_usage: float


class PlainAbort(NamedTuple):
    KIND = "abort"
    kind: str
    t_ns: int
    req_ids: list
    status_name: str  # vLLM's RequestStatus name, e.g. "FINISHED_ABORTED"


class PlainPause(NamedTuple):
    KIND = "pause"
    kind: str
    t_ns: int
    before: int  # pause state before (records.UNPAUSED, PAUSED_NEW, PAUSED_ALL)
    after: int


class PlainReset(NamedTuple):
    KIND = "reset"
    kind: str
    t_ns: int
    ok: bool  # the prefix cache was reset
    reset_running: bool  # running requests were reset with it (their in-flight outputs turn stale)


class PlainLost(NamedTuple):
    KIND = "lost"
    kind: str
    t_ns: int
    count: int  # items the engine side dropped


PLAIN_TYPES: dict = {cls.KIND: cls for cls in (PlainAdd, PlainSched, PlainUpd, PlainAbort, PlainPause, PlainReset,
                                              PlainLost, CompactSched)}
_new = tuple.__new__


def from_wire(values: tuple):
    """The plain item of an array read off the converter's pipe (``[kind, field, ...]``); raise ValueError."""
    cls = PLAIN_TYPES.get(values[0]) if values else None
    if cls is None or len(values) != len(cls._fields):
        raise ValueError(f"not a recorder item: {values[:1]!r} with {len(values)} fields")
    return _new(cls, values)
