"""Reward workers and the trainer: the consuming half of the RL loop.

Finished samples queue for a pool of reward workers whose latencies differ, so results come back out of
order. ``reward_match="id"`` binds each result to the sample it was computed on; ``"arrival"`` binds the
k-th result to the k-th sample handed out (a real-world bug this model must be able to show). The trainer
consumes whole groups in batches and, every ``update_every`` training steps, runs a weight-update cycle:
pause (mode, clear_cache) -> the loop's own cache reset (``reset_prefix_cache``, optional) -> write weights ->
set version -> resume.
The version publisher (``publisher.py``) says which version a cycle publishes, where in it the label moves
(``label_advance``) and what the publish does besides (``publish_aborts_all``); ``weights.py`` what the engine
then serves (``weight_sync_fault``) and the fingerprints of both sides.

The loop's cache reset (``reset_prefix_cache = true``) is vLLM's ``reset_prefix_cache(reset_running_requests=
False, reset_connector)``: refused (``ok`` false) while any request holds KV blocks, e.g. the requests a keep
pause holds or a pause not waited for. ``on_reset_refused`` is the loop's reaction: "ignore" goes on with the
stale cache (the bug of NeMo-RL #3929's review), "retry" calls again every ``RESET_RETRY_US`` until ``ok``,
"reset_running" calls again with ``reset_running_requests = True``.

Behaviour logprobs (``behaviour_logprobs``): with "engine" the trainer uses the logprobs the engine returned
with the tokens, computed by the weights that sampled them, and records one ``SampleLogprobs`` per version span
of a sample; with "recompute" it computes them again at consumption with its current weights (verl's and
OpenRLHF's ``old_log_prob``, computed with the actor just before its update) and records one per sample, stamped
with the trainer's version then: off by as many versions as the sample is stale. Only the versions are
simulated (``logprobs`` is None).
"""

from __future__ import annotations

import random
from collections import deque

from tracesim.format.records import (
    PAUSED_ALL, PAUSED_NEW, ConsumedSample, Paused, RewardBound, Resumed, SampleDropped, SampleLogprobs,
    TrainerConsumed, WeightsUpdated,
)
from tracesim.sim.abort_ids import pause_by_ids
from tracesim.sim.cancel import cancel_off_policy
from tracesim.sim.grouping import Grouper, sources_of
from tracesim.sim.publisher import Publisher
from tracesim.sim.rollout import spans_of

RESET_RETRY_US = 1000  # on_reset_refused = "retry": the loop calls reset_prefix_cache again after this


def reward_of(digest: str) -> float:
    """A deterministic stand-in reward computed from the scored tokens."""
    return int(digest[:4], 16) / 65535.0


class RewardPool:
    def __init__(self, env, policy, emit, rng: random.Random, rollout, on_rewarded):
        self.env, self.policy, self.emit, self.rng = env, policy, emit, rng
        self.rollout, self.on_rewarded = rollout, on_rewarded
        self.queue: deque = deque()
        self.handed: deque = deque()  # samples in the order they were handed out (for "arrival" matching)
        self.idle = [env.event() for _ in range(policy.reward_workers)]
        self.extra_ns: dict = {}  # req_id -> added reward latency (a perturbation, hooks.py)
        for w in range(policy.reward_workers):
            env.process(self._worker(w))

    def put(self, sample) -> None:
        self.queue.append(sample)
        for i, ev in enumerate(self.idle):
            if not ev.triggered:
                ev.succeed()
                break

    def _worker(self, w: int):
        env = self.env
        while True:
            if not self.queue:
                self.idle[w] = env.event()
                yield self.idle[w]
                continue
            sample = self.queue.popleft()
            self.handed.append(sample)
            latency_ns = self.rng.randint(*self.policy.reward_us) * 1000  # drawn always: other draws stay put
            if self.extra_ns:
                latency_ns = max(0, latency_ns + self.extra_ns.get(sample.req_id, 0))
            yield env.timeout(latency_ns)
            self._bind(sample, w)

    def _bind(self, scored, worker: int) -> None:
        owner = scored
        if self.policy.reward_match == "arrival":
            owner = self.handed.popleft()  # the oldest sample handed out gets this result
        else:
            self.handed.remove(scored)
        if self.policy.version_read == "late":
            owner.label = self.rollout.version  # read again after the await: may be a newer version
        reward = reward_of(scored.digest)
        self.emit(RewardBound(self.env.now, owner.req_id, scored.digest, owner.label, reward,
                              owner.group.group_id, worker))
        self.on_rewarded(owner, reward)


