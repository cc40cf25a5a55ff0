"""The version publisher: which version number an update cycle publishes, when the label source moves to it,
and what else publishing does. The trainer (``trainer.py``) asks it at each point of its cycle.

One update cycle runs: [before the pause] -> pause -> drain -> [publish: the write starts] -> write ->
[apply: the weights are in] -> [publish side effects] -> resume -> [after resume: the call returned].
The label source (what the engine stamps on outputs and the client labels samples with) moves at one of the
bracketed points (``[loop].label_advance``):

* ``"apply"`` (default, correct): when the new weights are in place, while the engine is paused.
* ``"publish"``: when the trainer starts pushing the weights (a counter bumped as the broadcast begins).
  Right only as long as the pause holds the engine through the write: with ``wait_for_drain = false`` (or an
  early drain in exploration) the batch still in flight is stamped with a version whose weights are not in.
* ``"before_pause"``: before the pause call: what the engine generates while draining (wait) or what its
  batch queue finishes (keep) carries the new label but came from the old weights
  (``tokens_from_labelled_version``).
* ``"after_resume"``: after the resume call returns, one RPC round trip (``add_latency_us`` +
  ``output_latency_us``) after the engine resumed: the first outputs of the new weights carry the old label
  (rllm#622's and sglang#34185's late publish; ``tokens_from_labelled_version``).

``publish_aborts_all`` (radixark/miles#2296, #2589): the version publish (SGLang's ``update_weight_version``,
whose ``abort_all_requests`` defaults to true) aborts every request the engine holds, one step before the
resume, undoing what an in-place (keep) pause kept. The loop handles the aborts as any abort (``on_abort``);
a loop that relies on its pause keeping samples (policy ``pause_keeps_samples``) sees them lost in the pause.

``version_reset_at = N`` (review of radixark/miles#2244: a trainer-cell failover restarts the version counter):
the N-th update cycle publishes version 1 again and counts on from there, so the trainer's version goes back
below the labels of samples already generated: their staleness is negative and a lag filter lets the oldest
groups through (``version_lag_within_bound``, ``policy_versions_increase``).
"""

from __future__ import annotations

from tracesim.sim.weights import WeightSync

LABEL_POINTS = ("before_pause", "publish", "apply", "after_resume")


class Publisher:
    def __init__(self, scenario, engine, emit):
        policy = scenario.loop
        self.engine = engine
        self.label_at = policy.label_advance
        self.aborts_all = policy.publish_aborts_all
        self.reset_at = policy.version_reset_at
        # a call's round trip (the resume's, the publish's): the request reaches the core, its reply the caller
        self.resume_rtt_ns = (scenario.engine.add_latency_us + scenario.engine.output_latency_us) * 1000
        self.weights = WeightSync(policy, emit)

    def next_version(self, current: int, update: int) -> int:
        """The version the ``update``-th cycle (from 1) publishes: one more than ``current``, or 1 again at the
        failover (``version_reset_at``)."""
        return 1 if self.reset_at and update == self.reset_at else current + 1

    @staticmethod
    def content_of(update: int) -> str:
        """The name of the weights the ``update``-th cycle publishes (``weights.py``); 0: the base checkpoint.
        By update, not version: after a counter reset one version names two different sets of weights."""
        return f"update{update}"

    def side_effects(self, env):
        """SimPy sub-process: what publishing the version does besides the label. With ``publish_aborts_all``,
        abort every request the engine holds (it sends their abort frames; the loop handles them by its
        ``on_abort``), and return when the call does, one round trip later (miles awaits the publish before it
        resumes generation), so the aborts fall inside the pause."""
        if not self.aborts_all:
            return
        live = tuple(self.engine.sched.requests)
        if live:
            self.engine.submit("abort", live)
        yield env.timeout(self.resume_rtt_ns)
