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

from collections import deque

from simpy.events import NORMAL, Event

from tracesim.format.digest import token_digest
from tracesim.format.records import ConsumedSample, SampleDropped, TrainerConsumed
from tracesim.sim.records_hot import reward_bound  # built in place: the keyword __new__ costs more than a binding
from tracesim.sim.recorded_loop import LOOP_TYPES, Recorded, infer_loop_policy, recorded_loop
from tracesim.sim.scenario import LoopPolicy


# --- the loop in a replay -------------------------------------------------------------------------------------

_SCORED_OR_CONSUMED = LOOP_TYPES - {SampleDropped}  # a recording has a loop to replay when it has one of them

# The policy's version_label as a number, decided once per run instead of a string compare per sample.
LABEL_ADMISSION, LABEL_SPANS, LABEL_FIRST_TOKEN, LABEL_FINISH = 0, 1, 2, 3
_LABEL_MODE = {"admission": LABEL_ADMISSION, "spans": LABEL_SPANS, "first_token": LABEL_FIRST_TOKEN}


class _Sample:
    """What the replayed loop knows of one request id."""

    __slots__ = ("digest", "label", "finals", "n_bound", "last_bound_ns", "last_reward", "pending", "idle",
                 "waiters")

    def __init__(self):
        self.digest = None  # digest of its last final frame in the replay
        self.label = None  # its version label (set at its final delivery; again at bind with a late read)
        self.finals = 0  # final deliveries of it seen in the replay (its incarnation count)
        self.n_bound = 0  # rewards the replay bound to it
        self.last_bound_ns = 0  # when the last of them was bound (virtual ns)
        self.last_reward = 0.0  # and its value
        self.pending = 0  # rewards scheduled that will be bound to it
        self.idle = False  # no reward can come for it now (until it is scheduled one again)
        self.waiters = []  # (rewards needed, event) of consumptions waiting for it


