"""The RL loop of a recording, replayed around its replayed engine (``replay.replay``).

Exact replay recomputes the engine side of a recording; the loop around it (reward workers, trainer) is not
a model of the user's code but what the recording shows it did. ``ReplayLoop`` re-enacts it on the replayed
run, so the reward and consumption invariants stay checkable and perturbations of rewards act:

* rewards: each recorded ``RewardBound`` is tied to the final delivery of the sample it scored and bound again
  after the recorded delay from that delivery (plus any ``reward_delay`` perturbation of the sample). Its
  digest is that of the tokens the replay client received for the scored sample; the sample it is bound to
  follows the loop's ``reward_match`` ("id": the scored one; "arrival": the k-th reward computed goes to the
  k-th sample handed to the reward side, as ``trainer.RewardPool`` does); its version label follows
  ``version_label`` (admission: the recorded client admission; first_token / finish: the engine's label
  when the first / final frame reached the client; spans: the oldest version of the replayed tokens), read
  again at bind time with ``version_read = "late"``. The reward value is the recorded one.
* consumption: each recorded ``TrainerConsumed`` is emitted at its recorded time, or later when a sample's
  replayed reward came later than recorded (by the recorded reward-to-consumption gap), never before the
  previous train step; its samples carry the replayed label, digest and reward. A sample the replay never
  rewarded (aborted in a perturbed run, say) is still consumed, with the last digest the replay knew (None
  if none): a trainer that consumes what it was given, which is what the recorded loop would do unchanged.
* ``SampleDropped`` records are carried over at their recorded times.

Weight updates, pauses and client admissions stay where they were recorded (``replay.py``), so of a
``LoopPolicy`` only ``version_label``, ``version_read`` and ``reward_match`` apply here. They are given
(``replay(loop_policy=...)``; ``--loop FILE`` on the command line, a ``[loop]`` table whose keys override the
inferred ones) or inferred from the recording (``infer_loop_policy``).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import deque

from tracesim.format.digest import token_digest
from tracesim.format.records import (
    ConsumedSample, OutputDelivered, RequestAdded, RewardBound, SampleDropped, TrainerConsumed, WeightsUpdated,
)
from tracesim.inputs import read_toml
from tracesim.sim.scenario import _CHOICES, _PARTS, LoopPolicy, ScenarioError, _build

LOOP_TYPES = frozenset((RewardBound, TrainerConsumed, SampleDropped))
LABEL_SOURCES = ("admission", "first_token", "finish", "spans")
APPLIED_FIELDS = ("version_label", "version_read", "reward_match")  # the LoopPolicy fields a replay uses


# --- what the recording shows of its loop ---------------------------------------------------------------------


class Recorded:
    """The recording's loop, gathered in one pass: rewards, consumptions, drops, client admissions, the final
    (and first) delivered frame of each request incarnation, and the engine's version label over time."""

    def __init__(self, records, t0: int):
        self.t0 = t0
        self.rewards, self.consumes, self.drops = [], [], []
        self.finals: dict = {}  # req_id -> [finished OutputDelivered, ...] per incarnation, in order
        self.firsts: dict = {}  # req_id -> [t_ns of the first frame of each incarnation]
        self.adds: dict = {}  # req_id -> [client RequestAdded, ...]
        sets, open_ = [], set()
        for r in records:
            kind = type(r)
            if kind is OutputDelivered:
                rid = r.req_id
                if rid not in open_:
                    open_.add(rid)
                    self.firsts.setdefault(rid, []).append(r.t_ns)
                if r.finished:
                    open_.discard(rid)
                    self.finals.setdefault(rid, []).append(r)
            elif kind is RewardBound:
                self.rewards.append(r)
            elif kind is TrainerConsumed:
                self.consumes.append(r)
            elif kind is SampleDropped:
                self.drops.append(r)
            elif kind is RequestAdded:
                if r.side == "client":
                    self.adds.setdefault(r.req_id, []).append(r)
            elif kind is WeightsUpdated:
                sets.append((r.set_ns if r.set_ns is not None else r.end_ns, r.version))
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
    from tracesim.sim.steptime import first_t_ns

    return Recorded(trace.records, first_t_ns(trace.records) if trace.records else 0)


# --- inferring the loop policy --------------------------------------------------------------------------------


