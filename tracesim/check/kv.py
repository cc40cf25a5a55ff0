"""No stale KV: no token of a sample attends KV computed by other weights than the ones producing it.

Derived from the engine timeline: each step's forward pass runs under one version (see
``base.step_versions``) and adds KV of that version to the requests it schedules and to the prefix cache. A
request that keeps its KV across a weight update then decodes under the new version attends stale KV; a
request admitted (or resumed) with prefix-cache hits after an update, while the cache still holds blocks
computed by other weights, may attend stale KV. An effective ``CacheReset(ok=True)`` empties the prefix cache
(and, with ``reset_running``, the KV of running requests, which are recomputed); preemption and abort drop a
request's KV. Which cached blocks a hit used is not recorded: a hit is judged against the versions computed
for the same prompt (``prompt_digest``) since the last reset when there are any, else against the whole cache.

A request whose prompt KV arrived by a prefill/decode transfer (``KvTransfer`` "done" before its admission)
hits those blocks: they were computed by the prefill instance, whose weights the trace does not show, so
that admission's hits are not judged.

An external KV tier (an offload cache or KV connector) outlives a prefix-cache reset unless reset with it: the
engine then follows its ``CacheReset`` with one of ``side = "kv_tier"``, ``ok`` false when the tier kept its
blocks. What the GPU cache held then stays hittable through the tier, so a later hit is also judged against
it, until a tier reset (``ok`` true). A ``kv_tier`` record is not a refused reset.

The policy can accept one kind and not the other: ``allow_stale_running_kv`` (a running request keeps its own
KV across an update) and ``allow_stale_prefix_hits`` (a hit on blocks of other weights); ``allow_stale_kv``
accepts both and waives the invariant.
"""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ms, ref, step_versions, violation
from tracesim.format.records import Aborted, CacheReset, KvTransfer, RequestAdded, StepScheduled

KV = "no_stale_kv"
KV_TIER = "kv_tier"  # CacheReset.side of what a reset did to the external KV tier (tracesim/sim/engine.py)


