"""What a trace alone proves about behaviour logprobs (no model needed; ``tracesim parity`` recomputes them).

* BEHAVIOUR: the trainer's behaviour logprobs (``SampleLogprobs`` role ``behaviour``) of a sample's tokens are
  the ones the engine returned for the same tokens (client ``SampleLogprobs`` role ``returned``, else the engine's
  ``OutReq.logprobs``), within ``TOLERANCE`` nats of mean |Δ| over the compared tokens. A trainer that recomputes
  them with its own weights, precision or settings breaks this, and the importance ratio carries the gap.
* PROCESSED: when the trainer uses the engine's numbers as behaviour logprobs (they match, as above), they must be
  the logprobs of the distribution the engine sampled from: an engine whose ``logprobs_mode`` is ``raw_*``
  returns the raw model's, which differ from the sampling distribution whenever the sample's settings change it
  (temperature != 1, penalties, top-k/top-p/min-p). ``logprobs_mode`` None (not recorded) is not judged.

Both are not checkable on traces without the records (recorded with ``record_tokens`` /
``RolloutRecorder(record_logprobs=True)`` and ``trainer_logprobs``).
"""

from __future__ import annotations

import math

from tracesim.check.base import NotCheckable, ref, violation
from tracesim.parity.processing import changes_distribution

BEHAVIOUR = "behaviour_logprobs_match_returned"
PROCESSED = "logprobs_processed_as_trained"
TOLERANCE = 1e-3  # nats: the engine's own numbers copied through msgpack floats agree far closer than this

CAUSE_RECOMPUTED = "the trainer's behaviour logprobs are not the ones the engine returned for these tokens"
CAUSE_OTHER_TOKENS = "the trainer's behaviour logprobs are for other tokens than the engine returned"
CAUSE_RAW = ("the engine returned raw-model logprobs (logprobs_mode raw_*) and the trainer used them as the "
             "behaviour policy's, while the sampling settings change the distribution")


def _returned(ix) -> dict:
    """req_id -> (output position -> (token id, logprob), record): client 'returned' first, else the engine's."""
    out: dict = {}
    for r in ix.sample_logprobs:
        if r.role == "returned" and r.token_ids is not None and r.logprobs is not None:
            pos, _ = out.setdefault(r.req_id, ({}, r))
            for i, (tok, lp) in enumerate(zip(r.token_ids, r.logprobs)):
                pos[r.start_idx + i] = (tok, lp)
            out[r.req_id] = (pos, r)
    engine: dict = {}
    for st in ix.step_order:
        upd = st.upd
        if upd is None:
            continue
        for o in upd.outs:
            if o.req_id in out or o.token_ids is None or o.logprobs is None or not o.sampled:
                continue
            pos, _ = engine.get(o.req_id) or ({}, upd)
            base = len(pos)
            for i, (tok, lp) in enumerate(zip(o.token_ids, o.logprobs)):
                pos[base + i] = (tok, lp)
            engine[o.req_id] = (pos, upd)
    out.update(engine)
    return out


def _compare(behaviour, returned):
    """``(mean |Δ|, compared, other_tokens)`` of a behaviour record against the returned positions."""
    diffs, other = [], 0
    for i, (tok, lp) in enumerate(zip(behaviour.token_ids, behaviour.logprobs)):
        got = returned.get(behaviour.start_idx + i)
        if got is None:
            continue
        if got[0] != tok:
            other += 1
        elif math.isfinite(lp) and math.isfinite(got[1]):
            diffs.append(abs(lp - got[1]))
    return (sum(diffs) / len(diffs) if diffs else 0.0), len(diffs), other


def _behaviour(ix) -> list:
    return [r for r in ix.sample_logprobs if r.role == "behaviour" and r.token_ids is not None
            and r.logprobs is not None]


def behaviour_logprobs_match_returned(ix, policy=None):
    behaviour = _behaviour(ix)
    if not behaviour:
        return NotCheckable("missing the trainer's behaviour logprobs (SampleLogprobs role behaviour)")
    returned = _returned(ix)
    if not any(r.req_id in returned for r in behaviour):
        return NotCheckable("missing the engine's returned logprobs (SampleLogprobs role returned, or OutReq.logprobs)")
    found = []
    for b in behaviour:
        got = returned.get(b.req_id)
        if got is None:
            continue
        mean, n, other = _compare(b, got[0])
        events = (ref(got[1], b.req_id), ref(b))
        if other:
            found.append(violation(BEHAVIOUR, f"sample {b.req_id}: {other} of the trainer's behaviour logprobs are for "
                                   "other token ids than the engine returned at the same positions", b.req_id,
                                   events=events, cause=CAUSE_OTHER_TOKENS))
        elif n and mean > TOLERANCE:
            found.append(violation(BEHAVIOUR, f"sample {b.req_id}: the trainer's behaviour logprobs differ from the "
                                   f"engine's by {mean:.4g} nats per token on average over {n} token(s) "
                                   f"(tolerance {TOLERANCE:g})", b.req_id, events=events, cause=CAUSE_RECOMPUTED))
    return found


def logprobs_processed_as_trained(ix, policy=None):
    behaviour = _behaviour(ix)
    if not behaviour:
        return NotCheckable("missing the trainer's behaviour logprobs (SampleLogprobs role behaviour)")
    settings: dict = {}
    for s in ix.sampling:  # the engine knows its logprobs_mode; the client's record may not
        if s.logprobs_mode is not None and (s.req_id not in settings or s.side == "engine"):
            settings[s.req_id] = s
    if not any(b.req_id in settings for b in behaviour):
        return NotCheckable("missing the samples' sampling settings with a logprobs_mode (SampleSettings)")
    returned = _returned(ix)
    found = []
    for b in behaviour:
        st, got = settings.get(b.req_id), returned.get(b.req_id)
        if st is None or got is None or not st.logprobs_mode.startswith("raw") or not changes_distribution(st):
            continue
        mean, n, other = _compare(b, got[0])
        if n and not other and mean <= TOLERANCE:
            found.append(violation(PROCESSED, f"sample {b.req_id}: the trainer's behaviour logprobs are the engine's "
                                   f"{st.logprobs_mode} at temperature {st.temperature:g}, top-k {st.top_k}, top-p "
                                   f"{st.top_p:g}, min-p {st.min_p:g}, penalties (presence {st.presence_penalty:g}, "
                                   f"frequency {st.frequency_penalty:g}, repetition {st.repetition_penalty:g}): not "
                                   "the distribution the tokens were sampled from", b.req_id,
                                   events=(ref(st), ref(got[1], b.req_id), ref(b)), cause=CAUSE_RAW))
    return found
