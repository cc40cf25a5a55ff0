"""Turn the plain items of ``capture.py`` into trace records (in the converter process, or the sink's thread).

Request ids: vLLM makes an internal id ``<client id>-<8 hex chars>`` for every request (and
``<i>_<client id>-<8 hex>`` for sample ``i`` of an ``n > 1`` request); ``canonical_id`` strips the random
suffix so the engine's records name requests the way the client does (``<id>`` or ``<i>_<id>``), which
the client-side recorder also uses.

Scheduled tokens are split as follows (vLLM's ``SchedulerOutput`` does not label them): spec tokens are the
request's ``scheduled_spec_decode_tokens``; of the rest, a step is prefill (a prompt chunk, or recompute
after preemption) when the request is new, resumed, has not computed its whole prompt yet, or is fed more
than one non-speculative token; otherwise it is one decode position.
"""

from __future__ import annotations

import re
from itertools import repeat

from tracesim.format.digest import token_digest
from tracesim.format.records import (
    PAUSED_ALL, UNPAUSED, Aborted, CacheReset, OutReq, Paused, RecorderLost, RequestAdded, Resumed, SchedReq,
    SampleSettings, StepScheduled, StepUpdated, check_arity,
)
from tracesim.record.items import (
    CompactSched, PlainAbort, PlainAdd, PlainLost, PlainPause, PlainReset, PlainSched, PlainUpd,
)

_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_new = tuple.__new__  # a NamedTuple from all its values, without its Python-level __new__ (hot loops)
check_arity(SchedReq, 8)
check_arity(OutReq, 6)
_CHILD = re.compile(r"^(\d+)_(.+)$")


def canonical_id(internal_id: str) -> str:
    """The id the client used: vLLM's internal id without its ``-<8 hex>`` randomisation suffix."""
    return _SUFFIX.sub("", internal_id)


def _version(label) -> int | None:
    try:
        return int(label)
    except (TypeError, ValueError):
        return None  # vLLM's "default" label before any update, or a label the user set by hand


def _block_keys(prefixes) -> tuple | None:
    """vLLM's prefix-cache hashes of the full prompt blocks (8-byte prefixes), as 63-bit ints: replay needs only
    which requests share which leading blocks, and vLLM chains the hashes (equal = equal prefix)."""
    if not prefixes:
        return None
    return tuple(int.from_bytes(h, "big") >> 1 for h in prefixes)


