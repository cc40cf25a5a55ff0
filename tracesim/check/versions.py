"""Version invariants: every token of a sample comes from the version(s) it is labelled with, the version
lag at consumption stays within the policy's bound, and policy versions never go backwards."""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ms, produced_runs, ref, segments, violation

LABEL = "tokens_from_labelled_version"
LAG = "version_lag_within_bound"
INCREASE = "policy_versions_increase"


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
    if c.continues is not None:  # a partial rollout: its segments' engine runs, joined
        runs = _joined_runs(ix, c)
        if runs is not None:
            return runs, True
    elif c.engine is not None and c.engine.outs:
        runs = produced_runs(ix, c.engine)
        if any(r[0] is not None for r in runs):
            return runs, True
    if c.final is not None and c.final.spans:
        # a negative span version is the recorder's "no numeric label" (vLLM's "default"): unknown
        return [(sp.version if sp.version >= 0 else None, sp.start, sp.end, None, c.final)
                for sp in c.final.spans], False
    return [], False


def _joined_runs(ix, c):
    """Version runs of a continued sample over its whole output: each segment's engine runs shifted by the
    tokens it carried, cut where the next segment took over. None when a segment's engine side is missing or
    produced fewer tokens than were carried on, or no version is known."""
    runs: list = []
    for seg, start, end in segments(c):
        if seg.engine is None or not seg.engine.outs or (runs and runs[-1][2] != start) or (not runs and start):
            return None
        for v, a, b, step, upd in produced_runs(ix, seg.engine):
            a, b = a + start, b + start if end is None else min(b + start, end)
            if b > a:
                runs.append((v, a, b, step, upd))
        if end is not None and (not runs or runs[-1][2] != end):
            return None
    return runs if any(r[0] is not None for r in runs) else None


def _group(c):
    return c.add.group_id if c.add is not None else None


def _run_ref(run, req_id):
    return ref(run[4], req_id, step=run[3])


def _span_conflict(c, runs):
    """First (engine run, span, position) where the delivered spans name another version than the engine used;
    ``position``: the first output token where they disagree."""
    if len(runs) * len(c.final.spans) > 256:  # many of both: find the run by a sweep, then scan for its span
        run = _first_conflicting_run(runs, c.final.spans)
        runs = [run] if run is not None else []
    for run in runs:
        v, a, b = run[0], run[1], run[2]
        if v is None:
            continue
        for sp in c.final.spans:
            if sp.start < b and sp.end > a and sp.version != v and sp.version >= 0:
                return run, sp, max(a, sp.start)
    return None


def _first_conflicting_run(runs, spans):
    """The first run (by position; runs are ordered and disjoint) that some span with a known version other
    than the run's overlaps, in O((runs + spans) log spans): spans are added in start order as the runs' ends
    grow, keeping the longest-reaching span and the longest-reaching one of another version than it."""
    spans = sorted((sp for sp in spans if sp.version >= 0), key=lambda sp: sp.start)
    best = other = None  # (end, version): the span reaching furthest; the furthest of another version
    k = 0
    for run in runs:
        v, a, b = run[0], run[1], run[2]
        while k < len(spans) and spans[k].start < b:
            e, ver = spans[k].end, spans[k].version
            if best is None:
                best = (e, ver)
            elif ver == best[1]:
                best = (max(e, best[0]), ver)
            elif e > best[0]:
                best, other = (e, ver), best
            elif other is None or e > other[0]:
                other = (e, ver)
            k += 1
        if v is None or best is None:
            continue
        if best[1] != v and best[0] > a:
            return run
        if best[1] == v and other is not None and other[0] > a:
            return run
    return None


def _step_at(inc, position: int):
    """(step, StepUpdated) that appended output token ``position`` to engine incarnation ``inc``."""
    pos = 0
    for step, sampled, upd in inc.outs:
        if pos + sampled > position:
            return step, upd
        pos += sampled
    return None, None


def _client_pause_at(ix, t_ns: int):
    """The client-side pause in progress at ``t_ns`` (requested at or before it, not yet resumed), or None."""
    pause = None
    for p in ix.pauses:
        if p.side == "client" and p.t_ns <= t_ns:
            pause = p
    if pause is None:
        return None
    resumed = any(r.side == "client" and pause.t_ns <= r.t_ns <= t_ns for r in ix.resumes)
    return None if resumed else pause


def _update_to(ix, version):
    return next((w for w in ix.weights if w.version == version), None)


