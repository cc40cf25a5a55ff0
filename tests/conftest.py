import sys
from pathlib import Path

# tests import their helpers (strategies.py, helpers.py) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent
TRACES = REPO / "traces"
