"""Sample lifecycle: ids are never live twice, every admitted sample ends exactly once, and groups stay
whole and consistent."""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ms, ref, violation

LIVE = "request_ids_live_once"
ENDS = "sample_ends_exactly_once"
GROUPS = "groups_whole_and_consistent"


def request_ids_live_once(ix, policy) -> list:
    """A request id is not added again (engine side, or client side) while its previous incarnation on that
    side is still live (engine: not finished or aborted; client: no final frame, abort, consumption or drop)."""
    if not ix.n_engine_adds and not ix.n_client_adds:
        return NotCheckable("missing request admissions (no RequestAdded)")
    out = []
    for side, rec, old in ix.twice_live:
        first = old.add
        events = ([ref(first)] if first is not None else []) + [ref(rec)]
        out.append(violation(LIVE, f"{rec.req_id} was added again on the {side} side while its previous "
                             "incarnation was still live", rec.req_id, events=events))
    return out


def _accounted_abort(ix, c) -> bool:
    """The client aborted the sample itself, or the sample was aborted and retried: its id added again, or
    a member of its group with the same ``sample_idx`` admitted after it (a requeue under a fresh id)."""
    if any(a.side == "client" for a in c.aborted):
        return True
    aborted = bool(c.aborted) or (c.final is not None and c.final.finish_reason == "abort") or \
        (c.engine is not None and c.engine.ended == "aborted")
    if not aborted:
        return False
    if c.superseded_by is not None:
        return True
    if c.add.group_id is None:
        return False
    # admitted later in the group with the same sample_idx: the last such admission is after c's
    last = ix.derived.get("last_admitted")
    if last is None:
        last = ix.derived["last_admitted"] = {}
        for g, members in ix.groups.items():
            for pos, m in enumerate(members):
                last[(g, m.add.sample_idx)] = pos
        for members in ix.groups.values():
            for pos, m in enumerate(members):
                last[id(m)] = pos
    return last[(c.add.group_id, c.add.sample_idx)] > last[id(c)]


def _fate(c) -> str:
    if c.final is not None:
        return f"finished ({c.final.finish_reason or 'no reason'})"
    if c.aborted:
        return "aborted by the engine"
    if c.engine is not None and c.engine.ended:
        return f"{c.engine.ended} in the engine but never delivered"
    return "still in flight at the end of the trace"


def sample_ends_exactly_once(ix, policy) -> list:
    """Every client-admitted sample is consumed once, or dropped once (``SampleDropped``), or aborted by the
    client, or aborted and retried (see ``_accounted_abort``), and never two of these; nothing unadmitted is
    consumed.
    With ``samples_must_end = false`` a sample that never ends is not reported."""
    if not ix.n_client_adds:
        return NotCheckable("missing client-side admissions (no RequestAdded with side=client)")
    out = []
    for c in ix.client_order:
        if c.add is None:
            if c.consumed:
                tc = c.consumed[0][0]
                out.append(violation(ENDS, f"train step {tc.train_step} consumed {c.req_id}, which was never "
                                     "admitted", c.req_id, events=[ref(tc, c.req_id)]))
            continue
        ends = [ref(tc, c.req_id) for tc, _s in c.consumed]
        ends += [ref(d, c.req_id) for d in dict.fromkeys(c.dropped)]
        if len(ends) > 1:
            what = ", ".join(f"{e.kind} at {ms(ix, e.t_ns)}" for e in ends)
            out.append(violation(ENDS, f"{c.req_id} ended {len(ends)} times ({what})", c.req_id,
                                 events=[ref(c.add)] + ends))
        elif not ends and not _accounted_abort(ix, c) and policy.samples_must_end:
            # a re-admission of the id exempts only an aborted incarnation (a retry); a finished one was
            # superseded unused
            again = f"; its id was admitted again at {ms(ix, c.superseded_by.t_ns)}" if c.superseded_by else ""
            events = [ref(c.add)] + ([ref(c.final)] if c.final else [])
            if c.superseded_by is not None:
                events.append(ref(c.superseded_by))
            parent = ix.parent_of.get(c.req_id)
            if parent is not None:  # a child of an n > 1 request: name the request the loop submitted
                again += f" (a child of request {parent.parent_id}, whose {len(parent.child_ids)} outputs came back " \
                    "together)"
                events.insert(0, ref(parent))
            out.append(violation(ENDS, f"{c.req_id} was admitted and {_fate(c)}, but was never consumed or "
                                 f"dropped{again}", c.req_id, events=events))
    return out


def groups_whole_and_consistent(ix, policy) -> list:
    """Members of a group share prompt digest and group size; a consumed group is consumed with exactly
    ``group_size`` distinct members (in one trainer batch when ``groups_consumed_together``), under its id."""
    if not ix.n_client_adds:
        return NotCheckable("missing client-side admissions (no RequestAdded with side=client)")

    def listed(items: list, total: int | None = None) -> str:
        # Nothing is sized from a number in the trace (group_size may be 2**40), and a list in a message is
        # cut after 64 entries, saying how many there are in all.
        total = len(items) if total is None else total
        return str(items) if total <= 64 else f"{str(items[:64])[:-1]}, ...] ({total:,} in all)"

    out = []
    for g, members in ix.groups.items():
        adds = [c.add for c in members]
        digests = {a.prompt_digest for a in adds if a.prompt_digest is not None}
        sizes = {a.group_size for a in adds}
        if len(digests) > 1 or len(sizes) > 1:
            what = f"prompt digests {listed(sorted(digests))}" if len(digests) > 1 else \
                f"group sizes {listed(sorted(sizes))}"
            out.append(violation(GROUPS, f"group {g}'s members were admitted with different {what}",
                                 events=[ref(a) for a in adds[:4]]))
        consumed = [(c, tc, s) for c in members for tc, s in c.consumed]
        if not consumed:
            continue
        n = max(sizes)
        idx = [c.add.sample_idx for c, _tc, _s in consumed]
        batches = sorted({tc.train_step for _c, tc, _s in consumed})
        events = [ref(tc, c.req_id) for c, tc, _s in consumed]
        if len(idx) != n or len(set(idx)) != n:
            present = set(idx)
            n_missing = max(n, 0) - sum(1 for i in present if 0 <= i < n)
            missing, i = [], 0
            while len(missing) < min(n_missing, 64):  # at most 64 + len(present) rounds, whatever n is
                if i not in present:
                    missing.append(i)
                i += 1
            counts: dict = {}
            for i in idx:
                counts[i] = counts.get(i, 0) + 1
            dup = sorted(i for i, k in counts.items() if k > 1)
            detail = (f"missing sample_idx {listed(missing, n_missing)}" if missing else "") + \
                     (f"{'; ' if missing else ''}sample_idx {listed(dup)} more than once" if dup else "")
            out.append(violation(GROUPS, f"group {g} was consumed with {len(idx)} of its {n} members "
                                 f"({detail})", consumed[0][0].req_id, events=events))
        elif policy.groups_consumed_together and len(batches) > 1:
            out.append(violation(GROUPS, f"group {g} was split across train steps {listed(batches)}",
                                 consumed[0][0].req_id, events=events))
        for c, tc, s in consumed:
            if s.group_id is not None and s.group_id != g:
                out.append(violation(GROUPS, f"train step {tc.train_step} consumed {c.req_id} as a member of "
                                     f"group {s.group_id}, but it was admitted in group {g}", c.req_id,
                                     events=[ref(c.add), ref(tc, c.req_id)]))
    return out
