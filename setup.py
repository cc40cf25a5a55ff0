"""Compiled fast paths (optional): built with Cython where a C compiler is present, skipped otherwise.

Everything else is in pyproject.toml. Each extension has a pure-Python reference implementation that is used
when the extension is missing, so a failed build costs speed, never function.
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # building without pyproject's build requirements (e.g. --no-build-isolation)
    ext_modules = []
else:
    ext_modules = cythonize([Extension("tracesim.format._fastcols", ["tracesim/format/_fastcols.pyx"])],
                            language_level=3, quiet=True)
    for ext in ext_modules:
        ext.optional = True  # a failed compile warns and installs without it (cythonize drops the argument)

setup(ext_modules=ext_modules)
