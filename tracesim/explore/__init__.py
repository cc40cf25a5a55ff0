"""Exploration: find the timings that break a binding, shrink each to a minimal counterexample, reproduce it.

``explore(base, budget=..., seed=...)`` searches runs of a scenario or a recording with perturbations
(``tracesim.sim.perturb``) aimed at the meeting points of its base run, in parallel; each distinct failure is
shrunk to a minimal list of perturbations, confirmed deterministic, and reported with a one-line repro
command (``report.py``). See docs/explore.md.
"""

from tracesim.explore.report import format_result, load_repro, repro_command, result_json, save
from tracesim.explore.runner import Base, Outcome, RunSpec, Signature, run_one
from tracesim.explore.search import ExploreResult, Finding, explore
from tracesim.explore.shrink import shrink

__all__ = ["Base", "ExploreResult", "Finding", "Outcome", "RunSpec", "Signature", "explore", "format_result",
           "load_repro", "repro_command", "result_json", "run_one", "save", "shrink"]
