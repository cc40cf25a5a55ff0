"""Binding invariant checkers: one named predicate per invariant of DESIGN §5, run on any trace.

``check_trace(trace, policy=None) -> CheckReport`` indexes the trace once (``index.py``) and runs every
invariant in ``INVARIANTS`` on the index. A checker returns its violations, or says the invariant is not
checkable on this trace and what is missing; the policy can waive an invariant the user's loop allows.
See ``docs/checkers.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tracesim.check import absence, behaviour, delivery, engine, fingerprint, kv, lifecycle, logprobs, pause
from tracesim.check import pd, resume, reward, versions, weights
from tracesim.check.base import NotCheckable
from tracesim.check.index import build_index
from tracesim.check.policy import Policy, load_policy, policy_from_dict
from tracesim.check.violation import EventRef, Violation
from tracesim.gcpause import cyclic_gc_paused

# name -> predicate(index, policy) -> list[Violation] | NotCheckable, in report order. Names are stable.
INVARIANTS: dict = {
    reward.REWARD: reward.reward_bound_to_own_tokens,
    reward.CONSUMED: reward.consumed_sample_matches_binding,
    absence.REWARDED: absence.reward_bound_before_consumption,
    versions.LABEL: versions.tokens_from_labelled_version,
    kv.KV: kv.no_stale_kv,
    delivery.ONCE: delivery.tokens_delivered_exactly_once,
    absence.DELIVERED: absence.finished_output_delivered,
    absence.TOKENS: absence.client_tokens_match_engine,
    engine.FRAMES: engine.output_applies_to_scheduling_incarnation,
    resume.RESUMED: resume.resumed_context_complete,
    weights.WRITE: weights.no_weight_write_during_forward,
    lifecycle.ENDS: lifecycle.sample_ends_exactly_once,
    lifecycle.LIVE: lifecycle.request_ids_live_once,
    lifecycle.GROUPS: lifecycle.groups_whole_and_consistent,
    pause.PAUSE: pause.pause_keeps_samples,
    versions.LAG: versions.version_lag_within_bound,
    engine.STEPS: engine.steps_well_formed,
    logprobs.BEHAVIOUR: logprobs.behaviour_logprobs_match_returned,
    logprobs.PROCESSED: logprobs.logprobs_processed_as_trained,
    fingerprint.SERVED: fingerprint.served_weights_match_published,
    behaviour.BEHAVIOUR: behaviour.behaviour_logprobs_from_sampling_policy,
    versions.INCREASE: versions.policy_versions_increase,
    pd.HELD: pd.kv_transfer_completes_for_held_request,
}


def _waiver(name: str, policy: Policy) -> str | None:
    if name == kv.KV and policy.allow_stale_kv:
        return "policy allows stale KV (allow_stale_kv = true)"
    if name == pause.PAUSE and not policy.pause_keeps_samples:
        return "policy lets a pause abort or drop samples it accounts for (pause_keeps_samples = false)"
    if name == versions.LAG and policy.max_version_lag is None:
        return "policy sets no version-lag bound (max_version_lag = \"none\")"
    return None


@dataclass
class CheckReport:
    violations: list = field(default_factory=list)  # list[Violation], grouped by invariant in INVARIANTS order
    not_checkable: dict = field(default_factory=dict)  # invariant -> "missing ..."
    checked: list = field(default_factory=list)  # invariants that were checked (with or without violations)
    waived: dict = field(default_factory=dict)  # invariant -> why the policy waives it
    policy: Policy = field(default_factory=Policy)
    lost_records: int = 0  # records the recorder said it lost (RecorderLost): violations may stem from them
    truncated_bytes: int = 0  # the trace ended inside a record: bytes dropped after the last complete one
    skipped_records: int = 0  # records of kinds unknown to this tracesim (newer minor version), not checked
    # engine proc -> steps scheduled and never updated at the end of the trace (the recording stopped there, or
    # the engine died): not a violation, said in the summary
    in_flight_at_end: dict = field(default_factory=dict)
    trace_start_ns: int | None = None  # t_ns of the trace's first record: reports count time from it

    @property
    def ok(self) -> bool:
        return not self.violations

    def violated(self) -> list:
        """Names of the invariants with at least one violation, in INVARIANTS order."""
        return list(dict.fromkeys(v.invariant for v in self.violations))

    def to_json(self) -> dict:
        return {"violations": [v.to_json() for v in self.violations], "not_checkable": dict(self.not_checkable),
                "checked": list(self.checked), "waived": dict(self.waived), "lost_records": self.lost_records,
                "truncated": {"bytes": self.truncated_bytes} if self.truncated_bytes else None,
                "skipped_records": self.skipped_records,
                "in_flight_at_end": {str(p): s for p, s in self.in_flight_at_end.items()},
                "trace_start_ns": self.trace_start_ns}


def check_trace(trace, policy: Policy | None = None, only=None) -> CheckReport:
    """Check ``trace`` (a ``tracesim.format.Trace``) against ``policy`` (default: the strict ``Policy()``).

    ``only``: an iterable of invariant names to run (default all); raises ValueError for an unknown name.
    Never raises on odd trace content: what a checker cannot judge is reported as not checkable.
    """
    policy = policy or Policy()
    names = list(INVARIANTS) if only is None else list(only)
    unknown = [n for n in names if n not in INVARIANTS]
    if unknown:
        raise ValueError(f"unknown invariant(s) {unknown}; known: {', '.join(INVARIANTS)}")
    # The index allocates a container per request and step while the trace's records are all alive: with the
    # cyclic GC on, its full collections rescan those records again and again (half the run time on 1M
    # records). Nothing here needs cycle collection mid-run; the previous GC state is restored.
    with cyclic_gc_paused():
        return _check(trace, policy, names)


def _with_groups(ix, violations: list) -> list:
    """Fill in the group of each violation's sample where its checker did not (reports group by it)."""
    out = []
    for v in violations:
        if v.group_id is None and v.req_id is not None:
            incs = ix.client.get(v.req_id)
            add = incs[-1].add if incs else None
            if add is not None and add.group_id is not None:
                v = replace(v, group_id=add.group_id)
        out.append(v)
    return out


def _check(trace, policy: Policy, names: list) -> CheckReport:
    ix = build_index(trace)
    report = CheckReport(policy=policy, lost_records=sum(r.count for r in ix.lost),
                         truncated_bytes=getattr(trace, "truncated_bytes", 0) or 0,
                         skipped_records=getattr(trace, "skipped", 0) or 0,
                         in_flight_at_end={p: sorted(s) for p, s in ix.in_flight_at_end.items()},
                         trace_start_ns=ix.t0_ns)
    for name in names:
        why = _waiver(name, policy)
        if why:
            report.waived[name] = why
            continue
        result = INVARIANTS[name](ix, policy)
        if isinstance(result, NotCheckable):
            report.not_checkable[name] = str(result)
        else:
            report.checked.append(name)
            report.violations.extend(_with_groups(ix, result))
    return report


__all__ = ["CheckReport", "EventRef", "INVARIANTS", "Policy", "Violation", "check_trace", "load_policy",
           "policy_from_dict"]
