"""``import tracesim.plot``: the notebook-facing name of ``tracesim.viz`` (see there)."""

from tracesim.viz import *  # noqa: F401,F403 - a re-export
from tracesim.viz import __all__  # noqa: F401
