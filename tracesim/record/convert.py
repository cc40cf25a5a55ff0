"""Turn what the scheduler hooks captured into trace records (runs on the sink's background thread).

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

from tracesim.format.digest import token_digest
from tracesim.format.records import (
    UNPAUSED, Aborted, CacheReset, OutReq, Paused, RequestAdded, Resumed, SchedReq, StepScheduled, StepUpdated,
)

_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
_CHILD = re.compile(r"^(\d+)_(.+)$")


def canonical_id(internal_id: str) -> str:
    """The id the client used: vLLM's internal id without its ``-<8 hex>`` randomisation suffix."""
    return _SUFFIX.sub("", internal_id)


def _version(label) -> int | None:
    try:
        return int(label)
    except (TypeError, ValueError):
        return None  # vLLM's "default" label before any update, or a label the user set by hand


def _block_keys(block_hashes, n: int) -> tuple | None:
    """vLLM's prefix-cache hashes of the first ``n`` (the full prompt) blocks, shortened to 63-bit ints: replay
    needs only which requests share which leading blocks, and vLLM chains the hashes (equal = equal prefix)."""
    if not n:
        return None
    return tuple(int.from_bytes(bytes(h)[:8], "big") >> 1 for h in block_hashes[:n])


class Converter:
    """Stateful (request id cache, prompt lengths) conversion of captured items to records."""

    def __init__(self, *, record_tokens: bool = False, raw_ids: bool = False):
        self.record_tokens = record_tokens
        self.raw_ids = raw_ids
        self._ids: dict = {}
        self._prompt_len: dict = {}  # internal id -> prompt tokens: splits prefill from decode

    def rid(self, internal_id: str) -> str:
        ids = self._ids
        found = ids.get(internal_id)
        if found is None:
            found = ids[internal_id] = internal_id if self.raw_ids else canonical_id(internal_id)
        return found

    def convert(self, item):
        return getattr(self, "_" + item[0])(*item[1:])

    def _add(self, t_ns, internal_id, prompt_ids, params, block_hashes=(), n_blocks=0):
        prompt_len = len(prompt_ids) if prompt_ids is not None else 0
        self._prompt_len[internal_id] = prompt_len
        req_id = self.rid(internal_id)
        group_id, sample_idx, group_size = None, 0, 1
        child = _CHILD.match(req_id)
        if child:  # one of n samples: vLLM gives children n=1, so the engine cannot know n (0 = unknown)
            group_id, sample_idx, group_size = child.group(2), int(child.group(1)), 0
        max_tokens = getattr(params, "max_tokens", None)
        logprobs = getattr(params, "logprobs", None)
        digest = token_digest(prompt_ids) if prompt_ids is not None else None
        yield RequestAdded(t_ns, req_id, "engine", group_id, sample_idx, group_size, prompt_len, max_tokens,
                           logprobs, digest, None, _block_keys(block_hashes, n_blocks))

    def _sched(self, t0_ns, t1_ns, step, out, placeholders, running, waiting, depth, pause_state, kv_usage):
        new = {nd.req_id: nd.num_computed_tokens for nd in out.scheduled_new_reqs}
        cached = out.scheduled_cached_reqs
        computed_of = dict(zip(cached.req_ids, cached.num_computed_tokens))
        resumed_ids = cached.resumed_req_ids
        spec_of = out.scheduled_spec_decode_tokens
        prompt_len = self._prompt_len
        placeholders = placeholders or {}
        reqs = []
        for internal_id, n_tokens in out.num_scheduled_tokens.items():
            spec = len(spec_of.get(internal_id, ()))
            plain = n_tokens - spec
            is_new = internal_id in new
            resumed = internal_id in resumed_ids
            computed = new[internal_id] if is_new else computed_of.get(internal_id, 0)
            prefill = is_new or resumed or plain > 1 or computed < prompt_len.get(internal_id, 0)
            reqs.append(SchedReq(
                self.rid(internal_id), plain if prefill else 0, 0 if prefill else plain, resumed,
                computed if (is_new or resumed) else 0, spec, computed, placeholders.get(internal_id, 0)))
        preempted = tuple(sorted(self.rid(r) for r in (out.preempted_req_ids or ())))
        finished = tuple(sorted(self.rid(r) for r in out.finished_req_ids))
        yield StepScheduled(t0_ns, t1_ns, step, tuple(reqs), preempted, finished, waiting, running, depth,
                            pause_state, float(kv_usage))

    def _upd(self, t0_ns, t1_ns, step, num_scheduled, result, stale):
        outputs, version = {}, None
        for batch in (result or {}).values():
            version = _version(getattr(batch, "weight_version", None)) if version is None else version
            for out in batch.outputs:
                outputs[out.request_id] = out
        stale = set(stale or ())
        outs = [self._out_req(internal_id, outputs.pop(internal_id, None), internal_id in stale)
                for internal_id in num_scheduled]
        # Requests that produced output without being in this step (e.g. stopped while preempted).
        outs.extend(self._out_req(internal_id, out, False) for internal_id, out in outputs.items())
        yield StepUpdated(t0_ns, t1_ns, step, tuple(outs), version)

    def _out_req(self, internal_id, out, stale) -> OutReq:
        if out is None:
            return OutReq(self.rid(internal_id), 0, None, stale)
        reason = str(out.finish_reason) if out.finish_reason is not None else None
        if reason is not None:
            self._prompt_len.pop(internal_id, None)
        token_ids = logprobs = None
        if self.record_tokens:
            token_ids = tuple(int(t) for t in out.new_token_ids)
            if out.new_logprobs is not None:
                logprobs = tuple(float(row[0]) for row in out.new_logprobs.logprobs)
        return OutReq(self.rid(internal_id), len(out.new_token_ids), reason, stale, token_ids, logprobs)

    def _abort(self, t_ns, internal_ids, status_name):
        for internal_id in internal_ids:
            self._prompt_len.pop(internal_id, None)
        reason = status_name.lower().removeprefix("finished_")
        yield Aborted(t_ns, tuple(self.rid(r) for r in internal_ids), reason, "engine")

    def _pause(self, t_ns, before, after):
        if after == UNPAUSED:
            yield Resumed(t_ns, "engine")
        else:  # PAUSED_ALL is only entered by mode "keep"; PAUSED_NEW by "abort" or "wait"
            yield Paused(t_ns, "engine", "keep" if after == 2 else None, False, after)

    def _reset(self, t_ns, ok, reset_running):
        yield CacheReset(t_ns, ok, "engine", reset_running)
