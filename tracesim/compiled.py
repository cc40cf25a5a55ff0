"""Whether a compiled fast path is current: one build record, checked by the digests of the sources.

setup.py compiles three groups of modules with Cython: the simulator's hot modules (``tracesim.sim``), the
columnizer (``tracesim.format._fastcols``) and the recorder's update pass (``tracesim.record._fastcapture``). It then writes ``tracesim/_built_from.py`` (``write_record``): for
each group, the package, the modules compiled and the sha256 of every source they were built from. A group's
compiled modules are used only while every one of them is present and no source changed since (``status``);
otherwise the group's Python sources run, all or none. Digests, not file times: they hold for wheel installs,
copies and checkouts, whose times say nothing about which source a module was compiled from. A source that is
not shipped (a wheel without its ``.pyx``) counts as unchanged.

What each group does with the answer is its own: ``tracesim/sim/_compiled.py`` imports the simulator's ``.py``
files in front of their compiled modules; ``tracesim/format/columns.py`` does not import the columnizer, nor
``tracesim/record/reduce.py`` the update pass.

Nothing here imports the rest of tracesim: setup.py loads this file by its path to write the record.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import os
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.abspath(__file__))  # the tracesim package directory
RECORD = "_built_from.py"
PURE_PYTHON_ENV = "TRACESIM_PURE_PYTHON"  # "1": run the sources, compiled or not (no warning)


@dataclass(frozen=True)
class Status:
    compiled: bool  # the group's compiled modules are current: use them
    reason: str  # why (one line)
    modules: tuple  # the group's modules (short names), or the compiled ones found without a record
    stale: bool = False  # compiled modules lie there but are not current (edited source, no record): warn


def pure_python() -> bool:
    """Whether the user asked for the sources to run (``TRACESIM_PURE_PYTHON=1``)."""
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def directory_of(package: str, root: str = ROOT) -> str:
    """The directory of ``package`` (``tracesim.sim``) inside the tracesim package at ``root``."""
    return os.path.join(root, *package.split(".")[1:])


def source_digests(directory: str, names) -> dict:
    """file name -> sha256 of its bytes, for the files among ``names`` that exist in ``directory``."""
    out = {}
    for name in names:
        try:
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            pass
    return out


def compiled_modules(directory: str) -> list:
    """Short names of the compiled extension modules that lie in ``directory``."""
    found = []
    for entry in sorted(os.listdir(directory)):
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if entry.endswith(suffix):
                found.append(entry[:-len(suffix)])
                break
    return found


def write_record(groups: dict, root: str = ROOT) -> None:
    """``tracesim/_built_from.py`` for ``groups``: package -> (modules compiled, the source file names in its
    directory they were compiled from). Called by setup.py after it compiled them."""
    builds = {}
    for package, (modules, sources) in groups.items():
        builds[package] = {"modules": tuple(modules),
                           "sources": source_digests(directory_of(package, root), sorted(sources))}
    lines = ['"""Written by setup.py when it compiles tracesim\'s fast paths (see tracesim/compiled.py)."""', "",
             "BUILDS = {"]
    for package, build in builds.items():
        lines.append(f"    {package!r}: {{")
        lines.append(f"        'modules': {build['modules']!r},")
        lines.append("        'sources': {")
        lines += [f"            {name!r}: {digest!r}," for name, digest in build["sources"].items()]
        lines += ["        },", "    },"]
    lines += ["}", ""]
    with open(os.path.join(root, RECORD), "w") as f:
        f.write("\n".join(lines))


def read_record(root: str = ROOT) -> dict | None:
    """package -> {"modules", "sources"} as setup.py recorded them; None without a record (or an unreadable one)."""
    path = os.path.join(root, RECORD)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    try:  # read as literals, not imported: nothing in it runs
        for node in ast.parse(text, path).body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["BUILDS"]:
                builds = ast.literal_eval(node.value)
                return builds if isinstance(builds, dict) else None
    except (SyntaxError, ValueError):
        pass
    return None


def status(package: str, root: str = ROOT) -> Status:
    """Whether the compiled modules of ``package`` (a group in the record) are current."""
    directory = directory_of(package, root)
    present = compiled_modules(directory)
    build = (read_record(root) or {}).get(package)
    if build is None:
        if present:
            return Status(False, f"compiled modules without a build record ({', '.join(present)}): running the "
                                 "sources; `pip install -e .` rebuilds them", tuple(present), stale=True)
        return Status(False, "not built (no C compiler at install, or a source tree never installed)", ())
    modules = tuple(build["modules"])
    missing = [m for m in modules if m not in present]
    if missing:  # a failed optional build, or a removed module: not an edit, so no warning
        return Status(False, f"not built: {', '.join(missing)} (the build failed or was removed)", modules)
    recorded = build["sources"]
    changed = [name for name, digest in source_digests(directory, recorded).items() if recorded[name] != digest]
    if changed:
        return Status(False, f"{', '.join(changed)} changed after the compiled modules were built: running the "
                             "sources until `pip install -e .` rebuilds them", modules, stale=True)
    return Status(True, "compiled (setup.py) from the current sources", modules)
