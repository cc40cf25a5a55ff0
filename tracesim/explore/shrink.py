"""Shrink a failing run to a minimal one, as Hypothesis shrinks its choices: deterministic passes over the
perturbation list, simplest candidates first.

A candidate "still fails" when its run shows the same ``Signature`` (invariant and the kinds of records
involved). Two passes alternate until neither changes anything:

1. **delete**: try the list without each element (front to back); keep the first deletion that still fails.
2. **simplify**: for each element, try its ``simpler()`` variants (simplest first: magnitudes towards their
   neutral value, ranges towards one step, group scope towards one request); keep the first that still fails.

The result is 1-minimal (no single element can be removed) and each element is as simple as its own
candidates allow (none of them fails). Candidates of one pass are evaluated in parallel in chunks, and the
first failing one *in candidate order* wins, so the result is the same for any number of workers. Shrinking a
result again changes nothing (idempotent).

Why not Hypothesis' own shrinker: it shrinks the byte stream behind a strategy inside one process and one
test function; our choices are a list of typed values whose runs go to worker processes or a cluster in
parallel, and the report needs them as values. The tests use Hypothesis to check these properties instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ShrinkResult:
    perturbations: tuple
    runs: int = 0  # candidate runs made
    steps: list = field(default_factory=list)  # text of each accepted change, in order


def shrink(perturbations, still_fails, chunk: int = 1, max_runs: int = 2000, on_run=None) -> ShrinkResult:
    """Shrink ``perturbations``; ``still_fails(list of candidate tuples) -> list[bool]`` runs candidates (in
    parallel, up to ``chunk`` at a time). ``on_run(n)`` is told of every ``n`` runs made (progress)."""
    current = tuple(perturbations)
    result = ShrinkResult(current)
    chunk = max(1, chunk)

    def first_failing(cands):
        for i in range(0, len(cands), chunk):
            if result.runs >= max_runs:
                return None
            part = cands[i:i + chunk]
            oks = still_fails(part)
            result.runs += len(part)
            if on_run is not None:
                on_run(len(part))
            for cand, ok in zip(part, oks):
                if ok:
                    return cand
        return None

    changed = True
    while changed and result.runs < max_runs:
        changed = False
        while current:  # delete pass
            cands = [current[:i] + current[i + 1:] for i in range(len(current))]
            got = first_failing(cands)
            if got is None:
                break
            removed = next(str(p) for i, p in enumerate(current) if current[:i] + current[i + 1:] == got)
            result.steps.append(f"removed {removed}")
            current, changed = got, True
        for i in range(len(current)):  # simplify pass
            while True:
                cands = [current[:i] + (s,) + current[i + 1:] for s in current[i].simpler()]
                got = first_failing(cands)
                if got is None:
                    break
                result.steps.append(f"{current[i]} -> {got[i]}")
                current, changed = got, True
    result.perturbations = current
    return result
