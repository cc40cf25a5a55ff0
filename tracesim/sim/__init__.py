"""The simulator: a SimPy model of the vLLM V1 engine core and the RL loop around it (docs/simulator.md)."""

from tracesim.sim import _compiled  # noqa: F401  (first: picks the compiled or the plain build of the hot modules)
from tracesim.sim.run import RunInputs, StuckRunError, simulate
from tracesim.sim.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["RunInputs", "Scenario", "ScenarioError", "StuckRunError", "load_scenario", "simulate"]
