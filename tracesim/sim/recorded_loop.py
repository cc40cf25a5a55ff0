"""What a recording shows of its RL loop, and the loop policy it implies.

``Recorded`` indexes a recording's client side (admissions, final deliveries, rewards, consumption, weight
updates); ``infer_loop_policy`` reads from it which label source, version read and reward matching the loop
used, with a reason per setting; ``resolve_loop_policy`` lets a ``[loop]`` table (``--loop FILE``) override
what was inferred. ``replay_loop.ReplayLoop`` re-enacts the loop on a replayed run.
"""

from __future__ import annotations

import dataclasses
import functools
from bisect import bisect_right

import tracesim.sim.tuplenew as tuplenew
from tracesim.format.records import (
    ConsumedSample, OutputDelivered, RequestAdded, RewardBound, SampleDropped, TrainerConsumed, VersionSpan,
    WeightsUpdated,
)
from tracesim.inputs import read_toml
from tracesim.sim.scenario import _CHOICES, _PARTS, LoopPolicy, ScenarioError, _build

LOOP_TYPES = frozenset((RewardBound, TrainerConsumed, SampleDropped))
LABEL_SOURCES = ("admission", "first_token", "finish", "spans")
APPLIED_FIELDS = ("version_label", "version_read", "reward_match")  # the LoopPolicy fields a replay uses

# Where the fields read per record lie, by name (C integers where compiled, recorded_loop.pxd): the passes below
# read them in place with ``tuplenew.item``, once per delivery of the recording (millions) and per recorded label
# (an attribute of a NamedTuple is a descriptor call).
T_NS = OutputDelivered._fields.index("t_ns")  # the same in every event record (format/index.py checks at import)
DELIVERED_REQ_ID = OutputDelivered._fields.index("req_id")
DELIVERED_FINISHED = OutputDelivered._fields.index("finished")
DELIVERED_SPANS = OutputDelivered._fields.index("spans")
DELIVERED_DIGEST = OutputDelivered._fields.index("digest")
ADDED_REQ_ID = RequestAdded._fields.index("req_id")
ADDED_SIDE = RequestAdded._fields.index("side")
ADDED_VERSION = RequestAdded._fields.index("version")
REWARD_REQ_ID = RewardBound._fields.index("req_id")
REWARD_DIGEST = RewardBound._fields.index("digest")
REWARD_VERSION = RewardBound._fields.index("version")
CONSUMED_SAMPLES = TrainerConsumed._fields.index("samples")
SAMPLE_REQ_ID = ConsumedSample._fields.index("req_id")
SAMPLE_VERSION = ConsumedSample._fields.index("version")
SPAN_VERSION = VersionSpan._fields.index("version")


# --- what the recording shows of its loop ---------------------------------------------------------------------