def no_stale_kv(ix, policy) -> list:
    """See the module docstring. Waived by ``allow_stale_kv``; ``allow_stale_running_kv`` and
    ``allow_stale_prefix_hits`` each accept one kind."""
    if not ix.steps:
        return NotCheckable("missing engine steps (no sched records)")
    versions = step_versions(ix)
    if not ix.weights and not any(isinstance(v, int) for v in versions.values()):
        return NotCheckable("missing weight versions (no weight updates, exec or upd versions)")
    prompts: dict = {}  # req_id -> prompt digest (engine add)
    kv: dict = {}  # req_id -> {version: step that first wrote KV of it}
    cache: dict = {}  # version -> step that wrote it into the prefix cache
    by_prompt: dict = {}  # prompt digest -> {version: step}
    tier: dict = {}  # as ``cache``, for what the external KV tier kept through resets
    tier_by_prompt: dict = {}  # as ``by_prompt``, for the tier
    cleared = None  # (cache, by_prompt) the last effective GPU reset emptied: a kv_tier ok=false record keeps it
    tier_reset = None  # the CacheReset(side="kv_tier", ok=false) that last kept the tier
    flagged: set = set()
    # requests whose prompt KV arrived by a prefill/decode transfer: their first admission's hits are those
    # blocks, computed by the prefill instance under weights the trace does not show (not judged here)
    transferred: set = set()
    out = []
    for proc, rec in ix.timeline:
        t = type(rec)
        if t is StepScheduled:
            v = versions.get((proc, rec.step))
            if v is None:
                continue
            for req_id in rec.preempted:
                kv.pop(req_id, None)
            for q in rec.reqs:
                r = q.req_id
                mine = kv.get(r)
                if mine is None or q.resumed:
                    mine = kv[r] = {}
                    if r in transferred:
                        transferred.discard(r)
                    elif q.cached_tokens > 0 and r not in flagged and not policy.allow_stale_prefix_hits:
                        pd = prompts.get(r)
                        gpu = by_prompt.get(pd) if pd is not None else None
                        src = gpu or cache
                        old = next((w for w in src if w != v), None)
                        if old is None and tier:  # not from the GPU cache: loaded from the tier?
                            src = (tier_by_prompt.get(pd) if pd is not None else None) or ({} if gpu else tier)
                            old = next((w for w in src if w != v), None)
                            if old is not None:
                                flagged.add(r)
                                cause, first = _tier_cause(ix, v, tier_reset)
                                out.append(violation(
                                    KV, f"{r} reused {q.cached_tokens} cached tokens at step {rec.step} under "
                                    f"version {v} while the external KV tier held KV computed by version {old} "
                                    f"(step {src[old]}): the cache resets since kept the tier", r, rec.step,
                                    first + [ref(rec, r)], cause))
                                old = None
                        if old is not None:
                            flagged.add(r)
                            cause, first = _cause(ix, v, rec.t_ns, "the prefix cache")
                            out.append(violation(
                                KV, f"{r} reused {q.cached_tokens} prefix-cached tokens at step {rec.step} under "
                                f"version {v} while the cache held KV computed by version {old} (step "
                                f"{src[old]}) and no effective cache reset came between", r, rec.step,
                                first + [ref(rec, r)], cause))
                elif r not in flagged and not policy.allow_stale_running_kv and (len(mine) > 1 or v not in mine):
                    old = next(w for w in mine if w != v)
                    flagged.add(r)
                    cause, first = _cause(ix, v, rec.t_ns, "running requests' KV")
                    out.append(violation(
                        KV, f"{r} ran step {rec.step} under version {v} attending its own KV computed by version "
                        f"{old} (step {mine[old]}); its KV was neither recomputed nor reset after the update",
                        r, rec.step, first + [ref(rec, r)], cause))
                mine.setdefault(v, rec.step)
                cache.setdefault(v, rec.step)
                pd = prompts.get(r)
                if pd is not None:
                    by_prompt.setdefault(pd, {}).setdefault(v, rec.step)
        elif t is CacheReset:
            if rec.side == KV_TIER:
                if rec.ok:
                    tier.clear()
                    tier_by_prompt.clear()
                elif cleared is not None:  # what the GPU reset emptied lives on in the tier
                    tier_reset = rec
                    for w, step in cleared[0].items():
                        tier.setdefault(w, step)
                    for pd, vs in cleared[1].items():
                        into = tier_by_prompt.setdefault(pd, {})
                        for w, step in vs.items():
                            into.setdefault(w, step)
                cleared = None
            elif rec.ok:
                cleared = (cache, by_prompt)
                cache, by_prompt = {}, {}
                if rec.reset_running:
                    kv.clear()
        elif t is RequestAdded:
            kv.pop(rec.req_id, None)
            flagged.discard(rec.req_id)
            if rec.prompt_digest is not None:
                prompts[rec.req_id] = rec.prompt_digest
        elif t is Aborted:
            for r in rec.req_ids:
                kv.pop(r, None)
        elif t is KvTransfer and rec.phase == "done":
            transferred.update(rec.req_ids)
    return out


def _cause(ix, version, t_ns: int, what: str) -> tuple:
    """``(cause, [records])``: the update to ``version`` that made KV stale, and a cache reset the engine refused
    after it (``ok = false``: vLLM refuses while blocks are in use unless ``reset_running``) when there is one."""
    found = ix.derived.get("kv_causes")
    if found is None:
        found = ix.derived["kv_causes"] = ({w.version: w for w in ix.weights},
                                          [c for c in ix.resets if not c.ok and c.side != KV_TIER])
    updates, refused = found
    w = updates.get(version)
    if w is None:
        return None, []
    # a reset of this update cycle: after the previous update ended (loops reset before or after the write)
    prev = updates.get(version - 1) if type(version) is int else None
    since = prev.end_ns if prev is not None else -1
    bad = next((c for c in refused if since < c.t_ns <= t_ns), None)
    if bad is not None:
        return (f"the cache reset at {ms(ix, bad.t_ns)} after the update to version {version} was refused "
                f"(ok = false) and the loop went on", [ref(w), ref(bad)])
    return f"the update to version {version} at {ms(ix, w.t_ns)} kept {what}", [ref(w)]


def _tier_cause(ix, version, kept) -> tuple:
    """``(cause, [records])`` of a hit on KV the external tier kept: the reset that left the tier (``kept``,
    the ``kv_tier`` record with ``ok`` false) and the update that made its KV stale."""
    w = next((u for u in ix.weights if u.version == version), None)
    refs = ([ref(w)] if w is not None else []) + ([ref(kept)] if kept is not None else [])
    at = f" at {ms(ix, kept.t_ns)}" if kept is not None else ""
    return (f"the cache reset{at} left the external KV tier (kv_tier ok = false: reset_connector off) and a "
            f"later admission under version {version} loaded KV of older weights from it", refs)
