"""Behaviour logprobs come from the policy that sampled the tokens.

The importance ratio's denominator must be the sampling policy's probability of each token. A trainer that
recomputes it (``old_log_prob``) with its current weights gets another policy's numbers for every token sampled
before its last update: in an asynchronous loop that is every stale sample, and no label or digest shows it.
``SampleLogprobs`` records of role "behaviour" say which version computed the logprobs of which tokens; the
version that sampled each token comes from the engine's steps, else the delivered version spans
(``versions.production_of``, as ``tokens_from_labelled_version`` derives it).

A behaviour record covers its ``logprobs`` (or ``token_ids``) from ``start_idx``; a record that carries neither
(simulated traces stamp only the version) covers up to the next record of the same computation (same sample,
same ``t_ns``), the last one up to the end of the sample's output.
"""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ref, violation
from tracesim.check.versions import production_of

BEHAVIOUR = "behaviour_logprobs_from_sampling_policy"

_NEWER = ("the behaviour logprobs were computed by newer weights than those that sampled the tokens "
          "(recomputed by the trainer after a weight update)")
_OLDER = "the behaviour logprobs were computed by older weights than those that sampled the tokens"


def behaviour_logprobs_from_sampling_policy(ix, policy) -> list:
    """For every consumed sample with behaviour logprobs of known version, each token's behaviour logprob was
    computed by the version that sampled the token."""
    by_req: dict = {}
    for r in ix.sample_logprobs:
        if r.role == "behaviour" and r.version is not None:
            by_req.setdefault(r.req_id, []).append(r)
    if not by_req:
        return NotCheckable("missing behaviour logprobs with a version (no SampleLogprobs of role \"behaviour\")")
    out, judged = [], 0
    for req_id, recs in by_req.items():
        c = _consumed_incarnation(ix, req_id)
        if c is None:
            continue
        runs, _from_engine = production_of(ix, c)
        runs = [r for r in runs if type(r[0]) is int and r[2] > r[1]]
        if not runs:
            continue
        judged += 1
        length = max(r[2] for r in runs)
        bad = [(rec, a, b, run) for rec, a, b in _ranges(recs, length) for run in runs
               if run[1] < b and run[2] > a and run[0] != rec.version]
        if not bad:
            continue
        rec, a, b, run = bad[0]
        lo, hi = max(a, run[1]), min(b, run[2])
        off = rec.version - run[0]
        more = sum(min(b2, r2[2]) - max(a2, r2[1]) for _x, a2, b2, r2 in bad) - (hi - lo)
        tc = c.consumed[0][0]
        out.append(violation(
            BEHAVIOUR, f"the behaviour logprobs of tokens {lo}..{hi} of {req_id} were computed by version "
            f"{rec.version}, but version {run[0]} sampled them ({abs(off)} version{'s' if abs(off) != 1 else ''} "
            f"{'newer' if off > 0 else 'older'})" + (f"; {more} more token(s) of the sample likewise" if more else ""),
            req_id, run[3], events=sorted([ref(run[4], req_id, step=run[3]), ref(tc, req_id), ref(rec)],
                                          key=lambda e: e.t_ns),
            cause=_NEWER if off > 0 else _OLDER))
    if not judged:
        return NotCheckable("missing the versions that sampled the tokens of the consumed samples with "
                            "behaviour logprobs")
    return out


def _consumed_incarnation(ix, req_id: str):
    """The client incarnation of ``req_id`` the trainer consumed (the last one), or None."""
    for c in reversed(ix.client.get(req_id) or ()):
        if c.consumed:
            return c
    return None


def _ranges(recs, length: int) -> list:
    """``(record, start, end)`` output positions each behaviour record covers (see the module docstring)."""
    out = []
    by_time: dict = {}
    for r in recs:
        by_time.setdefault(r.t_ns, []).append(r)
    for group in by_time.values():
        group.sort(key=lambda r: r.start_idx)
        for i, r in enumerate(group):
            values = r.logprobs if r.logprobs is not None else r.token_ids
            if values is not None:
                end = r.start_idx + len(values)
            else:
                end = group[i + 1].start_idx if i + 1 < len(group) else length
            if end > r.start_idx:
                out.append((r, r.start_idx, end))
    return out