class Recorded:
    """The recording's loop, gathered in one pass: rewards, consumptions, drops, client admissions, the final
    (and first) delivered frame of each request incarnation, and the engine's version label over time.

    What it shows of each request id is kept together (``_Req``), with the label sources of each incarnation
    worked out as its final frame is read: inference and replay then look a request up once per label or
    sample, in a dict of ~100k ids whose probes miss the CPU caches, and read little else that is cold.
    ``finals``, ``firsts`` and ``adds`` are built from the ``_Req``s on first use."""

    def __init__(self, records, t0: int, by_type: dict | None = None):
        """``by_type``: the records grouped by type (``Trace._kinds()``), when the caller has them: each kind
        is then taken as a whole, and only the deliveries are looped over."""
        self.t0 = t0
        if by_type is None:
            by_type = {}
            for r in records:
                by_type.setdefault(type(r), []).append(r)
        self.rewards = list(by_type.get(RewardBound, ()))
        self.consumes = list(by_type.get(TrainerConsumed, ()))
        self.drops = list(by_type.get(SampleDropped, ()))
        sets = [(r.set_ns if r.set_ns is not None else r.end_ns, r.version) for r in by_type.get(WeightsUpdated, ())]
        sets.sort(key=lambda x: x[0])
        self._set_t = [t for t, _ in sets]
        self._set_v = [v for _, v in sets]
        self._reqs: dict = {}  # req_id -> _Req
        # the _Reqs in the order of their first client admission, first delivered frame, first final frame
        self._added, self._delivered, self._finished = [], [], []
        _client_adds(by_type.get(RequestAdded, ()), self._reqs, self._added)
        self._reward_reqs = _deliveries(by_type.get(OutputDelivered, ()), self.rewards, self._reqs, self._delivered,
                                        self._finished, self._set_t, self._set_v)  # the _Req of each reward

    @functools.cached_property
    def finals(self) -> dict:
        """req_id -> [finished OutputDelivered, ...] per incarnation, in order."""
        return {req.req_id: [inc.fin for inc in req.incs] for req in self._finished}

    @functools.cached_property
    def firsts(self) -> dict:
        """req_id -> [t_ns of the first frame of each incarnation]."""
        return {req.req_id: req.firsts for req in self._delivered}

    @functools.cached_property
    def adds(self) -> dict:
        """req_id -> [client RequestAdded, ...]."""
        return {req.req_id: req.adds for req in self._added}

    @functools.cached_property
    def _by_digest(self) -> dict:
        """final digest -> [(t_ns, req_id)], in the order of ``finals``."""
        out = {}
        for req in self._finished:
            for inc in req.incs:
                if inc.digest is not None:
                    out.setdefault(inc.digest, []).append((inc.fin.t_ns, req.req_id))
        return out

    @property
    def has_loop(self) -> bool:
        return bool(self.rewards or self.consumes)

    def version_at(self, t_ns: int):
        """The engine's version label at ``t_ns`` (0 before the first recorded update, as in the replay)."""
        return _version_at(self._set_t, self._set_v, t_ns)

    def final_before(self, req_id: str, t_ns: int) -> tuple:
        """(incarnation index, final frame) of ``req_id``'s last final delivery at or before ``t_ns``;
        (None, None) when none."""
        req = self._reqs.get(req_id)
        incs = req.incs if req is not None else None
        k = _final_index(incs, t_ns)
        return (k, incs[k].fin) if k >= 0 else (None, None)

    def admission(self, req_id: str, t_ns: int | None = None):
        """The client RequestAdded of ``req_id`` last before ``t_ns`` (or the last one), or None."""
        req = self._reqs.get(req_id)
        return _admission(req.adds if req is not None else None, t_ns)

    def reward_finals(self) -> list:
        """For each recorded reward, in order: ``(k, ns)``, the incarnation ``k`` of the request it names whose
        final frame came last at or before it (``final_before``) and the time from that frame to the reward;
        ``(None, None)`` when there is none. What a replay with ``reward_match = "id"`` ties each reward to,
        in one pass over the rewards' requests as gathered (no look-up by id)."""
        return _reward_finals(self.rewards, self._reward_reqs)

    def scored(self, r) -> str:
        """The request whose tokens reward ``r`` was computed on: the one it names when its final digest is
        ``r``'s, else the last request that delivered that digest before ``r`` (arrival matching)."""
        if r.digest is None:
            return r.req_id
        _, fin = self.final_before(r.req_id, r.t_ns)
        if fin is not None and fin.digest == r.digest:
            return r.req_id
        for t, rid in reversed(self._by_digest.get(r.digest, ())):
            if t <= r.t_ns:
                return rid
        return r.req_id

    def rewards_before(self, req_id: str, t_ns: int) -> int:
        req = self._reqs.get(req_id)
        return bisect_right(req.rewarded, t_ns) if req is not None and req.rewarded is not None else 0

    def last_reward_before(self, req_id: str, t_ns: int):
        req = self._reqs.get(req_id)
        return _last_reward_before(req.rewarded if req is not None else None, t_ns)

    def sources(self, req_id: str, k, fin) -> dict:
        """The label each ``version_label`` source gives incarnation ``k`` of ``req_id`` (None: unknown)."""
        inc = _incarnation(self._set_t, self._set_v, self._reqs.get(req_id), k, fin)
        return {"admission": inc.admission, "first_token": inc.first_token, "finish": inc.finish,
                "spans": inc.spans}


