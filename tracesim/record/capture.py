"""What the scheduler hooks queued, reduced to plain values: the engine side of recording.

The hooks (``engine.py``) queue tuples that still hold vLLM's per-step objects (``SchedulerOutput``, the
``EngineCoreOutputs`` of ``update_from_output``). ``plain`` reads out of them just the values the records
need, as ints, strings, lists and dicts that msgpack packs at C speed, so the rest of the work
(``convert.py``: id mapping, prefill/decode split, records) can run anywhere, including in the separate
converter process (``sidecar.py``) that keeps it off the engine's interpreter lock.

The items of both stages are named types (``items.py``): ``plain`` takes a ``Queued*`` item and returns its
``Plain*`` form; control items are plain already.

Nothing here imports vllm: the objects are read by attribute, as vLLM 0.32 names them.
"""

from __future__ import annotations

from operator import attrgetter

from tracesim.record.items import PlainAdd, PlainSched, PlainUpd, QueuedAdd, QueuedSched, QueuedUpd
from tracesim.record.sampling import sampling_values

_request_id_of = attrgetter("request_id")
_token_ids_of = attrgetter("new_token_ids")
_finish_reason_of = attrgetter("finish_reason")
_new = tuple.__new__  # a NamedTuple from all its values, without its Python-level __new__


def plain(item: tuple, record_tokens: bool = False) -> tuple:
    """The plain form of a queued item (items that are plain already are returned as they are)."""
    kind = type(item)
    if kind is QueuedSched:
        return _sched(item)
    if kind is QueuedUpd:
        return _upd(item, record_tokens)
    if kind is QueuedAdd:
        return _add(item)
    return item


def _add(item: QueuedAdd) -> PlainAdd:
    # The hash list grows as outputs are appended; the hook took its length at add time (the full prompt
    # blocks). Eight bytes of each chained hash are enough to tell shared prefixes apart.
    prefixes = [bytes(h)[:8] for h in item.block_hashes[:item.n_blocks]]
    prompt = list(item.prompt_ids) if item.prompt_ids is not None else None
    params = item.params
    sampling = _sampling(params, item.logprobs_mode) if item.record_sampling else None
    return _new(PlainAdd, (PlainAdd.KIND, item.t_ns, item.req_id, prompt, getattr(params, "max_tokens", None),
                           getattr(params, "logprobs", None), prefixes, sampling))


def _sampling(params, logprobs_mode) -> list:
    """``PlainAdd.sampling``: the engine's logprobs mode, then the request's sampling values."""
    return [None if logprobs_mode is None else str(logprobs_mode), *sampling_values(params)]


def _sched(item: QueuedSched) -> PlainSched:
    out = item.out
    cached = out.scheduled_cached_reqs
    spec = out.scheduled_spec_decode_tokens
    return _new(PlainSched, (
        PlainSched.KIND, item.t0_ns, item.t1_ns, item.step, out.num_scheduled_tokens,
        [(nd.req_id, nd.num_computed_tokens) for nd in out.scheduled_new_reqs],
        list(cached.req_ids), list(cached.num_computed_tokens), _resumed_ids(cached),
        {r: len(ids) for r, ids in spec.items()} if spec else {}, item.placeholders,
        list(out.preempted_req_ids or ()), list(out.finished_req_ids), item.running, item.waiting,
        item.queue_depth, item.pause_state, float(item.kv_usage)))


def _resumed_ids(cached) -> list:
    resumed = getattr(cached, "resumed_req_ids", None)
    if resumed is not None:
        return list(resumed)
    # Older vLLMs flag each cached request instead of listing the resumed ones.
    flags = getattr(cached, "resumed_from_preemption", None) or ()
    return [req_id for req_id, flag in zip(cached.req_ids, flags) if flag]


def upd_columns(result, scheduled: dict) -> tuple:
    """(weight-version label, output ids or None when they are ``scheduled``'s ids in order, tokens sampled
    per output, finish reason per output as str or None when none finished) of an ``update_from_output``
    result ({client index: EngineCoreOutputs}). The reference of ``_fastcapture.upd_columns``; the same
    values as ``_upd`` (which uses it)."""
    label, outputs = None, []
    for batch in (result or {}).values():
        if label is None:
            label = getattr(batch, "weight_version", None)
        outputs.extend(batch.outputs)
    if label is not None and not isinstance(label, (int, str)):
        label = str(label)
    out_ids = list(map(_request_id_of, outputs))
    if out_ids == list(scheduled):
        out_ids = None
    sampled = list(map(len, map(_token_ids_of, outputs)))
    reasons = list(map(_finish_reason_of, outputs))
    reasons = None if reasons.count(None) == len(reasons) else [None if r is None else str(r) for r in reasons]
    return label, out_ids, sampled, reasons


def _upd(item: QueuedUpd, record_tokens: bool) -> PlainUpd:
    label, out_ids, sampled, reasons = upd_columns(item.result, item.num_scheduled)
    token_ids = logprobs = None
    if record_tokens:
        outputs = [o for batch in (item.result or {}).values() for o in batch.outputs]
        token_ids = [[int(t) for t in o.new_token_ids] for o in outputs]
        logprobs = list(map(_first_logprobs, outputs))
    stale = item.stale
    return _new(PlainUpd, (PlainUpd.KIND, item.t0_ns, item.t1_ns, item.step, label, out_ids, sampled, reasons,
                           list(stale) if stale else None, token_ids, logprobs))


def _first_logprobs(o) -> list | None:
    """Logprob of each sampled token (the first column vLLM reports), or None if not requested."""
    if o.new_logprobs is None:
        return None
    return [float(row[0]) for row in o.new_logprobs.logprobs]
