import sys
from pathlib import Path

# tests import their helpers (strategies.py, helpers.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "traces"


def recorded_traces() -> list:
    """Paths (str) of the bundled traces recorded from real vLLM (header source "vllm"), sorted."""
    from tracesim.format import TraceReader

    paths = []
    for path in sorted(TRACES.glob("*.msgpack")):
        with TraceReader(path) as reader:
            if reader.header.source == "vllm":
                paths.append(str(path))
    return paths