class Converter:
    """Stateful (request id cache, prompt lengths) conversion of captured items to records."""

    def __init__(self, *, raw_ids: bool = False):
        self.raw_ids = raw_ids
        self._ids: dict = {}
        self._prompt_len: dict = {}  # internal id -> prompt tokens: splits prefill from decode
        self._batch_of: dict = {}  # step -> its scheduled ids, until its update arrives
        self._prev_batch = None  # the ids of the last CompactSched received ...
        self._prev_step = -1  # ... and its step: what a successor's batch_ids (a step) may name
        self._handlers = {PlainAdd: self._add, PlainSched: self._sched, PlainUpd: self._upd, PlainAbort: self._abort,
                          PlainPause: self._pause, PlainReset: self._reset, PlainLost: self._lost,
                          CompactSched: self._compact_sched}

    def rid(self, internal_id: str) -> str:
        ids = self._ids
        found = ids.get(internal_id)
        if found is None:
            found = ids[internal_id] = internal_id if self.raw_ids else canonical_id(internal_id)
        return found

    def convert(self, item):
        """The records of one plain item (``capture.plain``; ``items.Plain*``)."""
        return self._handlers[type(item)](item)

    def _add(self, item: PlainAdd):
        prompt_ids, internal_id = item.prompt_ids, item.req_id
        prompt_len = len(prompt_ids) if prompt_ids is not None else 0
        self._prompt_len[internal_id] = prompt_len
        req_id = self.rid(internal_id)
        group_id, sample_idx, group_size = None, 0, 1
        child = _CHILD.match(req_id)
        if child:  # one of n samples: vLLM gives children n=1, so the engine cannot know n (0 = unknown)
            group_id, sample_idx, group_size = child.group(2), int(child.group(1)), 0
        digest = token_digest(prompt_ids) if prompt_ids is not None else None
        yield RequestAdded(item.t_ns, req_id, "engine", group_id, sample_idx, group_size, prompt_len,
                           item.max_tokens, item.logprobs, digest, None, _block_keys(item.block_prefixes))
        if item.sampling is not None:  # recorder flag record_tokens: what parity recomputes the logprobs under
            yield SampleSettings(item.t_ns, req_id, "engine", *item.sampling,
                                 tuple(prompt_ids) if prompt_ids is not None else None)

    def _sched(self, item: PlainSched):
        num_scheduled, spec_of, step = item.num_scheduled, item.spec_of, item.step
        new = dict(item.new_reqs)
        computed_of = dict(zip(item.cached_ids, item.cached_computed))
        resumed_ids = set(item.resumed_ids)
        prompt_len = self._prompt_len
        rid, known = self.rid, self._ids.get
        self._batch_of[step] = list(num_scheduled)  # the order update_from_output reports outputs in
        reqs = []
        append = reqs.append
        # Once per request per step (the converter's hot loop): locals, and records built with tuple.__new__.
        for (internal_id, n_tokens), held in zip(num_scheduled.items(), item.placeholders or repeat(0)):
            spec = spec_of.get(internal_id, 0)
            plain = n_tokens - spec
            is_new = internal_id in new
            resumed = internal_id in resumed_ids
            computed = new[internal_id] if is_new else computed_of.get(internal_id, 0)
            prefill = is_new or resumed or plain > 1 or computed < prompt_len.get(internal_id, 0)
            append(_new(SchedReq, (
                known(internal_id) or rid(internal_id), plain if prefill else 0, 0 if prefill else plain,
                resumed, computed if (is_new or resumed) else 0, spec, computed, held)))
        yield StepScheduled(item.t0_ns, item.t1_ns, step, tuple(reqs), tuple(sorted(map(rid, item.preempted))),
                            tuple(sorted(map(rid, item.finished))), item.waiting, item.running, item.queue_depth,
                            item.pause_state, float(item.kv_usage))

    def _compact_sched(self, item: CompactSched):
        """``reduce.StepReducer``'s schedule item: expanded into the ``PlainSched`` the legacy reduction makes."""
        ids = item.batch_ids
        if isinstance(ids, int):  # the ids of step `ids`, which must be the last schedule item received
            if ids != self._prev_step or self._prev_batch is None:
                raise ValueError(f"step {item.step} reuses the batch of step {ids}, but the last batch received "
                                 f"is step {self._prev_step}'s (an item was lost)")
            ids = self._prev_batch
        else:
            self._prev_batch = ids
        self._prev_step = item.step
        cached_ids = ids if item.cached_ids is None else item.cached_ids
        return self._sched(_new(PlainSched, (
            PlainSched.KIND, item.t0_ns, item.t1_ns, item.step, dict(zip(ids, item.counts)), item.new_reqs,
            cached_ids, item.cached_computed, item.resumed_ids, item.spec_of, item.placeholders, item.preempted,
            item.finished, item.running, item.waiting, item.queue_depth, item.pause_state, item.kv_usage)))

    def _upd(self, item: PlainUpd):
        out_ids, sampled, reasons, stale = item.out_ids, item.sampled, item.reasons, item.stale
        token_ids, logprobs = item.token_ids, item.logprobs
        t0_ns, t1_ns, step, version = item.t0_ns, item.t1_ns, item.step, _version(item.version_label)
        batch = self._batch_of.pop(step, None)
        if out_ids is None:
            out_ids = batch or ()
        if batch is None:  # the step's schedule record was lost: its outputs are all we know of its batch
            batch = out_ids
        if out_ids is batch and reasons is None and not stale and token_ids is None:
            # The usual step: every scheduled request sampled in batch order, none finished or stale.
            rid, known = self.rid, self._ids.get
            records = [_new(OutReq, (known(i) or rid(i), n, None, False, None, None)) for i, n in zip(batch, sampled)]
            yield StepUpdated(t0_ns, t1_ns, step, tuple(records), version)
            return
        n = len(out_ids)
        by_id = dict(zip(out_ids, zip(sampled, reasons or repeat(None, n), token_ids or repeat(None, n),
                                      logprobs or repeat(None, n))))
        stale = set(stale or ())
        records = [self._out_req(internal_id, by_id.pop(internal_id, None), internal_id in stale)
                   for internal_id in batch]
        # Requests that produced output without being in this step (e.g. stopped while preempted).
        records.extend(self._out_req(internal_id, out, False) for internal_id, out in by_id.items())
        yield StepUpdated(t0_ns, t1_ns, step, tuple(records), version)

    def _out_req(self, internal_id, out, stale) -> OutReq:
        if out is None:
            return OutReq(self.rid(internal_id), 0, None, stale)
        sampled, reason, token_ids, logprobs = out
        if reason is not None:
            self._prompt_len.pop(internal_id, None)
        return OutReq(self.rid(internal_id), sampled, reason, stale,
                      tuple(token_ids) if token_ids is not None else None,
                      tuple(logprobs) if logprobs is not None else None)

    def _abort(self, item: PlainAbort):
        for internal_id in item.req_ids:
            self._prompt_len.pop(internal_id, None)
        reason = item.status_name.lower().removeprefix("finished_")
        yield Aborted(item.t_ns, tuple(self.rid(r) for r in item.req_ids), reason, "engine")

    def _pause(self, item: PlainPause):
        if item.after == UNPAUSED:
            yield Resumed(item.t_ns, "engine")
        else:  # PAUSED_ALL is only entered by mode "keep"; PAUSED_NEW by "abort" or "wait"
            yield Paused(item.t_ns, "engine", "keep" if item.after == PAUSED_ALL else None, False, item.after)

    def _reset(self, item: PlainReset):
        yield CacheReset(item.t_ns, item.ok, "engine", item.reset_running)

    def _lost(self, item: PlainLost):
        yield RecorderLost(item.t_ns, item.count, "dropped")