class _Req:
    """What the recording shows of one request id (None: nothing of that kind)."""

    __slots__ = ("req_id", "adds", "firsts", "incs", "rewarded")

    def __init__(self, req_id):
        self.req_id = req_id
        self.adds = None  # [client RequestAdded, ...]
        self.firsts = None  # [t_ns of the first frame of each incarnation]
        self.incs = None  # [_Incarnation of each final frame]
        self.rewarded = None  # [t_ns of each of its rewards]


class _Incarnation:
    """One incarnation of a request as of its final frame ``fin`` (None: none recorded): the label each
    ``version_label`` source gives it (None: unknown), and what inference reads of ``fin`` (its time ``t``, its
    ``digest``). Made by ``_incarnation``."""

    __slots__ = ("fin", "t", "digest", "admission", "first_token", "finish", "spans")


# Recorded's passes and look-ups, as functions: typed in the compiled build (recorded_loop.pxd), where methods of
# a plain class are not. Recorded stays a plain class: replay_loop calls it, tests patch it.


def _req(reqs: dict, req_id) -> _Req:
    req = reqs.get(req_id)
    if req is None:
        req = reqs[req_id] = _Req(req_id)
    return req


def _client_adds(added, reqs: dict, order: list) -> None:
    for r in added:
        if tuplenew.item(r, ADDED_SIDE) == "client":
            req = _req(reqs, tuplenew.item(r, ADDED_REQ_ID))
            if req.adds is None:
                req.adds = [r]
                order.append(req)
            else:
                req.adds.append(r)


def _deliveries(delivered, rewards: list, reqs: dict, delivering: list, finishing: list, set_t: list,
                set_v: list) -> list:
    """The first and final frame of each request incarnation, from the OutputDelivered records in stream order
    (an incarnation starts with its request's first frame, or the first after a final one); its label sources
    at its final frame, while that is at hand. The client admissions are in ``reqs`` already.

    The rewards are taken in (``_rewarded``) as the final frames' time reaches them; the _Req of each is returned,
    in order. A reward mostly comes shortly after its sample's final frame, and finds its request among those
    finished and not rewarded since (``done``, a small dict that stays in the CPU caches), not in ``reqs``."""
    open_ = {}  # req_id -> _Req, while an incarnation is under way: a few hundred ids, a fast dict
    done = {}  # req_id -> _Req, finished and not rewarded since
    reward_reqs = []
    i, n = 0, len(rewards)
    for r in delivered:
        rid = tuplenew.item(r, DELIVERED_REQ_ID)
        req = open_.get(rid)
        if req is None:
            req = open_[rid] = _req(reqs, rid)
            if req.firsts is None:
                req.firsts = [tuplenew.item(r, T_NS)]
                delivering.append(req)
            else:
                req.firsts.append(tuplenew.item(r, T_NS))
        if tuplenew.item(r, DELIVERED_FINISHED):
            del open_[rid]
            if req.incs is None:
                req.incs = [_incarnation(set_t, set_v, req, 0, r)]
                finishing.append(req)
            else:
                req.incs.append(_incarnation(set_t, set_v, req, len(req.incs), r))
            done[rid] = req
            t = tuplenew.item(r, T_NS)
            while i < n and tuplenew.item(rewards[i], T_NS) <= t:
                reward_reqs.append(_rewarded(rewards[i], reqs, done))
                i += 1
    while i < n:
        reward_reqs.append(_rewarded(rewards[i], reqs, done))
        i += 1
    return reward_reqs


def _rewarded(r, reqs: dict, done: dict) -> _Req:
    """Reward ``r``'s request, with the reward's time added to its ``rewarded``."""
    rid = tuplenew.item(r, REWARD_REQ_ID)
    req = done.pop(rid, None)
    if req is None:
        req = _req(reqs, rid)
    if req.rewarded is None:
        req.rewarded = [tuplenew.item(r, T_NS)]
    else:
        req.rewarded.append(tuplenew.item(r, T_NS))
    return req