def infer_loop_policy(trace) -> tuple:
    """``(LoopPolicy, reasons)``: the labelling and matching policy the recorded loop behaved by, and one
    human-readable line per inferred setting (``"version_label = spans: ..."``). ``trace``: a Trace or a
    ``Recorded``. Settings a recording cannot show (pause mode, retries, ...) keep LoopPolicy's defaults;
    a replay does not use them."""
    rec = trace if isinstance(trace, Recorded) else recorded_loop(trace)
    obs = []  # (recorded label, {source: label}, version at final delivery, version at reward)
    for r in rec.rewards:
        if r.version is None:
            continue
        k, fin = rec.final_before(r.req_id, r.t_ns)
        obs.append((r.version, rec.sources(r.req_id, k, fin),
                    rec.version_at(fin.t_ns) if fin is not None else None, rec.version_at(r.t_ns)))
    n_rewards = len(obs)
    for c in rec.consumes:
        for s in c.samples:
            if s.version is None:
                continue
            k, fin = rec.final_before(s.req_id, c.t_ns)
            rw_t = rec.last_reward_before(s.req_id, c.t_ns)
            obs.append((s.version, rec.sources(s.req_id, k, fin),
                        rec.version_at(fin.t_ns) if fin is not None else None,
                        rec.version_at(rw_t) if rw_t is not None else None))
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
        known = [(label, vals[src]) for label, vals, _vf, _vb in obs if vals[src] is not None]
        fit[src] = (sum(1 for label, v in known if label == v), len(known))
    fitting = [s for s in LABEL_SOURCES if fit[s][1] and fit[s][0] == fit[s][1]]
    crossing = [o for o in obs if o[2] is not None and o[3] is not None and o[2] != o[3]]
    late_known = [o for o in obs if o[3] is not None]
    late_fits = bool(late_known) and all(o[0] == o[3] for o in late_known)
    if fitting:
        label = "spans" if "spans" in fitting else fitting[0]
        if len(fitting) > 1:
            why = f"ambiguous, assumed {label}: the {what} fit {', '.join(fitting)} alike"
        else:
            others = ", ".join(f"{s} {fit[s][0]}/{fit[s][1]}" for s in LABEL_SOURCES if s != label and fit[s][1])
            why = f"the {what} all equal the {_SOURCE_WORDS[label]}" + \
                (f" (other sources match: {others})" if others else "")
        if crossing:
            kept = sum(1 for o in crossing if o[0] != o[3])
            read_why = (f"{len(crossing)} label(s) were read after the version changed since the final delivery; "
                        f"{kept} of them kept the older value") if kept else \
                (f"{len(crossing)} label(s) read after a version change fit both; assumed once")
        else:
            read_why = "no label was read after the version changed since the sample's final delivery; assumed once"
        return label, "once", [f"version_label = {label}: {why}", f"version_read = once: {read_why}"]
    if late_fits and crossing:
        rest = [o for o in obs if o not in crossing]
        fit_rest = {s: all(o[0] == o[1][s] for o in rest if o[1][s] is not None) and
                    any(o[1][s] is not None for o in rest) for s in LABEL_SOURCES}
        label = "spans" if fit_rest["spans"] or not any(fit_rest.values()) else \
            next(s for s in LABEL_SOURCES if fit_rest[s])
        return label, "late", [
            f"version_label = {label}: the labels not read across a version change fit "
            f"{', '.join(s for s in LABEL_SOURCES if fit_rest[s]) or 'no source'}; assumed {label}",
            f"version_read = late: {len(crossing)} label(s) equal the version at reward time, which had changed "
            f"since the sample's final delivery"]
    best = max(LABEL_SOURCES, key=lambda s: (fit[s][0] / fit[s][1] if fit[s][1] else -1, s == "spans"))
    return best, "once", [
        f"version_label = {best}: no source fits every one of the {what}; best {best} "
        f"({fit[best][0]} of {fit[best][1]}: " + ", ".join(f"{s} {fit[s][0]}/{fit[s][1]}" for s in LABEL_SOURCES)
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


# --- the loop in a replay -------------------------------------------------------------------------------------


class _Sample:
    """What the replayed loop knows of one request id."""

    __slots__ = ("digest", "label", "bound", "pending", "idle", "waiters")

    def __init__(self):
        self.digest = None  # digest of its last final frame in the replay
        self.label = None  # its version label (set at its final delivery; again at bind with a late read)
        self.bound = []  # (t, label, reward) of every reward the replay bound to it
        self.pending = 0  # rewards scheduled that will be bound to it
        self.idle = False  # no reward can come for it now (until it is scheduled one again)
        self.waiters = []  # (rewards needed, event) of consumptions waiting for it


class ReplayLoop:
    """The recording's loop on a replayed run (module doc). ``extra_ns``: req_id -> added reward latency (the
    ``reward_delay`` perturbations; ``Hooks.install`` sets it)."""

    def __init__(self, rec: Recorded, policy: LoopPolicy, reasons=()):
        self.rec, self.policy, self.reasons = rec, policy, list(reasons)
        self.extra_ns: dict = {}
        self.t0 = rec.t0
        self.arrival = policy.reward_match == "arrival"
        self.late = policy.version_read == "late"
        self._attached: dict = {}  # (scored req_id, incarnation) -> [(ns after its final delivery, RewardBound)]
        self._loose = []  # rewards of samples the recording shows no final delivery for
        for r in rec.rewards:
            scored = rec.scored(r) if self.arrival else r.req_id
            k, fin = rec.final_before(scored, r.t_ns)
            if fin is None:
                self._loose.append(r)
            else:
                self._attached.setdefault((scored, k), []).append((r.t_ns - fin.t_ns, r))
        self._samples: dict = {}
        self._finals: dict = {}  # req_id -> final deliveries seen in the replay
        self._first: dict = {}  # req_id -> engine version label when its current incarnation's first frame came
        self._handed: deque = deque()  # "arrival": samples handed to the reward side, oldest first
        self._pending = 0
        self._ended = False
        self._quiet = None  # fires once the engine is done and every scheduled reward is bound
        self._events = []  # drops and consumptions, to wait for at the end

    @classmethod
    def from_recording(cls, trace, scan, policy: LoopPolicy | None = None):
        """The loop of ``trace`` (its ``replay._Scan``), or None when it recorded no rewards or consumption."""
        if not any(type(r) is not SampleDropped for _i, r in scan.of_types(LOOP_TYPES)):
            return None
        rec = Recorded(trace.records, scan.t0)
        reasons = []
        if policy is None:
            policy, reasons = infer_loop_policy(rec)
        return cls(rec, policy, reasons)

    # --- wiring --------------------------------------------------------------------------------------------

    def attach(self, env, engine, client, emit) -> None:
        """Follow the replay client's deliveries and schedule the recorded drops and consumptions."""
        self.env, self.engine, self.client, self.emit = env, engine, client, emit
        untracked, finished = client._untracked, client._finished

        def first_frame(req_id):  # the client's first frame of a request incarnation
            self._first[req_id] = engine.version
            return untracked(req_id)

        def final_frame(sample, reason, digest):
            self._final(sample, reason, digest)
            finished(sample, reason, digest)

        client._untracked, client._finished = first_frame, final_frame
        t0 = self.t0
        for d in self.rec.drops:
            ev = env.timeout(max(0, d.t_ns - t0), d._replace(t_ns=max(0, d.t_ns - t0)))
            ev.callbacks.append(self._emit_value)
            self._events.append(ev)
        for r in self._loose:
            self._schedule(r.req_id, r, r.t_ns - t0)
        prev = None
        for c in self.rec.consumes:
            prev = env.process(self._consume(c, prev))
            self._events.append(prev)

    def finish(self) -> None:
        """The engine is done: no more final deliveries. Run until every reward, consumption and drop is out."""
        self._ended = True
        self._quiet = self.env.event()
        if not self._pending:
            self._release_all()
        events = [e for e in self._events if not e.processed] + [self._quiet]
        self.env.run(until=self.env.all_of(events))

    def _emit_value(self, ev) -> None:
        self.emit(ev.value)

    # --- rewards -------------------------------------------------------------------------------------------

    def _state(self, req_id: str) -> _Sample:
        st = self._samples.get(req_id)
        if st is None:
            st = self._samples[req_id] = _Sample()
        return st

    def _final(self, sample, reason, digest) -> None:
        rid, engine = sample.req_id, self.engine
        k = self._finals.get(rid, 0)
        self._finals[rid] = k + 1
        st = self._state(rid)
        st.digest = digest
        src = self.policy.version_label
        if src == "admission":
            add = self.rec.admission(rid, self._admission_t(rid, k))
            st.label = add.version if add is not None and add.version is not None else engine.version
        elif src == "spans":
            st.label = min(sample.stamps) if sample.stamps else engine.version
        elif src == "first_token":
            st.label = self._first.get(rid, engine.version)
        else:
            st.label = engine.version
        todo = self._attached.pop((rid, k), ())
        if reason == "abort" or not todo:  # nothing to score (an aborted sample is not scored)
            if not st.pending:
                self._set_idle(st)
            return
        for delay_ns, r in todo:
            self._schedule(rid, r, delay_ns)

    def _schedule(self, scored: str, r, delay_ns: int) -> None:
        """Reward ``r``, computed on ``scored``'s tokens, is bound ``delay_ns`` from now (plus its perturbation)."""
        self._pending += 1
        owner = scored
        if self.arrival:
            self._handed.append(scored)  # handed to the reward side now; the result goes to the oldest handed
        st = self._state(owner)
        st.pending += 1
        st.idle = False
        ns = max(0, delay_ns + self.extra_ns.get(scored, 0))
        self.env.timeout(ns, (scored, r)).callbacks.append(self._bind)

    def _admission_t(self, rid: str, k: int):
        """The recorded final of incarnation ``k``'s time: its admission is the last one before it."""
        fins = self.rec.finals.get(rid, ())
        return fins[k].t_ns if k < len(fins) else None

    def _bind(self, ev) -> None:
        scored, r = ev.value
        owner = scored
        if self.arrival and self._handed:
            owner = self._handed.popleft()
        st = self._state(owner)
        label = st.label
        if self.late or label is None:
            label = st.label = self.engine.version
        add = self.rec.admission(owner)
        group = add.group_id if add is not None and add.group_id is not None else r.group_id
        self.emit(RewardBound(self.env.now, owner, self._digest_now(scored), label, r.reward, group, r.worker))
        st.bound.append((self.env.now, label, r.reward))
        if st.pending:
            st.pending -= 1
        if not st.pending:
            st.idle = True
        self._wake(st)
        self._pending -= 1
        if self._ended and not self._pending:
            self._release_all()

    def _digest_now(self, req_id: str):
        """The digest of what the replay client last had of ``req_id``: its final frame's, else the tokens
        received so far, else None."""
        st = self._samples.get(req_id)
        if st is not None and st.digest is not None:
            return st.digest
        sample = self.client.samples.get(req_id)
        if sample is not None and sample.tokens:
            return token_digest(sample.tokens)
        return None

    # --- waiting for rewards -------------------------------------------------------------------------------

    def _set_idle(self, st: _Sample) -> None:
        st.idle = True
        self._wake(st)

    def _wake(self, st: _Sample) -> None:
        if not st.waiters:
            return
        keep = []
        for n, ev in st.waiters:
            if st.idle or len(st.bound) >= n:
                ev.succeed()
            else:
                keep.append((n, ev))
        st.waiters = keep

    def _release_all(self) -> None:
        for st in self._samples.values():
            self._set_idle(st)
        if not self._quiet.triggered:
            self._quiet.succeed()

    def _wait(self, req_id: str, n: int):
        """An event that fires once ``n`` rewards were bound to ``req_id`` or none can come; None if so now."""
        if n <= 0:
            return None
        st = self._state(req_id)
        if len(st.bound) >= n or st.idle or (self._ended and not self._pending):
            return None
        ev = self.env.event()
        st.waiters.append((n, ev))
        return ev

    # --- consumption ---------------------------------------------------------------------------------------

    def _consume(self, c, prev):
        env, rec = self.env, self.rec
        t_rel = c.t_ns - self.t0
        if t_rel > env.now:
            yield env.timeout(t_rel - env.now)
        if prev is not None and not prev.processed:
            yield prev  # train steps stay in order
        for s in c.samples:
            ev = self._wait(s.req_id, rec.rewards_before(s.req_id, c.t_ns))
            if ev is not None:
                yield ev
        t = t_rel
        for s in c.samples:
            rw_t = rec.last_reward_before(s.req_id, c.t_ns)
            st = self._samples.get(s.req_id)
            if rw_t is not None and st is not None and st.bound:
                t = max(t, st.bound[-1][0] + (c.t_ns - rw_t))
        if t > env.now:
            yield env.timeout(t - env.now)
        out = []
        for s in c.samples:
            st = self._samples.get(s.req_id)
            label = st.label if st is not None and st.label is not None else self._fallback_label(s)
            reward = st.bound[-1][2] if st is not None and st.bound else s.reward
            out.append(ConsumedSample(s.req_id, s.group_id, label, self._digest_now(s.req_id), reward))
        self.emit(TrainerConsumed(env.now, c.train_step, tuple(out), c.trainer_version))

    def _fallback_label(self, s):
        """The label of a consumed sample the replay never finished: its admission's with that policy, else
        the recorded one."""
        if self.policy.version_label == "admission":
            add = self.rec.admission(s.req_id)
            if add is not None and add.version is not None:
                return add.version
        return s.version


__all__ = ["LOOP_TYPES", "Recorded", "ReplayLoop", "infer_loop_policy", "load_loop_table", "recorded_loop",
           "resolve_loop_policy"]
