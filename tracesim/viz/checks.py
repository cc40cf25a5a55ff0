"""Violations for the CLI pictures: run the checkers when they are installed, say so when they are not."""

from __future__ import annotations

import sys


def find_violations(trace, policy_path: str | None, enabled: bool = True) -> list:
    """``check_trace(trace, policy).violations``, or [] (with one line on stderr) if the checkers are absent.

    Raises whatever ``load_policy`` raises for a bad policy file (the CLI reports it as a usage error).
    """
    if not enabled:
        return []
    try:
        from tracesim.check import check_trace, load_policy
    except ImportError:
        print("tracesim: note: invariant checkers not available; violations are not marked", file=sys.stderr)
        return []
    policy = load_policy(policy_path) if policy_path else None
    return list(check_trace(trace, policy).violations)
