"""What the user's RL loop allows: the policy the checkers judge a trace against.

A policy file is TOML with one ``[policy]`` table (or the keys at top level)::

    [policy]
    allow_mixed_versions = false   # a sample may hold tokens of several versions if its spans are kept
    max_version_lag = 0            # trainer_version - oldest version of a sample's tokens, at consumption
    allow_stale_kv = false         # tokens may attend KV computed by other weights (both kinds below)
    allow_stale_running_kv = false # a running request may keep attending its own KV across an update
    allow_stale_prefix_hits = false  # a request may reuse prefix-cache blocks computed by other weights
    pause_keeps_samples = false    # the loop relies on a pause never aborting or dropping a sample
    groups_consumed_together = true  # all members of a group in the same trainer batch
    samples_must_end = true        # the trace covers the whole run: every admitted sample ends in it

Every key is optional; a missing key keeps the default, and the defaults are the strict, correct policy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tracesim.inputs import InputError, read_toml


class PolicyError(InputError):
    """A policy file or mapping is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class Policy:
    # Mixed weight versions within one sample are accepted when the sample keeps per-token version spans
    # (the trainer then knows which tokens came from which weights). False: every token of a sample must come
    # from the version it is labelled with.
    allow_mixed_versions: bool = False
    # Bound on trainer_version - (oldest version that produced a token of the sample) at consumption; None
    # means unbounded (the invariant is then waived).
    max_version_lag: int | None = 0
    # Tokens may attend KV computed under other weights (a loop that keeps KV across updates on purpose).
    allow_stale_kv: bool = False
    # Finer: a running request may keep attending the KV it computed before an update (what in-flight update
    # loops do on purpose: PipelineRL, AReaL), while a request admitted or resumed after the update must not
    # reuse prefix-cache blocks computed by the old weights (a cache reset that did not happen, or was refused).
    allow_stale_running_kv: bool = False
    allow_stale_prefix_hits: bool = False
    # The loop relies on a pause neither aborting nor dropping a sample (wait/keep-mode loops that never resubmit):
    # checked by ``pause_keeps_samples``; false (default) lets an abort-mode pause abort samples it accounts for.
    pause_keeps_samples: bool = False
    # A group's members must all be consumed in one trainer batch (GRPO-style advantages need the whole group).
    groups_consumed_together: bool = True
    # The trace covers the run to its end: a sample still in flight when the trace ends was lost. Set false
    # for a recording cut off mid-run.
    samples_must_end: bool = True

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_version_lag":
                ok = value is None or (type(value) is int and value >= 0)
            else:
                ok = type(value) is bool
            if not ok:
                raise ValueError(f"policy field {f.name}: expected {f.type}, got {value!r}")


def load_policy(path) -> Policy:
    """Read a TOML policy file; raises PolicyError (one line naming the file and key) on bad input."""
    data = read_toml(path, "policy", PolicyError)
    return policy_from_dict(data.get("policy", data) if isinstance(data.get("policy"), dict) else data,
                            source=str(path))


def policy_from_dict(data: dict, source: str = "policy") -> Policy:
    """Build a Policy from a mapping; raises PolicyError naming the unknown key or bad value."""
    known = {f.name for f in fields(Policy)}
    data = dict(data)
    if data.get("max_version_lag") == "none":  # TOML has no null: "none" means unbounded
        data["max_version_lag"] = None
    for key in data:
        if key not in known:
            raise PolicyError(f"{source}: unknown policy key {key!r} (known: {', '.join(sorted(known))})")
    try:
        return Policy(**data)
    except ValueError as exc:
        raise PolicyError(f"{source}: {exc}") from None