def _incarnation(set_t: list, set_v: list, req: _Req, k, fin) -> _Incarnation:
    """Incarnation ``k`` of ``req`` (None: nothing recorded of the request), whose final frame is ``fin``."""
    inc = _Incarnation.__new__(_Incarnation)  # no __init__ call: its fields are all set here
    inc.fin = fin
    inc.t = tuplenew.item(fin, T_NS) if fin is not None else 0
    inc.digest = tuplenew.item(fin, DELIVERED_DIGEST) if fin is not None else None
    add = _admission(req.adds if req is not None else None, tuplenew.item(fin, T_NS) if fin is not None else None)
    inc.admission = tuplenew.item(add, ADDED_VERSION) if add is not None else None
    inc.first_token = inc.finish = inc.spans = None
    if fin is not None:
        inc.finish = _version_at(set_t, set_v, inc.t)
        firsts = req.firsts if req is not None and req.firsts is not None else ()
        if k is not None and k < len(firsts):
            inc.first_token = _version_at(set_t, set_v, firsts[k])
        for sp in tuplenew.item(fin, DELIVERED_SPANS) or ():
            v = tuplenew.item(sp, SPAN_VERSION)
            if v >= 0 and (inc.spans is None or v < inc.spans):  # min() of the versions >= 0
                inc.spans = v
    return inc


def _reward_finals(rewards: list, reward_reqs: list) -> list:
    out = []
    for i in range(len(rewards)):
        t = tuplenew.item(rewards[i], T_NS)
        req = reward_reqs[i]
        k = _final_index(req.incs, t)
        out.append((k, t - req.incs[k].t) if k >= 0 else (None, None))
    return out


def _version_at(set_t: list, set_v: list, t):
    """The version in ``set_v`` set last at or before ``t`` (``set_t``: when each was set, in order); 0 if none.
    ``bisect_right`` written out: called per label and incarnation, where a call to it costs more than the
    search of a few updates."""
    lo, hi = 0, len(set_t)
    while lo < hi:
        mid = (lo + hi) // 2
        if t < set_t[mid]:
            hi = mid
        else:
            lo = mid + 1
    return set_v[lo - 1] if lo else 0


def _last_reward_before(rewarded, t):
    """The last of ``rewarded`` (a request's reward times, in order; None: none) at or before ``t``, or None."""
    if rewarded is None:
        return None
    i = bisect_right(rewarded, t)
    return rewarded[i - 1] if i else None


def _final_index(incs, t) -> int:
    """The index in ``incs`` (a request's finished incarnations, in order; None: none) of the last one whose final
    frame came at or before ``t``; -1 when none."""
    if incs is not None:
        for k in range(len(incs) - 1, -1, -1):
            inc = incs[k]
            if inc.t <= t:
                return k
    return -1


def _admission(adds, t):
    """The last of ``adds`` (a request's client admissions, in order; None: none) at or before ``t`` (None: the
    last one); the first one when none is that early; None when there are none."""
    if not adds:
        return None
    if t is None:
        return adds[-1]
    before = t
    for i in range(len(adds) - 1, 0, -1):  # adds[0] either way when none after it is early enough
        at = tuplenew.item(adds[i], T_NS)
        if at <= before:
            return adds[i]
    return adds[0]


