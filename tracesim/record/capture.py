"""What the scheduler hooks queued, reduced to plain values: the engine side of recording.

The hooks (``engine.py``) queue tuples that still hold vLLM's per-step objects (``SchedulerOutput``, the
``EngineCoreOutputs`` of ``update_from_output``). ``plain`` reads out of them just the values the records
need, as ints, strings, lists and dicts that msgpack packs at C speed, so the rest of the work
(``convert.py``: id mapping, prefill/decode split, records) can run anywhere, including in the separate
converter process (``sidecar.py``) that keeps it off the engine's interpreter lock.

Plain items (first element names the kind; the converter's ``_<kind>`` methods take the rest):

``("add", t_ns, req_id, prompt_ids | None, max_tokens, logprobs, [8-byte block hash prefix, ...])``
``("sched", t0_ns, t1_ns, step, {req_id: tokens} (batch order), [[req_id, computed], ...] (new),
  [cached req_id, ...], [their computed tokens, ...], [resumed req_id, ...], {req_id: spec tokens},
  [placeholders, ...] (batch order) | None, [preempted, ...], [finished, ...], running, waiting,
  queue_depth, pause_state, kv_usage)``
``("upd", t0_ns, t1_ns, step, weight version label, [req_id, ...] | None (None: the step's batch order),
  [sampled, ...], [finish reason | None, ...] | None (None: none finished), [stale req_id, ...] | None,
  [[token id, ...], ...] | None, [[logprob, ...] | None, ...] | None)`` (lists aligned with the ids)
``("abort", t_ns, [req_id, ...], status name)``, ``("pause", t_ns, before, after)``,
``("reset", t_ns, ok, reset_running)``, ``("lost", t_ns, count)`` (items the engine side dropped)

Nothing here imports vllm: the objects are read by attribute, as vLLM 0.32 names them.
"""

from __future__ import annotations

from operator import attrgetter

_request_id_of = attrgetter("request_id")
_token_ids_of = attrgetter("new_token_ids")
_finish_reason_of = attrgetter("finish_reason")


def plain(item: tuple, record_tokens: bool = False) -> tuple:
    """The plain form of a queued item (items that are plain already are returned as they are)."""
    kind = item[0]
    if kind == "sched":
        return _sched(*item[1:])
    if kind == "upd":
        return _upd(*item[1:], record_tokens=record_tokens)
    if kind == "add":
        return _add(*item[1:])
    return item


def _add(t_ns, req_id, prompt_ids, params, block_hashes=(), n_blocks=0):
    # The hash list grows as outputs are appended; the hook took its length at add time (the full prompt
    # blocks). Eight bytes of each chained hash are enough to tell shared prefixes apart.
    prefixes = [bytes(h)[:8] for h in block_hashes[:n_blocks]]
    prompt = list(prompt_ids) if prompt_ids is not None else None
    return ("add", t_ns, req_id, prompt, getattr(params, "max_tokens", None), getattr(params, "logprobs", None),
            prefixes)


def _sched(t0_ns, t1_ns, step, out, placeholders, running, waiting, depth, pause_state, kv_usage):
    cached = out.scheduled_cached_reqs
    spec = out.scheduled_spec_decode_tokens
    return ("sched", t0_ns, t1_ns, step, out.num_scheduled_tokens,
            [(nd.req_id, nd.num_computed_tokens) for nd in out.scheduled_new_reqs],
            list(cached.req_ids), list(cached.num_computed_tokens), _resumed_ids(cached),
            {r: len(ids) for r, ids in spec.items()} if spec else {}, placeholders,
            list(out.preempted_req_ids or ()), list(out.finished_req_ids), running, waiting, depth, pause_state,
            float(kv_usage))


def _resumed_ids(cached) -> list:
    resumed = getattr(cached, "resumed_req_ids", None)
    if resumed is not None:
        return list(resumed)
    # Older vLLMs flag each cached request instead of listing the resumed ones.
    flags = getattr(cached, "resumed_from_preemption", None) or ()
    return [req_id for req_id, flag in zip(cached.req_ids, flags) if flag]


def _upd(t0_ns, t1_ns, step, num_scheduled, result, stale, *, record_tokens=False):
    label, outputs = None, []
    for batch in (result or {}).values():
        if label is None:
            label = getattr(batch, "weight_version", None)
        outputs.extend(batch.outputs)
    if label is not None and not isinstance(label, (int, str)):
        label = str(label)
    # C-level passes over the outputs; strings only for the few that finished. vLLM emits outputs in the
    # step's batch order, so the ids are sent only when they differ from the scheduled ones.
    out_ids = list(map(_request_id_of, outputs))
    if out_ids == list(num_scheduled):
        out_ids = None
    token_ids = list(map(_token_ids_of, outputs))
    reasons = list(map(_finish_reason_of, outputs))
    reasons = None if reasons.count(None) == len(reasons) else [None if r is None else str(r) for r in reasons]
    logprobs = None
    if record_tokens:
        logprobs = list(map(_first_logprobs, outputs))
        token_ids = [[int(t) for t in ids] for ids in token_ids]
    return ("upd", t0_ns, t1_ns, step, label, out_ids, list(map(len, token_ids)), reasons,
            list(stale) if stale else None, token_ids if record_tokens else None, logprobs)


def _first_logprobs(o) -> list | None:
    """Logprob of each sampled token (the first column vLLM reports), or None if not requested."""
    if o.new_logprobs is None:
        return None
    return [float(row[0]) for row in o.new_logprobs.logprobs]
