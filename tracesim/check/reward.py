"""Reward and trainer bindings: a reward is computed on the tokens of the sample it is bound to, and the
trainer trains each sample with its own tokens, reward and version label."""

from __future__ import annotations

from bisect import bisect_right

from tracesim.check.base import NotCheckable, ref, violation

REWARD = "reward_bound_to_own_tokens"
CONSUMED = "consumed_sample_matches_binding"


def _owners(ix) -> dict:
    """digest -> req_ids whose final delivered output has it (to say whose tokens were scored instead), in
    order, as runs ``[req_id, count]`` of one id repeated: ``_whose`` then reads a few runs, never the whole
    list (100k samples sharing a digest would make every message scan 100k ids)."""
    owners: dict = {}
    for c in ix.client_order:
        if c.final is not None and c.final.digest is not None:
            runs = owners.get(c.final.digest)
            if runs is None:
                owners[c.final.digest] = [[c.req_id, 1]]
            elif runs[-1][0] == c.req_id:
                runs[-1][1] += 1
            else:
                runs.append([c.req_id, 1])
    return owners


def _whose(owners: dict, digest: str, req_id: str) -> str:
    others: list = []
    for r, count in owners.get(digest, ()):  # runs alternate ids: at most 7 runs give 3 others
        if r != req_id:
            others += [r] * min(count, 3 - len(others))
            if len(others) == 3:
                break
    return f": those are the tokens of {', '.join(others)}" if others else ""


def _suffix_min(rewards: list) -> list:
    """``[min(t_ns of rewards[i:]) for i]``, nondecreasing: the last reward (stream order) bound at or before
    a time is then found by bisection, whatever order the times come in."""
    mins, low = [0] * len(rewards), None
    for i in range(len(rewards) - 1, -1, -1):
        t = rewards[i].t_ns
        low = t if low is None or t < low else low
        mins[i] = low
    return mins


def reward_bound_to_own_tokens(ix, policy) -> list:
    """Every RewardBound's digest equals the digest of the final delivered output of the request it names,
    delivered before the reward was bound."""
    if not ix.rewards:
        return NotCheckable("missing reward records (no RewardBound)")
    if all(r.digest is None for r in ix.rewards):
        return NotCheckable("missing reward digests (every RewardBound.digest is null)")
    owners = _owners(ix)
    if not owners:
        return NotCheckable("missing output digests (no finished OutputDelivered carries a digest)")
    out = []
    for c in ix.client_order:
        for rw in c.rewards:
            if rw.digest is None:
                continue
            final = c.final
            if final is None or final.t_ns > rw.t_ns:
                what = "never delivered a final output" if final is None else "had not finished its output yet"
                events = [ref(rw)] if final is None else [ref(rw), ref(final)]
                out.append(violation(REWARD, f"a reward was bound to {c.req_id}, which {what}"
                                     f"{_whose(owners, rw.digest, c.req_id)}", c.req_id, events=events))
            elif final.digest is not None and final.digest != rw.digest:
                out.append(violation(
                    REWARD, f"the reward bound to {c.req_id} was computed on tokens with digest {rw.digest}, "
                    f"but {c.req_id} delivered digest {final.digest}{_whose(owners, rw.digest, c.req_id)}",
                    c.req_id, events=[ref(final), ref(rw)]))
    return out


def consumed_sample_matches_binding(ix, policy) -> list:
    """Each ConsumedSample carries its request's delivered digest, the reward bound to that request and the
    version label that reward carried."""
    if not ix.consumes:
        return NotCheckable("missing trainer consumption records (no TrainerConsumed)")
    if not ix.n_deliver and not ix.rewards:
        return NotCheckable("missing deliveries and rewards to compare consumed samples with")
    owners, out = _owners(ix), []
    for c in ix.client_order:
        mins = _suffix_min(c.rewards) if len(c.rewards) > 8 and len(c.consumed) > 1 else None
        for tc, s in c.consumed:
            events = [ref(tc, s.req_id)]
            if s.digest is not None and c.final is not None and c.final.digest not in (None, s.digest):
                out.append(violation(
                    CONSUMED, f"train step {tc.train_step} trained {s.req_id} on tokens with digest {s.digest}, "
                    f"but {s.req_id} delivered digest {c.final.digest}{_whose(owners, s.digest, s.req_id)}",
                    s.req_id, events=[ref(c.final)] + events))
            if mins is None:
                bound = [r for r in c.rewards if r.t_ns <= tc.t_ns]
                if not bound:
                    continue
                rw = bound[-1]
            else:  # the last i with min(t_ns of rewards[i:]) <= tc.t_ns has rewards[i].t_ns <= tc.t_ns
                i = bisect_right(mins, tc.t_ns)
                if not i:
                    continue
                rw = c.rewards[i - 1]
            if s.reward is not None and abs(s.reward - rw.reward) > 1e-9 * max(1.0, abs(rw.reward)):
                out.append(violation(
                    CONSUMED, f"train step {tc.train_step} used reward {s.reward} for {s.req_id}, but the reward "
                    f"bound to {s.req_id} was {rw.reward}", s.req_id, events=[ref(rw)] + events))
            if s.version is not None and rw.version is not None and s.version != rw.version:
                out.append(violation(
                    CONSUMED, f"train step {tc.train_step} labelled {s.req_id} with version {s.version}, but "
                    f"its reward was bound with version {rw.version}", s.req_id, events=[ref(rw)] + events))
    return out
