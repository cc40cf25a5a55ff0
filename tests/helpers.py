"""Small builders shared by the format tests."""

from __future__ import annotations

from tracesim import __version__
from tracesim.format import FORMAT_MAJOR, FORMAT_MINOR, Header, ProcessInfo


def header(source: str = "synthetic", *, host: str = "h", pid: int = 1, role: str = "test",
           mono_anchor_ns: int = 0, wall_anchor_ns: int = 0, **kw) -> Header:
    proc = ProcessInfo(role, host, pid, 0, mono_anchor_ns, wall_anchor_ns)
    return Header(FORMAT_MAJOR, FORMAT_MINOR, __version__, source, (proc,), **kw)
