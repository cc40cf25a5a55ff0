"""Build a trace header stamped with this tracesim's format and package versions."""

from __future__ import annotations

from tracesim import __version__
from tracesim.format.engine_settings import EngineSettings
from tracesim.format.reader import FORMAT_MAJOR, FORMAT_MINOR
from tracesim.format.records import Header


def make_header(source: str, processes, **fields) -> Header:
    """``source``: "vllm", "sim" or "synthetic"; ``processes``: ProcessInfo per writing process; ``fields``:
    the other Header fields (engine_config: a mapping of engine settings, in any source's key names; seed,
    inputs, created_wall_ns). Raises FieldError for a known engine setting of the wrong type."""
    if "engine_config" in fields:
        fields["engine_config"] = EngineSettings(fields["engine_config"] or {})
    return Header(FORMAT_MAJOR, FORMAT_MINOR, __version__, source, tuple(processes), **fields)