def recorded_loop(trace) -> Recorded:
    """The ``Recorded`` loop of ``trace``, built once per trace: inferring the loop policy (the CLI) and
    replaying the loop both need it, and on a recording of millions of records it takes seconds. Rebuilt when
    the trace's record list was replaced or grew."""
    from tracesim.format.index import start_of

    key = (id(trace.records), len(trace.records))
    cached = getattr(trace, "_recorded_loop", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    kinds = getattr(trace, "_kinds", None)
    t0 = trace.index().start_ns if hasattr(trace, "index") else start_of(trace.records)  # the trace start, once
    rec = Recorded(trace.records, t0, kinds() if kinds is not None else None)
    try:
        trace._recorded_loop = (key, rec)
    except AttributeError:  # not a Trace (a bare record holder): no cache
        pass
    return rec


# --- inferring the loop policy --------------------------------------------------------------------------------


def infer_loop_policy(trace) -> tuple:
    """``(LoopPolicy, reasons)``: the labelling and matching policy the recorded loop behaved by, and one
    human-readable line per inferred setting (``"version_label = spans: ..."``). ``trace``: a Trace or a
    ``Recorded``. Settings a recording cannot show (pause mode, retries, ...) keep LoopPolicy's defaults;
    a replay does not use them."""
    rec = trace if isinstance(trace, Recorded) else recorded_loop(trace)
    seen = _gather(rec)
    label, read, reasons = _infer_label(seen)
    match, why_match = _infer_match(seen)
    policy = LoopPolicy(version_label=label, version_read=read, reward_match=match)
    return policy, reasons + [f"reward_match = {match}: {why_match}"]


class _Fit:
    """How far one label source explains the recorded labels: ``matched`` of the ``known`` labels it gives at
    all; ``rest_*`` the same of the labels not read across a version change (what a late read leaves over)."""

    __slots__ = ("matched", "known", "rest_matched", "rest_known")

    def __init__(self):
        self.matched = self.known = self.rest_matched = self.rest_known = 0


class _Seen:
    """What the recorded labels and reward digests show, counted in one walk through the rewards and consumed
    samples (``_gather``): all the inference decides on. A label is read across a version change ("crossing")
    when the engine's version at its read differs from that at its sample's final delivery."""

    __slots__ = ("labels", "on_rewards", "admission", "first_token", "finish", "spans", "crossing", "kept",
                 "late_known", "late_matched", "checked", "differ", "first_differ")

    def __init__(self):
        self.labels = self.on_rewards = 0  # recorded labels; of them on rewards (the others: on consumed samples)
        self.admission, self.first_token, self.finish, self.spans = _Fit(), _Fit(), _Fit(), _Fit()
        self.crossing = 0
        self.kept = 0  # crossing labels that kept the older value
        self.late_known = 0  # labels with a version at their read
        self.late_matched = 0  # ... equal to it
        self.checked = 0  # reward digests compared with the final digest of the request they name
        self.differ = 0  # ... that differ from it
        self.first_differ = None  # the req_id of the first that does


def _gather(rec: Recorded) -> _Seen:
    """Each reward's label is read at the reward; a consumed sample's at its last reward before (none: unknown).
    The sources are those of the sample's incarnation last finished before the read (or consumption).

    The rewards are counted as the consumptions' time reaches them: a consumption's samples were mostly rewarded
    just before, and are found among those rewarded and not yet consumed (``waiting``, a small dict that stays in
    the CPU caches), not in the ~100k ids of ``rec._reqs``."""
    seen = _Seen()
    set_t, set_v, rewards, reward_reqs, reqs = rec._set_t, rec._set_v, rec.rewards, rec._reward_reqs, rec._reqs
    waiting = {}  # req_id -> _Req, rewarded and not consumed since
    i, n = 0, len(rewards)
    for c in rec.consumes:
        t = tuplenew.item(c, T_NS)
        while i < n and tuplenew.item(rewards[i], T_NS) <= t:
            _count_reward(seen, set_t, set_v, rewards[i], reward_reqs[i], waiting)
            i += 1
        for s in tuplenew.item(c, CONSUMED_SAMPLES):
            label = tuplenew.item(s, SAMPLE_VERSION)
            if label is None:
                continue
            rid = tuplenew.item(s, SAMPLE_REQ_ID)
            req = waiting.pop(rid, None)
            if req is None:
                req = reqs.get(rid)
            if req is None:  # nothing recorded of it
                _count(seen, label, _incarnation(set_t, set_v, None, None, None), None)
                continue
            k = _final_index(req.incs, t)
            inc = req.incs[k] if k >= 0 else _incarnation(set_t, set_v, req, None, None)
            rw_t = _last_reward_before(req.rewarded, t)
            _count(seen, label, inc, _version_at(set_t, set_v, rw_t) if rw_t is not None else None)
    while i < n:
        _count_reward(seen, set_t, set_v, rewards[i], reward_reqs[i], waiting)
        i += 1
    return seen


def _count_reward(seen: _Seen, set_t: list, set_v: list, r, req: _Req, waiting: dict) -> None:
    """Reward ``r`` (of ``req``): its label, and its digest against the final one of the incarnation it names."""
    waiting[tuplenew.item(r, REWARD_REQ_ID)] = req
    label, digest = tuplenew.item(r, REWARD_VERSION), tuplenew.item(r, REWARD_DIGEST)
    if label is None and digest is None:
        return
    t = tuplenew.item(r, T_NS)
    k = _final_index(req.incs, t)
    inc = req.incs[k] if k >= 0 else _incarnation(set_t, set_v, req, None, None)
    if label is not None:
        seen.on_rewards += 1
        _count(seen, label, inc, _version_at(set_t, set_v, t))
    if digest is not None and (k < 0 or inc.digest is not None):  # else nothing to compare with
        seen.checked += 1
        if k < 0 or inc.digest != digest:
            if not seen.differ:
                seen.first_differ = tuplenew.item(r, REWARD_REQ_ID)
            seen.differ += 1


def _count(seen: _Seen, label, inc: _Incarnation, at_read) -> None:
    seen.labels += 1
    crossing = inc.finish is not None and at_read is not None and inc.finish != at_read
    _tally(seen.admission, label, inc.admission, crossing)
    _tally(seen.first_token, label, inc.first_token, crossing)
    _tally(seen.finish, label, inc.finish, crossing)
    _tally(seen.spans, label, inc.spans, crossing)
    if at_read is not None:
        seen.late_known += 1
        if label == at_read:
            seen.late_matched += 1
    if crossing:
        seen.crossing += 1
        if label != at_read:
            seen.kept += 1


def _tally(fit: _Fit, label, v, crossing: bool) -> None:
    if v is None:
        return
    matched = label == v
    fit.known += 1
    if matched:
        fit.matched += 1
    if not crossing:
        fit.rest_known += 1
        if matched:
            fit.rest_matched += 1


def _infer_label(seen: _Seen) -> tuple:
    if not seen.labels:
        return "spans", "once", ["version_label = spans: no version labels on recorded rewards or consumed "
                                 "samples; assumed spans",
                                 "version_read = once: no labels recorded; assumed once"]
    what = (f"{seen.labels} recorded labels ({seen.on_rewards} on rewards, {seen.labels - seen.on_rewards} on "
            "consumed samples)")
    fit = {"admission": seen.admission, "first_token": seen.first_token, "finish": seen.finish, "spans": seen.spans}
    fitting = [s for s in LABEL_SOURCES if fit[s].known and fit[s].matched == fit[s].known]
    crossing = seen.crossing
    late_fits = seen.late_known > 0 and seen.late_matched == seen.late_known
    if fitting:
        label = "spans" if "spans" in fitting else fitting[0]
        if len(fitting) > 1:
            why = f"ambiguous, assumed {label}: the {what} fit {', '.join(fitting)} alike"
        else:
            others = ", ".join(f"{s} {fit[s].matched}/{fit[s].known}" for s in LABEL_SOURCES
                               if s != label and fit[s].known)
            why = f"the {what} all equal the {_SOURCE_WORDS[label]}" + \
                (f" (other sources match: {others})" if others else "")
        if crossing:
            kept = seen.kept
            read_why = (f"{crossing} label(s) were read after the version changed since the final delivery; "
                        f"{kept} of them kept the older value") if kept else \
                (f"{crossing} label(s) read after a version change fit both; assumed once")
        else:
            read_why = "no label was read after the version changed since the sample's final delivery; assumed once"
        return label, "once", [f"version_label = {label}: {why}", f"version_read = once: {read_why}"]
    if late_fits and crossing:
        fit_rest = {s: fit[s].rest_known > 0 and fit[s].rest_matched == fit[s].rest_known for s in LABEL_SOURCES}
        label = "spans" if fit_rest["spans"] or not any(fit_rest.values()) else \
            next(s for s in LABEL_SOURCES if fit_rest[s])
        return label, "late", [
            f"version_label = {label}: the labels not read across a version change fit "
            f"{', '.join(s for s in LABEL_SOURCES if fit_rest[s]) or 'no source'}; assumed {label}",
            f"version_read = late: {crossing} label(s) equal the version at reward time, which had changed "
            f"since the sample's final delivery"]
    best = max(LABEL_SOURCES, key=lambda s: (fit[s].matched / fit[s].known if fit[s].known else -1, s == "spans"))
    return best, "once", [
        f"version_label = {best}: no source fits every one of the {what}; best {best} "
        f"({fit[best].matched} of {fit[best].known}: "
        + ", ".join(f"{s} {fit[s].matched}/{fit[s].known}" for s in LABEL_SOURCES)
        + ")",
        "version_read = once: the version at reward time does not explain the labels either; assumed once"]


_SOURCE_WORDS = {
    "admission": "version the client recorded at admission",
    "first_token": "engine's version when the first frame was delivered",
    "finish": "engine's version when the final frame was delivered",
    "spans": "oldest version of the final frame's spans",
}


def _infer_match(seen: _Seen) -> tuple:
    checked, differ = seen.checked, seen.differ
    if not checked:
        return "id", "no reward digests to compare with delivered outputs; assumed id"
    if not differ:
        return "id", f"every one of the {checked} reward digests equals the final delivered digest of the " \
                     "request it names"
    return "arrival", (f"{differ} of {checked} reward digests differ from the final delivered digest of the "
                       f"request they name (e.g. {seen.first_differ}): results paired by completion order")


# --- a [loop] table -------------------------------------------------------------------------------------------


def load_loop_table(path) -> dict:
    """The keys of the ``[loop]`` table of TOML file ``path`` (a scenario file will do: its other tables are
    ignored), validated as ``LoopPolicy`` fields; raise ScenarioError naming the file and the field."""
    data = read_toml(path, "loop", ScenarioError)
    where = str(path)
    unknown = sorted(set(data) - set(_PARTS) - {"name"})
    if unknown:
        raise ScenarioError(f"{where}: unknown table {unknown[0]!r} (expected a [loop] table)")
    table = data.get("loop")
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a [loop] table")
    built = _build(LoopPolicy, table, f"{where}: [loop]")
    for name, choices in _CHOICES.items():
        if name in table and getattr(built, name) not in choices:
            raise ScenarioError(f"{where}: [loop].{name}: {getattr(built, name)!r} is not one of "
                                f"{', '.join(choices)}")
    return {k: getattr(built, k) for k in table}


def resolve_loop_policy(trace, path=None) -> tuple:
    """``(LoopPolicy or None, lines)`` for replaying ``trace``'s loop: inferred from the recording, with the
    keys of ``path``'s ``[loop]`` table (when given) in place of the inferred ones. None (and a line saying
    so) when the recording has no rewards or trainer consumption. ``lines``: one per applied setting."""
    given = load_loop_table(path) if path else {}
    rec = trace if isinstance(trace, Recorded) else recorded_loop(trace)
    if not rec.has_loop:
        note = f"; {path} not used" if path else ""
        return None, [f"no rewards or trainer consumption recorded: the replay has no RL loop{note}"]
    policy, reasons = infer_loop_policy(rec)
    if given:
        policy = dataclasses.replace(policy, **given)
    lines = []
    for name in APPLIED_FIELDS:
        line = next(x for x in reasons if x.startswith(name + " "))
        if name in given:
            inferred = line.split(":", 1)[0].split("=", 1)[1].strip()
            line = f"{name} = {given[name]}: given in {path} (the recording suggests {inferred})"
        lines.append(line)
    ignored = [k for k in given if k not in APPLIED_FIELDS]
    if ignored:
        lines.append(f"not applied in a replay (updates and pauses stay as recorded): {', '.join(ignored)}")
    return policy, lines


__all__ = ["APPLIED_FIELDS", "LABEL_SOURCES", "LOOP_TYPES", "Recorded", "infer_loop_policy", "load_loop_table",
           "recorded_loop", "resolve_loop_policy"]
