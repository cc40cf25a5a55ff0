"""What a recording shows of its RL loop, and the loop policy it implies.

``Recorded`` indexes a recording's client side (admissions, final deliveries, rewards, consumption, weight
updates); ``infer_loop_policy`` reads from it which label source, version read and reward matching the loop
used, with a reason per setting; ``resolve_loop_policy`` lets a ``[loop]`` table (``--loop FILE``) override
what was inferred. ``replay_loop.ReplayLoop`` re-enacts the loop on a replayed run.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import NamedTuple

from tracesim.format.records import (
    OutputDelivered, RequestAdded, RewardBound, SampleDropped, TrainerConsumed, WeightsUpdated,
)
from tracesim.inputs import read_toml
from tracesim.sim.scenario import _CHOICES, _PARTS, LoopPolicy, ScenarioError, _build

LOOP_TYPES = frozenset((RewardBound, TrainerConsumed, SampleDropped))
LABEL_SOURCES = ("admission", "first_token", "finish", "spans")


class LabelSeen(NamedTuple):
    """One recorded version label (on a reward, or on a consumed sample) and what could have produced it."""

    label: int  # the label recorded
    sources: dict  # {label source: the label it would give (None: unknown)}
    at_final: int | None  # the engine's version label at the sample's final delivery
    at_read: int | None  # the engine's version label when the label was read (reward time)


class Fit(NamedTuple):
    """How far one label source explains the recorded labels."""

    matched: int  # labels it gives exactly
    known: int  # labels it gives at all
APPLIED_FIELDS = ("version_label", "version_read", "reward_match")  # the LoopPolicy fields a replay uses


# --- what the recording shows of its loop ---------------------------------------------------------------------


class Recorded:
    """The recording's loop, gathered in one pass: rewards, consumptions, drops, client admissions, the final
    (and first) delivered frame of each request incarnation, and the engine's version label over time."""

    def __init__(self, records, t0: int, by_type: dict | None = None):
        """``by_type``: the records grouped by type (``Trace._kinds()``), when the caller has them: each kind
        is then taken as a whole, and only the deliveries are looped over."""
        self.t0 = t0
        self.finals: dict = {}  # req_id -> [finished OutputDelivered, ...] per incarnation, in order
        self.firsts: dict = {}  # req_id -> [t_ns of the first frame of each incarnation]
        self.adds: dict = {}  # req_id -> [client RequestAdded, ...]
        if by_type is None:
            by_type = {}
            for r in records:
                by_type.setdefault(type(r), []).append(r)
        self.rewards = list(by_type.get(RewardBound, ()))
        self.consumes = list(by_type.get(TrainerConsumed, ()))
        self.drops = list(by_type.get(SampleDropped, ()))
        for r in by_type.get(RequestAdded, ()):
            if r.side == "client":
                self.adds.setdefault(r.req_id, []).append(r)
        sets = [(r.set_ns if r.set_ns is not None else r.end_ns, r.version) for r in by_type.get(WeightsUpdated, ())]
        firsts, finals, open_ = self.firsts, self.finals, set()
        for r in by_type.get(OutputDelivered, ()):
            rid = r.req_id
            if rid not in open_:
                open_.add(rid)
                firsts.setdefault(rid, []).append(r.t_ns)
            if r.finished:
                open_.discard(rid)
                finals.setdefault(rid, []).append(r)
        sets.sort(key=lambda x: x[0])
        self._set_t = [t for t, _ in sets]
        self._set_v = [v for _, v in sets]
        self._rewards_of: dict = {}  # req_id -> t_ns of its recorded rewards, in order
        for r in self.rewards:
            self._rewards_of.setdefault(r.req_id, []).append(r.t_ns)
        self._by_digest: dict = {}  # final digest -> [(t_ns, req_id)]
        for rid, fins in self.finals.items():
            for f in fins:
                if f.digest is not None:
                    self._by_digest.setdefault(f.digest, []).append((f.t_ns, rid))

    @property
    def has_loop(self) -> bool:
        return bool(self.rewards or self.consumes)

    def version_at(self, t_ns: int):
        """The engine's version label at ``t_ns`` (0 before the first recorded update, as in the replay)."""
        i = bisect.bisect_right(self._set_t, t_ns)
        return self._set_v[i - 1] if i else 0

    def final_before(self, req_id: str, t_ns: int) -> tuple:
        """(incarnation index, final frame) of ``req_id``'s last final delivery at or before ``t_ns``;
        (None, None) when none."""
        fins = self.finals.get(req_id, ())
        for k in range(len(fins) - 1, -1, -1):
            if fins[k].t_ns <= t_ns:
                return k, fins[k]
        return None, None

    def admission(self, req_id: str, t_ns: int | None = None):
        """The client RequestAdded of ``req_id`` last before ``t_ns`` (or the last one), or None."""
        adds = self.adds.get(req_id, ())
        for a in reversed(adds):
            if t_ns is None or a.t_ns <= t_ns:
                return a
        return adds[0] if adds else None

    def scored(self, r) -> str:
        """The request whose tokens reward ``r`` was computed on: the one it names when its final digest is
        ``r``'s, else the last request that delivered that digest before ``r`` (arrival matching)."""
        if r.digest is None:
            return r.req_id
        _, fin = self.final_before(r.req_id, r.t_ns)
        if fin is not None and fin.digest == r.digest:
            return r.req_id
        owners = [rid for t, rid in self._by_digest.get(r.digest, ()) if t <= r.t_ns]
        return owners[-1] if owners else r.req_id

    def rewards_before(self, req_id: str, t_ns: int) -> int:
        return bisect.bisect_right(self._rewards_of.get(req_id, ()), t_ns)

    def last_reward_before(self, req_id: str, t_ns: int):
        ts = self._rewards_of.get(req_id, ())
        i = bisect.bisect_right(ts, t_ns)
        return ts[i - 1] if i else None

    def sources(self, req_id: str, k, fin) -> dict:
        """The label each ``version_label`` source gives incarnation ``k`` of ``req_id`` (None: unknown)."""
        add = self.admission(req_id, fin.t_ns if fin is not None else None)
        out = {"admission": add.version if add is not None else None,
               "first_token": None, "finish": None, "spans": None}
        if fin is not None:
            out["finish"] = self.version_at(fin.t_ns)
            firsts = self.firsts.get(req_id, ())
            if k is not None and k < len(firsts):
                out["first_token"] = self.version_at(firsts[k])
            versions = [sp.version for sp in fin.spans or () if sp.version >= 0]
            if versions:
                out["spans"] = min(versions)
        return out


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
    obs = []  # LabelSeen
    for r in rec.rewards:
        if r.version is None:
            continue
        k, fin = rec.final_before(r.req_id, r.t_ns)
        obs.append(LabelSeen(label=r.version, sources=rec.sources(r.req_id, k, fin),
                             at_final=rec.version_at(fin.t_ns) if fin is not None else None,
                             at_read=rec.version_at(r.t_ns)))
    n_rewards = len(obs)
    for c in rec.consumes:
        for s in c.samples:
            if s.version is None:
                continue
            k, fin = rec.final_before(s.req_id, c.t_ns)
            rw_t = rec.last_reward_before(s.req_id, c.t_ns)
            obs.append(LabelSeen(label=s.version, sources=rec.sources(s.req_id, k, fin),
                                 at_final=rec.version_at(fin.t_ns) if fin is not None else None,
                                 at_read=rec.version_at(rw_t) if rw_t is not None else None))
    what = f"{len(obs)} recorded labels ({n_rewards} on rewards, {len(obs) - n_rewards} on consumed samples)"
    label, read, reasons = _infer_label(obs, what)
    match, why_match = _infer_match(rec)
    policy = LoopPolicy(version_label=label, version_read=read, reward_match=match)
    return policy, reasons + [f"reward_match = {match}: {why_match}"]


