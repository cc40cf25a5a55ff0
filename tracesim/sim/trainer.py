"""Reward workers and the trainer: the consuming half of the RL loop.

Finished samples queue for a pool of reward workers whose latencies differ, so results come back out of
order. ``reward_match="id"`` binds each result to the sample it was computed on; ``"arrival"`` binds the
k-th result to the k-th sample handed out (a real-world bug this model must be able to show). The trainer
consumes whole groups in batches and, every ``update_every`` training steps, runs a weight-update cycle:
pause (mode, clear_cache) -> write weights -> set version -> resume.
"""

from __future__ import annotations

import random
from collections import deque

from tracesim.format.records import (
    ConsumedSample, Paused, RewardBound, Resumed, SampleDropped, TrainerConsumed, WeightsUpdated,
)


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
            yield env.timeout(self.rng.randint(*self.policy.reward_us) * 1000)
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
    def __init__(self, env, scenario, engine, rollout, emit, done):
        self.env, self.policy, self.engine, self.rollout, self.emit = env, scenario.loop, engine, rollout, emit
        self.done = done
        self.rewards: dict = {}  # req_id -> reward
        self.ready: deque = deque()  # groups whose every sample has a reward
        self.train_step = 0
        self.version = 0
        self._wake = env.event()

    def rewarded(self, sample, reward: float) -> None:
        if sample.group.dropped:
            return
        self.rewards[sample.req_id] = reward
        group = sample.group
        if all(s.req_id in self.rewards for s in group.samples):
            self.ready.append(group)
            self._poke()

    def group_dropped(self, group) -> None:
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
        while True:
            if len(self.ready) < policy.batch_groups and not (self.ready and self._tail()):
                if self._all_resolved():
                    self.done.succeed(env.now)
                    return
                self._wake = env.event()
                yield self._wake
                continue
            batch = [self.ready.popleft() for _ in range(min(policy.batch_groups, len(self.ready)))]
            samples = self._admit(batch)
            if samples:
                self.emit(TrainerConsumed(env.now, self.train_step, tuple(samples), self.version))
                yield env.timeout(policy.train_us * 1000)
                self.train_step += 1
                if policy.update_every and self.train_step % policy.update_every == 0:
                    yield from self._update_weights()

    def _tail(self) -> bool:
        """Whether no more groups can arrive: the last partial batch is consumed."""
        ro = self.rollout
        return ro.all_submitted() and all(g.dropped or g in self._consumed or g in self.ready for g in ro.groups)

    def _admit(self, batch) -> list:
        samples = []
        for group in batch:
            self._consumed.add(group)
            labels = [s.label for s in group.samples]
            if self.policy.max_version_lag >= 0 and self.version - min(labels) > self.policy.max_version_lag:
                self.emit(SampleDropped(self.env.now, tuple(s.req_id for s in group.samples), "stale",
                                        group.group_id))
                continue
            samples.extend(ConsumedSample(s.req_id, group.group_id, s.label, token_digest_of(s),
                                          self.rewards[s.req_id]) for s in group.samples)
        return samples

    def _update_weights(self):
        """pause -> write -> set version -> resume, as the RL framework drives vLLM."""
        env, policy, engine = self.env, self.policy, self.engine
        t0 = env.now
        drained = engine.request_pause(policy.pause_mode, policy.clear_cache)
        if policy.wait_for_drain:
            yield drained
        state = 2 if policy.pause_mode == "keep" else 1
        self.emit(Paused(t0, "client", policy.pause_mode, policy.clear_cache, state, env.now))
        t_write = env.now
        yield env.timeout(policy.weight_write_us * 1000)
        new_version = self.version + 1
        engine.weights_version = new_version
        engine.version = new_version
        self.version = new_version
        self.rollout.version = new_version
        self.emit(WeightsUpdated(t_write, env.now, new_version, "client", env.now))
        engine.submit("resume")
        self.emit(Resumed(env.now, "client"))


def token_digest_of(sample) -> str:
    return sample.digest
