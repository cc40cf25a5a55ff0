"""Which build of the simulator's hot modules runs: compiled (setup.py) or plain Python from their sources.

setup.py compiles the simulator's hot modules (the engine core, the scheduler, the KV pool, the client's
output path, replay's reading of the recording) from their own ``.py`` files with Cython, typed by the
``.pxd`` beside each, and records which modules it compiled from which sources (``tracesim/compiled.py``, the
one check of whether a compiled build is current, shared with the columnizer). The ``.py`` files stay the
source of truth and run as they are wherever the compiled build is not used; both give byte-identical
simulated traces (tests/test_sim_compiled.py).

Python imports a compiled module in preference to its ``.py``, so this module decides first (it runs on
``import tracesim.sim``, before any of them is imported):

* the compiled modules run when every one of them is present and no source changed since the build;
* otherwise every one of them runs from its ``.py``: all or none, as the compiled modules share C-level
  types. That is the case where nothing was built (no C compiler at install; a source tree never
  installed), where ``TRACESIM_PURE_PYTHON=1`` is set, and, with a RuntimeWarning, where a source was edited
  or pulled after the build (``pip install -e .`` rebuilds) or compiled modules lie there without a record.

``STATUS`` says which, and why.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

from tracesim import compiled
from tracesim.compiled import Status

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = __name__.rpartition(".")[0]  # tracesim.sim


def decide() -> Status:
    found = compiled.status(PACKAGE)
    if compiled.pure_python():
        return Status(False, f"{compiled.PURE_PYTHON_ENV}=1", found.modules)
    return found


class _SourceFinder:
    """Imports the listed modules from their .py files, in front of the compiled modules beside them."""

    def __init__(self, modules):
        self.paths = {f"{PACKAGE}.{m}": os.path.join(HERE, m + ".py") for m in modules
                      if os.path.exists(os.path.join(HERE, m + ".py"))}

    def find_spec(self, fullname, path=None, target=None):
        source = self.paths.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


STATUS = decide()
if not STATUS.compiled and STATUS.modules:
    if STATUS.stale:
        warnings.warn(f"tracesim.sim: {STATUS.reason}", RuntimeWarning, stacklevel=2)
    sys.meta_path.insert(0, _SourceFinder(STATUS.modules))
