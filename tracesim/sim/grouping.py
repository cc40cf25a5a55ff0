"""How the trainer forms training groups from rewarded samples (``[loop] group_by``), and duplicate prompts in
the workload (``[workload] duplicate_prompt_share``).

``group_by = "id"`` (default, ``Trainer.rewarded``): a training group is the client's group, the samples
submitted together under one group id. The other two are real bug classes:

* ``"prompt"``: samples are grouped by their prompt text (a dict keyed by prompt, as loops that regroup
  completions after generation do). Two groups of the same prompt in flight together (a dataset with duplicate
  prompts) merge into one training group of twice the size, consumed under the first one's id.
* ``"position"``: groups are cut from the stream of rewarded samples, ``group_size`` consecutive ones at a
  time (R1-V's reshape by position, forked / interleaved rollouts): as soon as completions interleave, samples of
  different prompts share a group and its advantage baseline.

Either way the ``ConsumedSample`` records name the training group's id, so ``groups_whole_and_consistent``
reports a sample consumed under a group it was not admitted in.
"""

from __future__ import annotations

GROUP_BY = ("id", "prompt", "position")


class TrainGroup:
    """A training group made of samples of one or more client groups. ``sources``: the client groups it
    resolves (every sample of theirs is in it or an earlier training group)."""

    __slots__ = ("group_id", "samples", "sources", "dropped")

    def __init__(self, group_id: str, samples: list, sources: tuple):
        self.group_id, self.samples, self.sources, self.dropped = group_id, samples, sources, False


def sources_of(group) -> tuple:
    """The client groups a ready group stands for: itself, or a TrainGroup's sources."""
    return group.sources if type(group) is TrainGroup else (group,)


def duplicate_prompt(rollout, group) -> None:
    """With probability ``duplicate_prompt_share``, ``group`` gets the prompt of an earlier group (drawn
    uniformly): the same prompt length, digest and token ids, so the engine's prefix cache hits it too."""
    share, rng = rollout.wl.duplicate_prompt_share, rollout.rng
    if not share or not rollout.groups or rng.random() >= share:
        return
    src = rng.choice(rollout.groups)
    group.prompt_len, group.prompt_digest, group.prompt_of = src.prompt_len, src.prompt_digest, src.prompt_of


class Grouper:
    """The trainer's grouping for ``group_by`` "prompt" or "position": ``rewarded(sample, rewards)`` and
    ``dropped(group)`` return the training groups that became ready."""

    def __init__(self, by: str, group_size: int, rollout):
        self.by, self.group_size, self.rollout = by, group_size, rollout
        self.buckets: dict = {}  # "prompt": prompt digest -> client groups collected under it, in order
        self.chunk: list = []  # "position": rewarded samples not yet in a group, in reward order
        self.placed: dict = {}  # "position": client group -> its samples placed in chunks so far

    def rewarded(self, sample, rewards: dict) -> list:
        if self.by == "prompt":
            key = sample.group.prompt_digest
            groups = self.buckets.setdefault(key, [])
            if sample.group not in groups:
                groups.append(sample.group)
            return self._bucket_ready(key, rewards)
        self.chunk.append(sample)
        self.placed[sample.group] = self.placed.get(sample.group, 0) + 1
        if len(self.chunk) >= self.group_size:
            return [self._cut()]
        return self._flush_tail()

    def dropped(self, group, rewards: dict) -> list:
        if self.by == "prompt":
            for key, groups in list(self.buckets.items()):
                if group in groups:
                    return self._bucket_ready(key, rewards)
            return []
        return self._flush_tail()

    def _bucket_ready(self, key, rewards: dict) -> list:
        groups = self.buckets[key]
        if not all(g.dropped or all(s.req_id in rewards for s in g.samples) for g in groups):
            return []
        del self.buckets[key]
        kept = [g for g in groups if not g.dropped]
        if not kept:
            return []
        return [TrainGroup(kept[0].group_id, [s for g in kept for s in g.samples], tuple(groups))]

    def _cut(self) -> TrainGroup:
        chunk, self.chunk = self.chunk[:self.group_size], self.chunk[self.group_size:]
        done = []  # client groups whose every sample is now placed
        for s in chunk:
            g = s.group
            if g not in done and self.placed.get(g, 0) == len(g.samples) and all(x not in self.chunk for x in g.samples):
                done.append(g)
        return TrainGroup(chunk[0].group.group_id, chunk, tuple(done))

    def _flush_tail(self) -> list:
        """The last partial chunk, once no more samples can come (every group submitted, dropped or placed)."""
        ro = self.rollout
        if not self.chunk or not ro.all_submitted():
            return []
        if not all(g.dropped or self.placed.get(g, 0) == len(g.samples) for g in ro.groups):
            return []
        tg = TrainGroup(self.chunk[0].group.group_id, self.chunk, tuple(dict.fromkeys(s.group for s in self.chunk)))
        self.chunk = []
        return [tg]
