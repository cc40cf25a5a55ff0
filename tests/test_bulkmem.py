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


def test_background_helper_populates_ahead_and_a_forked_child_maps_its_own():
    # The helper thread makes each next chunk; a forked child (no helper thread there) must map its chunks
    # itself instead of waiting on a helper that does not exist in it (it would hang: the timeout catches it).
    out = _python("""
        import os
        from tracesim import _bulkmem
        assert _bulkmem.install(background=True) and _bulkmem.in_background()
        objs = [(i, str(i)) for i in range(1_500_000)]  # ~200 MB: several chunks, each made by the helper
        made = _bulkmem.populated_bytes()
        pid = os.fork()
        if pid == 0:
            more = [(i, str(i)) for i in range(1_500_000)]
            os._exit(0 if sum(len(s) for _, s in more) == sum(len(s) for _, s in objs) else 3)
        _, status = os.waitpid(pid, 0)
        print(made, os.waitstatus_to_exitcode(status), sum(len(s) for _, s in objs))
    """)
    made, child_code, chars = map(int, out.split())
    assert made >= 128 << 20 and child_code == 0 and chars == sum(len(str(i)) for i in range(1_500_000))


def test_bulk_commands_populate_in_the_background_where_a_core_is_spare():
    out = _python("""
        import os
        from tracesim import _bulkmem, bulkmem
        bulkmem.populate_arenas()
        print(len(os.sched_getaffinity(0)), _bulkmem.in_background())
    """)
    cores, background = out.split()
    assert background == str(int(cores) > 1)


def test_the_helpers_chunks_arrive_populated_so_the_command_thread_takes_no_page_fault_for_them():
    # The helper populates each chunk a slice at a time (MADV_POPULATE_WRITE, so that the command's own
    # mremap / mmap calls never wait for a whole chunk; MAP_POPULATE where the kernel lacks it): either way
    # the pages are there before the command writes them.
    out = _python("""
        import resource
        from tracesim import _bulkmem
        assert _bulkmem.install(background=True) and _bulkmem.in_background()
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        objs = [(i, str(i)) for i in range(1_500_000)]  # ~200 MB of arenas
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
        print(_bulkmem.populated_bytes() >> 12, faults, _bulkmem.waited_ns() >= 0, len(objs))
    """)
    pages, faults, waited_known, n = out.split()
    assert int(pages) >= 128 << 8 and waited_known == "True" and int(n) == 1_500_000
    assert int(faults) < int(pages) // 4, (faults, pages)  # each page faulted in by this thread: as many as pages
