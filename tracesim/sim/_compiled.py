"""Which build of the simulator's hot modules runs: compiled (setup.py) or plain Python from their sources.

setup.py compiles the simulator's hot modules (the engine core, the scheduler, the KV pool, the client's
output path, replay's reading of the recording) from their own ``.py`` files with Cython, typed by the
``.pxd`` beside each, and writes ``_built_from.py``: which modules it compiled and a digest of every source
they were compiled from. The ``.py`` files stay the source of truth and run as they are wherever the
compiled build is not used; both give byte-identical simulated traces (tests/test_sim_compiled.py).

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

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = __name__.rpartition(".")[0]  # tracesim.sim


@dataclass(frozen=True)
class Status:
    compiled: bool  # the compiled modules are the ones imported
    reason: str  # why (one line)
    modules: tuple  # the modules concerned (short names)


def source_digests(names) -> dict:
    """file name -> sha256 of its bytes, for the files among ``names`` that exist in this package."""
    out = {}
    for name in names:
        try:
            with open(os.path.join(HERE, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            pass
    return out


def _built_modules() -> list:
    """Short names of the modules that have a compiled extension in this package directory."""
    found = []
    for entry in sorted(os.listdir(HERE)):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            stem = entry[:-len(suffix)]
            if entry.endswith(suffix) and os.path.exists(os.path.join(HERE, stem + ".py")):
                found.append(stem)
    return found


def decide() -> Status:
    built = _built_modules()
    try:
        from tracesim.sim import _built_from  # written by setup.py when it compiles the modules
    except ImportError:
        record = None
    else:
        record = _built_from
    if record is None:
        if built:
            return Status(False, f"compiled modules without a build record ({', '.join(built)}): running the "
                                 "sources; `pip install -e .` rebuilds them", tuple(built))
        return Status(False, "not built (no C compiler at install, or a source tree never installed)", ())
    modules = tuple(record.MODULES)
    if os.environ.get("TRACESIM_PURE_PYTHON") == "1":
        return Status(False, "TRACESIM_PURE_PYTHON=1", modules)
    missing = [m for m in modules if m not in built]
    if missing:
        return Status(False, f"not built: {', '.join(missing)} (the build failed or was removed)", modules)
    changed = [name for name, digest in source_digests(record.SOURCES).items() if record.SOURCES[name] != digest]
    if changed:
        return Status(False, f"{', '.join(changed)} changed after the compiled modules were built: running the "
                             "sources until `pip install -e .` rebuilds them", modules)
    return Status(True, "compiled (setup.py) from the current sources", modules)


class _SourceFinder:
    """Imports the listed modules from their .py files, in front of the compiled modules beside them."""

    def __init__(self, modules):
        self.paths = {f"{PACKAGE}.{m}": os.path.join(HERE, m + ".py") for m in modules}

    def find_spec(self, fullname, path=None, target=None):
        source = self.paths.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


STATUS = decide()
if not STATUS.compiled and STATUS.modules:
    if STATUS.reason != "TRACESIM_PURE_PYTHON=1" and not STATUS.reason.startswith("not built"):
        warnings.warn(f"tracesim.sim: {STATUS.reason}", RuntimeWarning, stacklevel=2)
    sys.meta_path.insert(0, _SourceFinder(STATUS.modules))