class Trainer:
    def __init__(self, env, scenario, engine, rollout, emit, done, reserve=None):
        """``reserve()``: keep the next place in the record stream for a record known later; returns the
        function that fills it (None: such records are emitted when known)."""
        self.env, self.policy, self.engine, self.rollout, self.emit = env, scenario.loop, engine, rollout, emit
        self.reserve = reserve
        self.done = done
        self.rewards: dict = {}  # req_id -> reward
        self.ready: deque = deque()  # groups whose every sample has a reward
        self.train_step = 0
        self.version = 0
        self.updates = 0  # weight-update cycles started
        self.updating = None  # an injected update cycle in progress (a SimPy process), if any
        self.in_update = False  # any update cycle in progress
        self.tweaks = None  # update number -> hooks.UpdateTweaks (perturbations of that cycle)
        self.publisher = Publisher(scenario, engine, emit)  # version numbers, label timing, weight payloads
        self._wake = env.event()
        self.grouper = None if self.policy.group_by == "id" else \
            Grouper(self.policy.group_by, scenario.workload.group_size, rollout)

    def rewarded(self, sample, reward: float) -> None:
        if sample.group.dropped:
            return
        self.rewards[sample.req_id] = reward
        if self.grouper is not None:  # group_by "prompt" / "position" (grouping.py)
            self._ready(self.grouper.rewarded(sample, self.rewards))
            return
        group = sample.group
        if all(s.req_id in self.rewards for s in group.samples):
            self.ready.append(group)
            self._poke()

    def group_dropped(self, group) -> None:
        if self.grouper is not None:
            self._ready(self.grouper.dropped(group, self.rewards))
            return
        self._poke()

    def _ready(self, groups: list) -> None:
        self.ready.extend(groups)
        self._poke()

    def _poke(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _all_resolved(self) -> bool:
        ro = self.rollout
        return ro.all_submitted() and all(g.dropped or g in self._consumed for g in ro.groups)

    def run(self):
        env, policy = self.env, self.policy
        self._consumed = set()
        self.publisher.weights.start(env.now)
        while True:
            if len(self.ready) < policy.batch_groups and not (self.ready and self._tail()):
                if self._all_resolved():
                    self.done.succeed(env.now)
                    return
                self._wake = env.event()
                yield self._wake
                continue
            batch = [self.ready.popleft() for _ in range(min(policy.batch_groups, len(self.ready)))]
            samples, kept = self._admit(batch)
            if samples:
                self.emit(TrainerConsumed(env.now, self.train_step, tuple(samples), self.version))
                if policy.behaviour_logprobs != "none":
                    self._behaviour_logprobs(kept)
                yield env.timeout(policy.train_us * 1000)
                self.train_step += 1
                if policy.update_every and self.train_step % policy.update_every == 0:
                    if self.updating is not None:  # an injected update is in progress: this one follows it
                        yield self.updating
                    yield from self._update_weights()

    def _tail(self) -> bool:
        """Whether no more groups can arrive: the last partial batch is consumed."""
        ro = self.rollout
        ready = self.ready if self.grouper is None else {g for tg in self.ready for g in sources_of(tg)}
        return ro.all_submitted() and all(g.dropped or g in self._consumed or g in ready for g in ro.groups)

    def _admit(self, batch) -> tuple:
        """``(ConsumedSample entries, groups kept)`` of a batch: groups older than the lag bound are dropped."""
        samples, kept = [], []
        for group in batch:
            self._consumed.update(sources_of(group))
            labels = [s.label for s in group.samples]
            if self.policy.max_version_lag >= 0 and self.version - min(labels) > self.policy.max_version_lag:
                self.emit(SampleDropped(self.env.now, tuple(s.req_id for s in group.samples), "stale",
                                        group.group_id))
                continue
            kept.append(group)
            samples.extend(ConsumedSample(s.req_id, group.group_id, s.label, token_digest_of(s),
                                          self.rewards[s.req_id]) for s in group.samples)
        return samples, kept

    def _behaviour_logprobs(self, groups) -> None:
        """The behaviour logprobs of the consumed samples, stamped with the version that computed them."""
        now, recompute = self.env.now, self.policy.behaviour_logprobs == "recompute"
        for group in groups:
            for s in group.samples:
                if recompute:
                    self.emit(SampleLogprobs(now, s.req_id, "behaviour", "trainer", 0, None, None, self.version))
                    continue
                for span in spans_of(s.stamps):  # the engine's version spans: one record per span
                    self.emit(SampleLogprobs(now, s.req_id, "behaviour", "trainer", span.start, None, None,
                                             span.version))

    def extra_update(self) -> None:
        """Start one more update cycle now (a perturbation), unless one is in progress."""
        if self.updating is None and not self.in_update:
            self.updating = self.env.process(self._extra())

    def _extra(self):
        yield from self._update_weights()
        self.updating = None

    def _update_weights(self):
        """pause -> write -> set version -> resume, as the RL framework drives vLLM. Perturbations
        (``tweaks``) can stop waiting for the drain early, delay or lengthen the write, and set the version
        label before or after the write ends."""
        env, policy, engine, pub = self.env, self.policy, self.engine, self.publisher
        self.updates += 1
        self.in_update = True
        tw = self.tweaks(self.updates) if self.tweaks is not None else None
        t0 = env.now
        new_version = pub.next_version(self.version, self.updates)
        at_apply, label_ns = pub.label_at == "apply", None  # label_ns: when a label moved outside "apply"
        if pub.label_at == "before_pause":
            self._set_label(new_version)
            label_ns = t0
        # The client's Paused carries the call (t0) and its return (end_ns): its place in the stream is the
        # call's, before the engine's own Paused and what the drain records, as in a recording sorted by time.
        put_paused = self.reserve() if self.reserve is not None else self.emit
        if policy.abort_ids != "engine":  # the loop's own abort by id list (abort_ids.py), not vLLM's drain
            yield from pause_by_ids(self)
        else:
            drained = engine.request_pause(policy.pause_mode, policy.clear_cache)
        if policy.wait_for_drain and policy.abort_ids == "engine":
            if tw is not None and tw.early_ns is not None:
                yield env.any_of([drained, env.timeout(tw.early_ns)])
            else:
                yield drained
        state = PAUSED_ALL if policy.pause_mode == "keep" else PAUSED_NEW
        put_paused(Paused(t_ns=t0, side="client", mode=policy.pause_mode, clear_cache=policy.clear_cache, state=state,
                          end_ns=env.now))
        if policy.cancel_off_policy:
            cancel_off_policy(self.rollout, new_version, policy.max_version_lag)
        if policy.reset_prefix_cache:
            yield from self._reset_cache()
        if tw is not None and tw.late_ns:
            yield env.timeout(tw.late_ns)
        t_write = env.now
        content = pub.content_of(self.updates)
        pub.weights.published(t_write, new_version, content)
        if pub.label_at == "publish":
            self._set_label(new_version)
            label_ns = t_write
        write_ns = policy.weight_write_us * 1000
        shift_ns = 0
        if tw is not None:
            write_ns = max(0, write_ns + tw.write_extra_ns)
            shift_ns = max(-write_ns, tw.shift_ns)
        if shift_ns < 0:  # the label moves on while the old weights are still being overwritten
            yield env.timeout(write_ns + shift_ns)
            if at_apply:
                self._set_label(new_version)
            yield env.timeout(-shift_ns)
            engine.weights_version = new_version
        else:
            yield env.timeout(write_ns)
            engine.weights_version = new_version
        t_end = env.now
        pub.weights.installed(t_end, new_version, content)
        self.version = new_version
        yield from pub.side_effects(env)  # the publish, one step before the resume
        if (at_apply and shift_ns > 0) or pub.label_at == "after_resume":  # resumed, the label follows later
            engine.submit("resume")
            self.emit(Resumed(env.now, "client"))
            pub.weights.resumed(env.now, new_version)
            if at_apply:
                yield env.timeout(shift_ns)
                self._set_label(new_version)
            else:  # the publish follows the resume call's return: the core takes it as an input
                yield env.timeout(pub.resume_rtt_ns)
                engine.submit("version", new_version)
                self.rollout.version = new_version
            self.emit(WeightsUpdated(t_ns=t_write, end_ns=t_end, version=new_version, side="client", set_ns=env.now))
            self.in_update = False
            return
        if shift_ns == 0 and at_apply:
            self._set_label(new_version)
        self.emit(WeightsUpdated(t_ns=t_write, end_ns=t_end, version=new_version, side="client",
                                 set_ns=t_end + shift_ns if at_apply else label_ns))
        engine.submit("resume")
        self.emit(Resumed(env.now, "client"))
        pub.weights.resumed(env.now, new_version)
        self.in_update = False

    def _reset_cache(self):
        """The loop's ``reset_prefix_cache`` call and its reaction to a refusal (``on_reset_refused``)."""
        engine, policy = self.engine, self.policy
        ok = yield engine.request_reset(False, policy.reset_connector)
        if ok or policy.on_reset_refused == "ignore":
            return
        if policy.on_reset_refused == "reset_running":
            yield engine.request_reset(True, policy.reset_connector)
            return
        while not ok:
            yield self.env.timeout(RESET_RETRY_US * 1000)
            ok = yield engine.request_reset(False, policy.reset_connector)

    def _set_label(self, version: int) -> None:
        """The engine stamps outputs, and the client labels samples, with ``version`` from now on."""
        self.engine.version = version
        self.rollout.version = version


def token_digest_of(sample) -> str:
    return sample.digest
