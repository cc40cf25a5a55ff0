"""Entry point of the ``tracesim`` command.

Each subcommand lives in ``tracesim/cli/<name>.py`` and defines ``add_parser(subparsers)``, which registers
its arguments and sets ``run=<function(args) -> exit code>``. Heavy imports happen inside ``run`` so that
``tracesim --help`` stays fast. Errors reach the user as one line on stderr, never as a traceback (set
``TRACESIM_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings

from tracesim import __version__
from tracesim.bulkmem import populate_arenas
from tracesim.format.errors import TraceFormatError
from tracesim.gcpause import cyclic_gc_paused
from tracesim.inputs import InputError

# Subcommand modules, in the order `tracesim --help` lists them.
COMMANDS = ["info", "validate", "merge", "record", "replay", "simulate", "explore", "repro", "fit", "check", "plot",
            "export", "parity"]


MAX_ERROR_LINE = 1000  # characters: an error line never echoes a whole hostile value (values: errors.MAX_ECHO)


def _error_line(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LINE else text[: MAX_ERROR_LINE - 3] + "..."


class UsageError(InputError):
    """Bad arguments: exit code 2, one line (as for unusable scenario or policy files)."""


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(_error_line(f"tracesim: warning: {message}"), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    import tracesim

    parser = argparse.ArgumentParser(prog="tracesim", description=tracesim.__doc__.strip(),
                                     epilog="Run `tracesim COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"tracesim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tracesim.cli.{name}").add_parser(sub)
    return parser


_KEPT: list | None = None  # under entry(): what commands hand to keep(), never freed (see entry)


def keep(*objects) -> None:
    """A command's large values (traces of millions of records), left to the operating system to reclaim when
    the ``tracesim`` process ends (``entry``); a no-op where ``main`` is called in a Python process."""
    if _KEPT is not None:
        _KEPT.extend(objects)


def entry() -> None:
    """The ``tracesim`` command (console script and ``python -m tracesim``): ``main``, then exit.

    A bulk command ends with ``os._exit`` once its output is flushed and its files are closed, without
    freeing what it kept (``keep``) one object at a time: freeing a replay's 2.4 M records took 2.4 s, a
    quarter of its run. ``main`` itself returns normally, for callers in a Python process (the tests)."""
    global _KEPT
    _KEPT = []
    code = main(bulk_exit=True)
    sys.exit(code)


def main(argv: list[str] | None = None, *, bulk_exit: bool = False) -> int:
    """Run one command; return its exit code. ``bulk_exit``: a bulk command ends the process itself once its
    output is out (``entry``)."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    # A command reads, builds and writes millions of acyclic records in one short-lived process: the cyclic
    # collector would rescan them again and again and free nothing (writing a 3.9M-record trace: 7.5 s with
    # it, 1.2 s without). Commands that run many simulations in one process (explore) say bulk=False.
    bulk = getattr(args, "bulk", True)
    if bulk and bulk_exit:  # a process that ends with its output: its memory mapped in bulk (tracesim/bulkmem.py)
        populate_arenas()
    try:
        with cyclic_gc_paused() if bulk else contextlib.nullcontext():
            code = int(args.run(args) or 0)
        if bulk and bulk_exit:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except (TraceFormatError, InputError) as exc:
        print(_error_line(f"tracesim: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tracesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug of ours: still one line unless asked for more
        if os.environ.get("TRACESIM_DEBUG"):
            raise
        print(_error_line(f"tracesim: internal error: {type(exc).__name__}: {exc}") +
              " (set TRACESIM_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
