"""Off-policy cancellation at the update (``[loop] cancel_off_policy``): prime-rl's orchestrator cancels a
group whose rollouts would exceed ``max_off_policy_steps`` once the new version is out (``drop_group``,
PrimeIntellect-ai/prime-rl#2960), and does so while the server is paused for ``/update_weights`` (keep
mode, #2841).

The model: right after the update's pause has been taken, every live group whose oldest live sample started
under a version more than ``max_version_lag`` behind the version being published is aborted whole by the
client (``Rollout.cancel``); the aborts reach the engine inside the pause, and the loop handles the abort
frames as any abort (``on_abort``, prime-rl: drop the group). A sample's start version is its label while it
runs (the version it was submitted under; a label set at finish is not set yet). With P/D KV transfers in
flight (``[engine] pd_transfer_us``) this is the window of prime-rl#2841: an abort of a request whose prompt
KV is still arriving (``fault_pd_free_in_transfer``)."""

from __future__ import annotations


def cancel_off_policy(rollout, new_version: int, max_lag: int) -> list:
    """Abort every live group too old for ``new_version``; return the group ids cancelled, in order."""
    cancelled, seen = [], set()
    for req_id, sample in list(rollout.samples.items()):
        group = sample.group
        if group is None or group.dropped or id(group) in seen:
            continue
        seen.add(id(group))
        live = [s for s in group.samples if not s.finished and s.req_id in rollout.samples]
        if live and new_version - min(s.label for s in live) > max_lag:
            rollout.cancel(live[0].req_id, whole_group=True)
            cancelled.append(group.group_id)
    return cancelled
