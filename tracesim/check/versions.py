"""Version invariants: every token of a sample comes from the version(s) it is labelled with, and the
version lag at consumption stays within the policy's bound."""

from __future__ import annotations

from tracesim.check.base import NotCheckable, produced_runs, ref, violation

LABEL = "tokens_from_labelled_version"
LAG = "version_lag_within_bound"


def label_of(c):
    """``(version, record)``: the label the trainer sees (consumption), else the reward's, else admission's.

    A sample that was dropped or aborted before anything used it has no label that matters: a binding is
    what reaches the trainer, and its admission label (which a loop labelling by spans or at finish never
    uses) cannot mislead training. ``(None, None)`` then, and when no label was recorded.
    """
    for _tc, s in reversed(c.consumed):
        if s.version is not None:
            return s.version, _tc
    for rw in reversed(c.rewards):
        if rw.version is not None:
            return rw.version, rw
    unused = c.dropped or c.aborted or (c.final is not None and c.final.finish_reason == "abort")
    if c.add is not None and c.add.version is not None and not unused:
        return c.add.version, c.add
    return None, None


def production_of(ix, c) -> tuple:
    """``(runs, from_engine)``: version runs of the sample's tokens, from engine steps when the trace has them
    (``(version, start, end, step, upd)``), else from the delivered spans; ``([], False)`` when unknown."""
    cache = ix.derived.setdefault("production", {})
    found = cache.get(c)
    if found is None:
        found = cache[c] = _production(ix, c)
    return found


def _production(ix, c) -> tuple:
    if c.engine is not None and c.engine.outs:
        runs = produced_runs(ix, c.engine)
        if any(r[0] is not None for r in runs):
            return runs, True
    if c.final is not None and c.final.spans:
        # a negative span version is the recorder's "no numeric label" (vLLM's "default"): unknown
        return [(sp.version if sp.version >= 0 else None, sp.start, sp.end, None, c.final)
                for sp in c.final.spans], False
    return [], False


def _run_ref(run, req_id):
    return ref(run[4], req_id, step=run[3])


def _span_conflict(c, runs):
    """First (engine run, span) where the delivered spans name another version than the engine used."""
    for run in runs:
        v, a, b = run[0], run[1], run[2]
        if v is None:
            continue
        for sp in c.final.spans:
            if sp.start < b and sp.end > a and sp.version != v and sp.version >= 0:
                return run, sp
    return None


def tokens_from_labelled_version(ix, policy) -> list:
    """Strict: every produced token's version equals the sample's label, and delivered spans agree with the
    versions the engine used. With ``allow_mixed_versions``: a sample may mix versions if its final frame keeps
    version spans, and its label is one of them."""
    samples = [c for c in ix.client_order if label_of(c)[0] is not None]
    if not samples:
        return NotCheckable("missing version labels (no version on client adds, rewards or consumed samples)")
    out, known = [], 0
    for c in samples:
        label, label_rec = label_of(c)
        runs, from_engine = production_of(ix, c)
        # a version that is not a number (weights before the first recorded update) is unknown here
        runs = [r if type(r[0]) is int else (None,) + r[1:] for r in runs if r[2] > r[1]]
        if not any(r[0] is not None for r in runs):
            continue
        known += 1
        if from_engine and c.final is not None and c.final.spans:
            conflict = _span_conflict(c, runs)
            if conflict is not None:
                run, sp = conflict
                out.append(violation(
                    LABEL, f"the engine produced tokens {run[1]}..{run[2]} of {c.req_id} with version {run[0]} "
                    f"(step {run[3]}), but the delivered spans say version {sp.version}", c.req_id,
                    events=[_run_ref(run, c.req_id), ref(c.final)]))
                continue
        versions = sorted({r[0] for r in runs if r[0] is not None}, key=str)
        if policy.allow_mixed_versions and len(versions) > 1:
            msg = None
            if c.final is None or not c.final.spans:
                msg = f"{c.req_id} mixes versions {versions} but its output keeps no version spans"
            elif label not in versions:
                msg = f"{c.req_id} is labelled with version {label}, which produced none of its tokens {versions}"
            if msg:
                out.append(violation(LABEL, msg, c.req_id, events=[ref(label_rec, c.req_id)]))
            continue
        bad = next((r for r in runs if r[0] is not None and r[0] != label), None)
        if bad is not None:
            out.append(violation(
                LABEL, f"tokens {bad[1]}..{bad[2]} of {c.req_id} were produced by version {bad[0]}"
                + (f" at step {bad[3]}" if bad[3] is not None else "")
                + f", but the sample is labelled with version {label}", c.req_id,
                events=[_run_ref(bad, c.req_id), ref(label_rec, c.req_id)]))
    if not known:
        return NotCheckable("missing the versions that produced the tokens (no exec/upd versions, weight "
                            "updates or delivered version spans)")
    return out


def version_lag_within_bound(ix, policy) -> list:
    """At each consumption, trainer_version minus the oldest version that produced a token of the sample (the
    sample's label when production is unknown) is between 0 and ``max_version_lag``."""
    if not ix.consumes:
        return NotCheckable("missing trainer consumption records (no TrainerConsumed)")
    if all(tc.trainer_version is None for tc in ix.consumes):
        return NotCheckable("missing trainer versions (every TrainerConsumed.trainer_version is null)")
    bound, out = policy.max_version_lag, []
    for c in ix.client_order:
        for tc, s in c.consumed:
            tv = tc.trainer_version
            if tv is None:
                continue
            runs, _ = production_of(ix, c)
            produced = [r[0] for r in runs if type(r[0]) is int and r[2] > r[1]]
            v = min(produced) if produced else (s.version if s.version is not None else label_of(c)[0])
            if type(v) is not int:
                continue
            lag = tv - v
            if lag < 0:
                msg = (f"train step {tc.train_step} consumed {s.req_id} from version {v}, newer than the trainer's "
                       f"version {tv}")
            elif lag > bound:
                msg = (f"train step {tc.train_step} consumed {s.req_id} from version {v} at trainer version {tv}: "
                       f"lag {lag} exceeds the bound {bound}")
            else:
                continue
            out.append(violation(LAG, msg, s.req_id, events=[ref(tc, s.req_id)]))
    return out
