"""Compiled fast paths (optional): built with Cython where a C compiler is present, skipped otherwise.

Everything else is in pyproject.toml. A failed build costs speed, never function:

* ``tracesim.format._fastcols`` (a .pyx) has a pure-Python reference implementation in columns.py;
* ``tracesim.record._fastcapture`` (a .pyx, the recorder's per-step update pass) has its reference in
  tracesim/record/reduce.py;
* ``tracesim._bulkmem`` (a .pyx, Linux only) maps Python's object arenas in bulk for the bulk commands'
  processes (tracesim/bulkmem.py); without it they fault their memory in page by page, as Python does;
* the simulator's hot modules (``SIM_MODULES``) are compiled from their own .py files, typed by the .pxd
  beside each; the .py files run as they are where the build is missing or stale (tracesim/sim/_compiled.py).

``tracesim/_built_from.py`` records what was compiled from which sources (digests), for both: the one check of
whether a compiled build is current is tracesim/compiled.py.
"""

import importlib.util
import os
import sys

from setuptools import Extension, setup

SIM_DIR = os.path.join("tracesim", "sim")
# The simulator's per-step path (each has a .pxd of C types but feed, steptime and simloop, compiled as
# they are).
SIM_MODULES = ("records_hot", "kvcache", "scheduler", "rollout", "engine", "replay", "feed", "timing", "steptime",
               "replay_loop", "recorded_loop", "simloop")
BULKMEM = sys.platform.startswith("linux")  # MAP_POPULATE
SIM_SOURCES = sorted([f"{m}.py" for m in SIM_MODULES] + [f for f in os.listdir(SIM_DIR) if f.endswith(".pxd")])


def write_build_record() -> None:
    """tracesim/_built_from.py: each compiled group, its modules and the sha256 of each source they are built from.
    Written and read by one module, tracesim/compiled.py (loaded by its path: the package is not importable here)."""
    spec = importlib.util.spec_from_file_location("_tracesim_compiled", os.path.join("tracesim", "compiled.py"))
    compiled = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = compiled  # dataclasses look their module up
    spec.loader.exec_module(compiled)
    groups = {"tracesim.sim": (SIM_MODULES, SIM_SOURCES),
              "tracesim.format": (("_fastcols",), ("_fastcols.pyx",)),
              "tracesim.record": (("_fastcapture",), ("_fastcapture.pyx",))}
    if BULKMEM:
        groups["tracesim"] = (("_bulkmem",), ("_bulkmem.pyx",))
    compiled.write_record(groups, root=os.path.abspath("tracesim"))


try:
    from Cython.Build import cythonize
except ImportError:  # building without pyproject's build requirements (e.g. --no-build-isolation)
    ext_modules = []
else:
    ext_modules = cythonize([Extension("tracesim.format._fastcols", ["tracesim/format/_fastcols.pyx"]),
                             Extension("tracesim.record._fastcapture", ["tracesim/record/_fastcapture.pyx"])]
                            + ([Extension("tracesim._bulkmem", ["tracesim/_bulkmem.pyx"])] if BULKMEM else []),
                            language_level=3, quiet=True)
    # Types come from the .pxd files only: Cython's annotation typing would turn e.g. `features: bool` into a
    # C boolean that rejects what Python accepts.
    ext_modules += cythonize([Extension(f"tracesim.sim.{m}", [os.path.join(SIM_DIR, f"{m}.py")]) for m in SIM_MODULES],
                             language_level=3, quiet=True, compiler_directives={"annotation_typing": False},
                             nthreads=os.cpu_count() or 1)
    for ext in ext_modules:
        ext.optional = True  # a failed compile warns and installs without it (cythonize drops the argument)
    write_build_record()

setup(ext_modules=ext_modules, options={"build_ext": {"parallel": os.cpu_count() or 1}})  # C compiles side by side