class ReplayLoop:
    """The recording's loop on a replayed run (module doc). ``extra_ns``: req_id -> added reward latency (the
    ``reward_delay`` perturbations; ``Hooks.install`` sets it)."""

    def __init__(self, rec: Recorded, policy: LoopPolicy, reasons=()):
        self.rec, self.policy, self.reasons = rec, policy, list(reasons)
        self.extra_ns = {}
        self.t0 = rec.t0
        self.arrival = policy.reward_match == "arrival"
        self.late = policy.version_read == "late"
        self.label_mode = _LABEL_MODE.get(policy.version_label, LABEL_FINISH)
        self._attached = {}  # (scored req_id, incarnation) -> [(ns after its final delivery, RewardBound)]
        self._loose = []  # rewards of samples the recording shows no final delivery for
        if self.arrival:  # each reward goes with the sample it was computed on
            for r in rec.rewards:
                scored = rec.scored(r)
                k, fin = rec.final_before(scored, r.t_ns)
                if fin is None:
                    self._loose.append(r)
                else:
                    self._attached.setdefault((scored, k), []).append((r.t_ns - fin.t_ns, r))
        else:  # with the one it names: what Recorded tied it to as it gathered the recording
            for r, (k, delay_ns) in zip(rec.rewards, rec.reward_finals()):
                if k is None:
                    self._loose.append(r)
                else:
                    self._attached.setdefault((r.req_id, k), []).append((delay_ns, r))
        # req_id -> its last client admission (Recorded.admission without a time), looked up per bound reward
        self._last_add = {rid: adds[-1] for rid, adds in rec.adds.items() if adds}
        self._samples = {}
        self._first = {}  # req_id -> engine version label when its current incarnation's first frame came
        self._handed = deque()  # "arrival": samples handed to the reward side, oldest first
        self._pending = 0
        self._ended = False
        self._quiet = None  # fires once the engine is done and every scheduled reward is bound
        self._events = []  # drops and consumptions, to wait for at the end

    @classmethod
    def from_recording(cls, trace, scan, policy: LoopPolicy | None = None):
        """The loop of ``trace`` (its ``replay._Scan``), or None when it recorded no rewards or consumption."""
        if not any(type(r) in _SCORED_OR_CONSUMED for _i, r in scan.picked):  # stops at the first
            return None
        rec = recorded_loop(trace)  # the one the caller may have inferred the policy from
        reasons = []
        if policy is None:
            policy, reasons = infer_loop_policy(rec)
        return cls(rec, policy, reasons)

    # --- wiring --------------------------------------------------------------------------------------------

    def attach(self, env, engine, client, emit) -> None:
        """Schedule the recorded drops and consumptions. ``client`` is the replay's stand-in ``Rollout``,
        made with ``on_first_frame=self.first_frame`` and ``on_final_frame=self.final_frame``."""
        self.env, self.engine, self.client, self.emit = env, engine, client, emit
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

    def first_frame(self, req_id) -> None:
        """The stand-in client's first frame of a request incarnation (``Rollout(on_first_frame=...)``): the
        engine's version then labels it."""
        self._first[req_id] = self.engine.version

    def final_frame(self, sample, reason, digest) -> None:
        """The stand-in client's final frame of a request (``Rollout(on_final_frame=...)``)."""
        self._final(sample, reason, digest)

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

    def _state(self, req_id) -> _Sample:
        st = self._samples.get(req_id)
        if st is None:
            st = self._samples[req_id] = _Sample()
        return st

    def _final(self, sample, reason, digest) -> None:
        rid, engine = sample.req_id, self.engine
        st = self._state(rid)
        k = st.finals
        st.finals = k + 1
        st.digest = digest
        mode = self.label_mode
        if mode == LABEL_ADMISSION:
            add = self.rec.admission(rid, self._admission_t(rid, k))
            st.label = add.version if add is not None and add.version is not None else engine.version
        elif mode == LABEL_SPANS:
            st.label = min(sample.stamps) if sample.stamps else engine.version
        elif mode == LABEL_FIRST_TOKEN:
            st.label = self._first.get(rid, engine.version)
        else:
            st.label = engine.version
        todo = self._attached.pop((rid, k), None)
        if reason == "abort" or todo is None:  # nothing to score (an aborted sample is not scored)
            if not st.pending:
                self._set_idle(st)
            return
        for delay_ns, r in todo:
            self._schedule(rid, r, delay_ns)

    def _schedule(self, scored, r, delay_ns) -> None:
        """Reward ``r``, computed on ``scored``'s tokens, is bound ``delay_ns`` from now (plus its perturbation)."""
        self._pending += 1
        if self.arrival:
            self._handed.append(scored)  # handed to the reward side now; the result goes to the oldest handed
        st = self._state(scored)
        st.pending += 1
        st.idle = False
        ns = delay_ns + self.extra_ns.get(scored, 0) if self.extra_ns else delay_ns
        # what env.timeout(ns, value) schedules, without the Timeout class's Python-level constructor
        ev = Event(self.env)
        ev._ok, ev._value = True, (scored, r)
        ev.callbacks.append(self._bind)
        self.env.schedule(ev, NORMAL, ns if ns > 0 else 0)

    def _admission_t(self, rid, k):
        """The recorded final of incarnation ``k``'s time: its admission is the last one before it."""
        fins = self.rec.finals.get(rid, ())
        return fins[k].t_ns if k < len(fins) else None

    def _bind(self, ev) -> None:
        scored, r = ev._value
        owner = scored
        if self.arrival and self._handed:
            owner = self._handed.popleft()
        st = self._state(owner)
        label = st.label
        if self.late or label is None:
            label = st.label = self.engine.version
        add = self._last_add.get(owner)
        group = add.group_id if add is not None and add.group_id is not None else r.group_id
        now = self.env.now
        reward = r.reward
        self.emit(reward_bound(t_ns=now, req_id=owner, digest=self._digest_now(scored), version=label, reward=reward,
                               group_id=group, worker=r.worker))
        st.n_bound += 1
        st.last_bound_ns, st.last_reward = now, reward
        if st.pending:
            st.pending -= 1
        if not st.pending:
            st.idle = True
        self._wake(st)
        self._pending -= 1
        if self._ended and not self._pending:
            self._release_all()

    def _digest_now(self, req_id):
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
            if st.idle or st.n_bound >= n:
                ev.succeed()
            else:
                keep.append((n, ev))
        st.waiters = keep

    def _release_all(self) -> None:
        for st in self._samples.values():
            self._set_idle(st)
        if not self._quiet.triggered:
            self._quiet.succeed()

    def _wait(self, req_id, n):
        """An event that fires once ``n`` rewards were bound to ``req_id`` or none can come; None if so now."""
        if n <= 0:
            return None
        st = self._state(req_id)
        if st.n_bound >= n or st.idle or (self._ended and not self._pending):
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
            if rw_t is not None and st is not None and st.n_bound:
                t = max(t, st.last_bound_ns + (c.t_ns - rw_t))
        if t > env.now:
            yield env.timeout(t - env.now)
        out = []
        for s in c.samples:
            st = self._samples.get(s.req_id)
            label = st.label if st is not None and st.label is not None else self._fallback_label(s)
            reward = st.last_reward if st is not None and st.n_bound else s.reward
            out.append(ConsumedSample(s.req_id, s.group_id, label, self._digest_now(s.req_id), reward))
        self.emit(TrainerConsumed(env.now, c.train_step, tuple(out), c.trainer_version))

    def _fallback_label(self, s):
        """The label of a consumed sample the replay never finished: its admission's with that policy, else
        the recorded one."""
        if self.label_mode == LABEL_ADMISSION:
            add = self.rec.admission(s.req_id)
            if add is not None and add.version is not None:
                return add.version
        return s.version


__all__ = ["LOOP_TYPES", "ReplayLoop"]