def _infer_label(obs: list, what: str) -> tuple:
    if not obs:
        return "spans", "once", ["version_label = spans: no version labels on recorded rewards or consumed "
                                 "samples; assumed spans",
                                 "version_read = once: no labels recorded; assumed once"]
    fit = {}
    for src in LABEL_SOURCES:
        known = [(o.label, o.sources[src]) for o in obs if o.sources[src] is not None]
        fit[src] = Fit(matched=sum(1 for label, v in known if label == v), known=len(known))
    fitting = [s for s in LABEL_SOURCES if fit[s].known and fit[s].matched == fit[s].known]
    crossing = [o for o in obs if o.at_final is not None and o.at_read is not None and o.at_final != o.at_read]
    late_known = [o for o in obs if o.at_read is not None]
    late_fits = bool(late_known) and all(o.label == o.at_read for o in late_known)
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
            kept = sum(1 for o in crossing if o.label != o.at_read)
            read_why = (f"{len(crossing)} label(s) were read after the version changed since the final delivery; "
                        f"{kept} of them kept the older value") if kept else \
                (f"{len(crossing)} label(s) read after a version change fit both; assumed once")
        else:
            read_why = "no label was read after the version changed since the sample's final delivery; assumed once"
        return label, "once", [f"version_label = {label}: {why}", f"version_read = once: {read_why}"]
    if late_fits and crossing:
        rest = [o for o in obs if o not in crossing]
        fit_rest = {s: all(o.label == o.sources[s] for o in rest if o.sources[s] is not None) and
                    any(o.sources[s] is not None for o in rest) for s in LABEL_SOURCES}
        label = "spans" if fit_rest["spans"] or not any(fit_rest.values()) else \
            next(s for s in LABEL_SOURCES if fit_rest[s])
        return label, "late", [
            f"version_label = {label}: the labels not read across a version change fit "
            f"{', '.join(s for s in LABEL_SOURCES if fit_rest[s]) or 'no source'}; assumed {label}",
            f"version_read = late: {len(crossing)} label(s) equal the version at reward time, which had changed "
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


def _infer_match(rec: Recorded) -> tuple:
    checked, differ = 0, []
    for r in rec.rewards:
        if r.digest is None:
            continue
        _, fin = rec.final_before(r.req_id, r.t_ns)
        if fin is not None and fin.digest is None:
            continue
        checked += 1
        if fin is None or fin.digest != r.digest:
            differ.append(r.req_id)
    if not checked:
        return "id", "no reward digests to compare with delivered outputs; assumed id"
    if not differ:
        return "id", f"every one of the {checked} reward digests equals the final delivered digest of the " \
                     "request it names"
    return "arrival", (f"{len(differ)} of {checked} reward digests differ from the final delivered digest of the "
                       f"request they name (e.g. {differ[0]}): results paired by completion order")


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
