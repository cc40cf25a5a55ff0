"""The simulator: a SimPy model of the vLLM V1 engine core and the RL loop around it (docs/simulator.md)."""

from tracesim.sim.run import RunInputs, StuckRunError, simulate
from tracesim.sim.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["RunInputs", "Scenario", "ScenarioError", "StuckRunError", "load_scenario", "simulate"]
