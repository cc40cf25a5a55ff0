"""The bulk commands' arena allocator (tracesim/_bulkmem.pyx via tracesim/bulkmem.py): it serves Python's
object arenas from populated mappings, reuses the arenas given back, and changes no result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, TRACES
from tracesim import bulkmem
from tracesim.cli.main import main

pytestmark = pytest.mark.skipif(not bulkmem._STATUS.compiled, reason=f"not built: {bulkmem._STATUS.reason}")


def _python(code: str, **env) -> str:
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **env}, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_arenas_come_from_populated_mappings_and_freed_ones_are_reused():
    out = _python("""
        from tracesim import _bulkmem, bulkmem
        assert bulkmem.populate_arenas() and not bulkmem.populate_arenas()  # once per process
        objs = [(i, str(i)) for i in range(300_000)]  # ~40 MB of small objects: pymalloc arenas
        first = _bulkmem.populated_bytes()
        del objs  # their arenas are given back ...
        objs = [(i, str(i)) for i in range(300_000)]  # ... and taken again
        print(first, _bulkmem.populated_bytes(), sum(len(s) for _, s in objs))
    """)
    first, after, chars = map(int, out.split())
    assert first >= 32 << 20 and chars == sum(len(str(i)) for i in range(300_000))
    assert after <= first + (32 << 20)  # reused, not mapped again (one new chunk at most: what pymalloc kept)


def test_pure_python_leaves_the_allocator_alone():
    out = _python("""
        from tracesim import _bulkmem, bulkmem
        print(bulkmem.populate_arenas(), _bulkmem.populated_bytes())
    """, TRACESIM_PURE_PYTHON="1")
    assert out.split() == ["False", "0"]


def test_a_bulk_command_with_it_writes_what_one_without_it_writes(tmp_path):
    # `python -m tracesim` (entry: bulk exit, allocator installed) against main() in this process (neither)
    args = ["replay", str(TRACES / "vllm-abort.msgpack"), "--no-progress"]
    with_it = tmp_path / "with.msgpack"
    run = subprocess.run([sys.executable, "-m", "tracesim", *args, "-o", str(with_it)], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    without = tmp_path / "without.msgpack"
    assert main([*args, "-o", str(without)]) == 0
    assert with_it.read_bytes() == without.read_bytes()
