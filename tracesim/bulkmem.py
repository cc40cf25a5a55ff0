"""Memory for the bulk commands' short processes: Python's object arenas mapped in bulk, pages populated.

A bulk command (``tracesim replay``, ``check``, ``simulate``, ...) builds millions of records in a process that
ends when its output is out. Faulting their memory in one 4 KiB page at a time cost ~17% of a ``tracesim
replay`` of a 118k-step trace (2.4 s of 14 s, system time); ``tracesim._bulkmem`` (compiled, Linux) maps it
in larger populated pieces and keeps what is freed for reuse (see its docstring). Where the process may run on
more than one core, a helper thread populates the next piece ahead, off the command's own core. Where it is not built, or
its build is stale, or ``TRACESIM_PURE_PYTHON=1``, nothing changes. Records, traces and results are the same
either way: only where Python's allocator gets its memory from changes.
"""

from __future__ import annotations

import os

from tracesim import compiled as _build

_STATUS = _build.status(__name__.rpartition(".")[0])


def populate_arenas() -> bool:
    """Install the bulk arena allocator for the rest of this process (``entry``'s bulk commands only: the
    memory a process frees is not returned to the system before it exits). True if installed now."""
    if not _STATUS.compiled or _build.pure_python():
        return False
    try:
        from tracesim import _bulkmem
    except ImportError:  # built for another interpreter
        return False
    return _bulkmem.install(background=_cores() > 1)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