def _cause(ix, c, label, label_rec, produced) -> tuple:
    """``(cause, records)``: what most likely made the sample's label disagree with the version ``produced``
    (a sentence shared by every sample with the same cause, so reports can group them), and the records that
    show it, the cause first. ``(None, [])`` when no known mechanism fits."""
    add = c.add
    if add is not None and add.version == label:
        pause = _client_pause_at(ix, add.t_ns)
        if pause is not None:
            return (f"admitted during the {pause.mode or ''} pause at {ms(ix, pause.t_ns)} and labelled with "
                    f"version {label}, the version before the update the pause was for".replace("  ", " "),
                    [ref(pause), ref(add)])
    if add is not None and add.version is not None and label_rec is not add and add.version != label:
        w = _update_to(ix, label)
        return (f"the label was read again at {label_rec.KIND} time, after the update to version {label}"
                + (f" ({ms(ix, w.t_ns)})" if w is not None else "") + f"; admitted under version {add.version}",
                ([ref(w)] if w is not None else []) + [ref(add), ref(label_rec, c.req_id)])
    if type(produced) is int and type(label) is int and produced > label:
        w = _update_to(ix, produced)
        if w is not None and (add is None or add.t_ns <= w.t_ns):
            return (f"the weights were updated to version {produced} at {ms(ix, w.t_ns)} while the sample was "
                    "in flight, and its label was not", [ref(w)])
    if type(produced) is int and type(label) is int and produced < label:
        w = _update_to(ix, label)
        if w is not None:
            return (f"labelled with version {label} ({ms(ix, w.t_ns)}) although tokens were produced by the "
                    "weights before that update", [ref(w), ref(label_rec, c.req_id)])
    return None, []


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
                run, sp, pos = conflict
                step, upd = _step_at(c.engine, pos - c.carried) if pos >= c.carried else (None, None)
                step, upd = (step, upd) if step is not None else (run[3], run[4])
                end = min(run[2], sp.end)
                out.append(violation(
                    LABEL, f"the engine produced tokens {pos}..{end} of {c.req_id} with version {run[0]} "
                    f"(from step {step}), but the delivered spans say version {sp.version}", c.req_id, step,
                    events=[ref(upd, c.req_id, step=step), ref(c.final)], group_id=_group(c)))
                continue
        versions = sorted({r[0] for r in runs if r[0] is not None}, key=str)
        if policy.allow_mixed_versions and len(versions) > 1:
            msg = None
            if c.final is None or not c.final.spans:
                msg = f"{c.req_id} mixes versions {versions} but its output keeps no version spans"
            elif label not in versions:
                msg = f"{c.req_id} is labelled with version {label}, which produced none of its tokens {versions}"
            if msg:
                out.append(violation(LABEL, msg, c.req_id, events=[ref(label_rec, c.req_id)], group_id=_group(c)))
            continue
        bad = next((r for r in runs if r[0] is not None and r[0] != label), None)
        if bad is not None:
            cause, cause_refs = _cause(ix, c, label, label_rec, bad[0])
            rest = cause_refs[1:] + [_run_ref(bad, c.req_id)]
            if not any(e.kind == label_rec.KIND and e.t_ns == label_rec.t_ns for e in cause_refs):
                rest.append(ref(label_rec, c.req_id))
            # the cause record first, then the rest as it happened
            events = cause_refs[:1] + sorted(rest, key=lambda e: e.t_ns)
            out.append(violation(
                LABEL, f"tokens {bad[1]}..{bad[2]} of {c.req_id} were produced by version {bad[0]}"
                + (f" at step {bad[3]}" if bad[3] is not None else "")
                + f", but the sample is labelled with version {label}", c.req_id, bad[3],
                events=events, cause=cause, group_id=_group(c)))
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
        oldest = label = None
        for tc, s in c.consumed:
            tv = tc.trainer_version
            if tv is None:
                continue
            if oldest is None:  # once per sample, not per consumption (one sample may be consumed 100k times)
                runs, _ = production_of(ix, c)
                produced = [r[0] for r in runs if type(r[0]) is int and r[2] > r[1]]
                oldest = [min(produced) if produced else None]
            v = oldest[0]
            if v is None:
                if s.version is not None:
                    v = s.version
                else:
                    if label is None:
                        label = [label_of(c)[0]]
                    v = label[0]
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


_BACKWARDS = ("the version counter went backwards (a trainer failover or restart that restored the weights but "
              "restarted the counter): one version now names two sets of weights, and staleness computed "
              "against it comes out too small or negative")


def policy_versions_increase(ix, policy) -> list:
    """Each side's weight updates publish strictly increasing versions, in time order, and the trainer's
    version at consumption never decreases. Only numeric versions are compared (a recording may label with
    strings); each side is judged on its own (client and engine records of one update share a version)."""
    updates = [w for w in ix.weights if type(w.version) is int]
    consumes = [tc for tc in ix.consumes if type(tc.trainer_version) is int]
    if not updates and not consumes:
        return NotCheckable("missing numeric policy versions (no WeightsUpdated or TrainerConsumed with a "
                            "numeric version)")
    out = []
    last: dict = {}  # side -> the previous update
    for w in sorted(updates, key=lambda w: w.t_ns):  # stable: records of one time keep their stream order
        prev = last.get(w.side)
        if prev is not None and w.version <= prev.version:
            out.append(violation(
                INCREASE, f"the {w.side} side updated the weights to version {w.version} at {ms(ix, w.t_ns)}, "
                f"after version {prev.version} at {ms(ix, prev.t_ns)}", events=[ref(prev), ref(w)],
                cause=_BACKWARDS))
        last[w.side] = w
    prev = None
    for tc in consumes:
        if prev is not None and tc.trainer_version < prev.trainer_version:
            out.append(violation(
                INCREASE, f"train step {tc.train_step} ran at trainer version {tc.trainer_version} "
                f"({ms(ix, tc.t_ns)}), after train step {prev.train_step} at version {prev.trainer_version}",
                events=[ref(prev), ref(tc)], cause=_BACKWARDS))
        prev = tc
    return out
