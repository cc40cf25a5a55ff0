"""Regenerate the record tables of docs/trace-format.md from tracesim/format/records.py.

    python scripts/gen_format_tables.py

The tables sit between the BEGIN/END markers; the prose around them is written by hand. Field comments in
records.py are the single source of each field's meaning. tests/test_format_docs.py fails when they drift.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from tracesim.format import records as R
from tracesim.format.engine_settings import SETTINGS

DOC = Path(__file__).resolve().parent.parent / "docs" / "trace-format.md"
BEGIN, END = "<!-- BEGIN generated record tables -->", "<!-- END generated record tables -->"
# Meaning of fields that recur across records, used where a field carries no comment of its own.
COMMON = {
    "t_ns": "when it happened (monotonic ns of the writing process)",
    "end_ns": "when it ended (monotonic ns)",
    "step": "engine step index (schedule() calls counted from 0)",
    "req_id": "engine request id; one request is one sample",
    "req_ids": "request ids concerned",
    "side": '"engine" (observed inside the engine core) or "client" (observed by the RL loop)',
    "reason": "free-text reason",
    "pause_state": "engine pause state: 0 unpaused, 1 paused for new requests, 2 paused for all (vLLM PauseState)",
    "clear_cache": "the pause clears the prefix/KV cache",
    "num_tokens": "tokens in this frame",
    "finished": "this is the request's final frame",
    "reward": "the reward value",
    "worker": "index of the reward worker",
    "train_step": "trainer step index",
    "count": "records lost",
    "version": "policy (weight) version",
    "start": "first output position, inclusive",
    "end": "last output position, exclusive",
}
_FIELD = re.compile(r"\s+(\w+): ([^=#]+?)(?: = ([^#]+?))?\s*(?:#\s*(.*))?$")


def table(cls) -> str:
    found = {}
    for line in inspect.getsource(cls).splitlines():
        m = _FIELD.match(line)
        if m and m.group(1) in cls._fields:
            found[m.group(1)] = (m.group(2).strip(), (m.group(3) or "").strip(), (m.group(4) or "").strip())
    rows = ["| # | field | type | default | meaning |", "|---|---|---|---|---|"]
    for i, name in enumerate(cls._fields):
        kind, default, meaning = found[name]
        meaning = meaning or COMMON.get(name, "")
        default = f"`{default}`" if default else "required"
        kind, meaning = kind.replace("|", r"\|"), meaning.replace("|", r"\|")  # pipes would end the cell
        rows.append(f"| {i} | `{name}` | `{kind}` | {default} | {meaning} |")
    return "\n".join(rows)


def section(cls, title: str) -> str:
    doc = (cls.__doc__ or "").strip()
    doc = "" if doc.startswith(f"{cls.__name__}(") else doc + "\n\n"  # NamedTuple's generated docstring
    return f"### {title}\n\n{doc}{table(cls)}\n"


def engine_settings() -> str:
    """The known keys of Header.engine_config, from their declarations in format/engine_settings.py."""
    rows = ["| key | type | meaning | older name |", "|---|---|---|---|"]
    for key, s in SETTINGS.items():
        kind = " \\| ".join([t.__name__ for t in s.types] + ["None"])
        old = ", ".join(f"`{name}`" for name in s.old_names)
        rows.append(f"| `{key}` | `{kind}` | {s.meaning.replace('|', chr(92) + '|')} | {old} |")
    return ("### Engine settings — `Header.engine_config`\n\n"
            "A map on disk; read as an `EngineSettings` (an immutable mapping with a named attribute per key, "
            "`format/engine_settings.py`). Every source writes these names; older names are read as the current "
            "one. Any key may be absent or null (the source did not say); keys a reader does not know are kept "
            "and written back.\n\n" + "\n".join(rows) + "\n")


def generate() -> str:
    parts = ["## Header\n", section(R.Header, "Header — kind `header`"), section(R.ProcessInfo, "ProcessInfo"),
             engine_settings()]
    parts.append("## Event records\n")
    parts += [section(cls, f"{cls.__name__} — kind `{cls.KIND}`") for cls in R.EVENT_TYPES]
    parts.append("## Nested entries\n")
    parts += [section(cls, cls.__name__) for cls in (R.SchedReq, R.OutReq, R.VersionSpan, R.ConsumedSample)]
    return "\n".join(parts)


def main() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{generate()}\n{END}{tail}")
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
