"""The compiled columnizer (tracesim/format/_fastcols.pyx) gives exactly the pure-Python reference's tables.

Every test reads the same file twice, once per path (``TRACESIM_PURE_PYTHON`` picks the reference), and
compares table order, column names, dtypes and values. Where the compiled path must not have fallen back to
the reference (well-formed input), ``compiled_tables`` feeds the file to it directly, so a fallback fails.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracesim.format import TraceFormatError, Trace, write_trace
from tracesim.format import columns
from tracesim.format.columns import compiled_available, read_columns
from tracesim.format.reader import TraceReader
from tracesim.format.synthetic import synthetic_trace

from helpers import header
from strategies import EVENT_RECORDS, HEADERS

REPO = Path(__file__).resolve().parents[1]
TRACES = sorted((REPO / "traces").glob("*.msgpack"))

needs_compiled = pytest.mark.skipif(not compiled_available(), reason="the compiled columnizer is not built here")


def test_compiled_columnizer_is_built_where_ci_requires_it():
    # .ci/run sets TRACESIM_REQUIRE_COMPILED=1: a build that silently fell back to pure Python fails there.
    if os.environ.get("TRACESIM_REQUIRE_COMPILED") != "1":
        pytest.skip("TRACESIM_REQUIRE_COMPILED is not set")
    assert columns._fastcols is not None, "tracesim.format._fastcols was not built (see setup.py)"
    assert compiled_available()


_WHICH = textwrap.dedent("""
    import warnings
    warnings.simplefilter("always")
    from tracesim.format import columns
    from tracesim.format.synthetic import synthetic_trace
    from tracesim.format import write_trace
    write_trace("t.msgpack", synthetic_trace(waves=1, seed=1))
    print(columns.compiled_available(), len(columns.read_columns("t.msgpack")["sched"]["step"]) > 0)
""")


@pytest.fixture
def build_copy(tmp_path):
    """A copy of the built package (the columnizer and the build record included), importable first."""
    if not compiled_available():
        pytest.skip("the compiled columnizer is not built here")
    shutil.copytree(REPO / "tracesim", tmp_path / "tracesim", ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    return tmp_path


def _which(copy: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WHICH], cwd=copy, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(copy), "TRACESIM_PURE_PYTHON": "0", **env})


def test_a_copy_of_the_build_reads_compiled(build_copy):
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "True"] and "RuntimeWarning" not in run.stderr


def test_a_columnizer_source_edited_after_the_build_is_not_used(build_copy):
    with open(build_copy / "tracesim" / "format" / "_fastcols.pyx", "a") as f:
        f.write("\n# edited after the build\n")
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
    assert "_fastcols.pyx changed after the compiled modules were built" in run.stderr


def test_a_columnizer_without_a_build_record_is_not_used(build_copy):
    (build_copy / "tracesim" / "_built_from.py").unlink()
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"]
    assert "compiled modules without a build record (_fastcols)" in run.stderr


def test_a_missing_columnizer_reads_with_the_reference_without_a_warning(build_copy):
    for built in (build_copy / "tracesim" / "format").glob("_fastcols.*.so"):
        built.unlink()
    run = _which(build_copy)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"] and "RuntimeWarning" not in run.stderr


def test_pure_python_setting_reads_with_the_reference_without_a_warning(build_copy):
    run = _which(build_copy, TRACESIM_PURE_PYTHON="1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True"] and "RuntimeWarning" not in run.stderr


def read_both(path, monkeypatch):
    """(reference, compiled) results of read_columns: Columns, or the TraceFormatError raised."""
    out = []
    for pure in ("1", "0"):
        monkeypatch.setenv("TRACESIM_PURE_PYTHON", pure)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = read_columns(path)
            except TraceFormatError as exc:
                result = exc
        out.append((result, [str(w.message) for w in caught]))
    return out


def compiled_tables(path) -> dict:
    """Tables from the compiled path alone; raises _fastcols.Unusual if it would have fallen back."""
    with TraceReader(path) as reader:
        builder = columns._fastcols.ColumnBuilder(columns._KIND_CODE, columns._PLANS)
        reader.feed(builder)
        return builder.tables()


def assert_same_tables(a: dict, b: dict) -> None:
    assert list(a) == list(b)  # table order: kinds as they first appear, nested tables before their parent
    for kind in a:
        assert list(a[kind]) == list(b[kind]), kind
        for name, col in a[kind].items():
            other = b[kind][name]
            assert (col.dtype, col.shape) == (other.dtype, other.shape), (kind, name)
            if col.dtype == object:
                assert list(col) == list(other), (kind, name)
            else:
                np.testing.assert_array_equal(col, other, err_msg=f"{kind}.{name}")


def assert_same(path, monkeypatch) -> None:
    (ref, ref_warn), (fast, fast_warn) = read_both(path, monkeypatch)
    assert ref_warn == fast_warn
    if isinstance(ref, TraceFormatError):
        assert isinstance(fast, TraceFormatError), f"reference raised {ref}, compiled path did not"
        assert (str(fast), fast.offset, fast.field) == (str(ref), ref.offset, ref.field)
    else:
        assert not isinstance(fast, TraceFormatError), fast
        assert fast.header == ref.header
        assert_same_tables(ref.tables, fast.tables)


@needs_compiled
@pytest.mark.parametrize("path", TRACES, ids=[p.name for p in TRACES])
def test_bundled_traces_give_the_reference_tables_without_falling_back(path, monkeypatch):
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")
    assert_same_tables(read_columns(path).tables, compiled_tables(path))
    assert_same(path, monkeypatch)


@needs_compiled
def test_a_long_trace_spans_several_buffer_chunks(tmp_path, monkeypatch):
    # > 4096 rows of the nested tables: the chunked buffers are stitched back into whole columns.
    path = tmp_path / "t.msgpack"
    write_trace(path, synthetic_trace(waves=30, groups_per_wave=8, seed=3))
    tables = compiled_tables(path)
    assert len(tables["sched.reqs"]["row"]) > 3 * 4096
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")
    assert_same_tables(read_columns(path).tables, tables)


@needs_compiled
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hdr=HEADERS, records=st.lists(EVENT_RECORDS, max_size=30),
       procs=st.lists(st.integers(min_value=0, max_value=3), max_size=30))
def test_any_records_give_the_reference_tables(tmp_path_factory, monkeypatch, hdr, records, procs):
    hdr = hdr._replace(processes=tuple(header().processes) * 4)
    procs = (procs + [0] * len(records))[:len(records)]
    path = tmp_path_factory.mktemp("any") / "t.msgpack"
    write_trace(path, Trace(hdr, records, procs))
    assert_same(path, monkeypatch)


def write_frames(path, *frames) -> bytes:
    two_procs = header()._replace(processes=header().processes * 2)
    data = msgpack.packb(("header", tuple(two_procs))) + b"".join(msgpack.packb(f) for f in frames)
    path.write_bytes(data)
    return data


@needs_compiled
def test_evolution_rules_are_taken_on_the_fast_path(tmp_path, monkeypatch):
    path = tmp_path / "t.msgpack"
    write_frames(
        path,
        ("sched", (1, 2, 0, (("r0", 3, 0, False, 0, 0, 0, 0, "newer"),), (), (), 0, 0, 1, 0, 0.5, "newer")),
        ("sched", (3, 4, 1)),  # trailing fields missing: their defaults
        ("upd", (5, 6, 0, (("r0", 1),)), 1),  # proc 1
        ("newer-kind", (1, 2, 3)),  # a kind from a newer minor version: skipped, still counted in `index`
        ("deliver", (7, "r0", 0, 1, True, "stop", None, "d")),
    )
    tables = compiled_tables(path)
    assert tables["sched"]["step"].tolist() == [0, 1] and tables["sched"]["reqs"].tolist() == [1, 0]
    assert tables["sched"]["kv_usage"].tolist() == [0.5, 0.0]
    assert tables["upd"]["proc"].tolist() == [1] and tables["deliver"]["index"].tolist() == [4]
    assert tables["deliver"]["spans"].tolist() == [0] and len(tables["deliver.spans"]["row"]) == 0
    monkeypatch.setenv("TRACESIM_PURE_PYTHON", "1")
    assert_same_tables(read_columns(path).tables, tables)


@pytest.mark.parametrize("frame", [
    ("sched", (1, 2, True)),  # a bool in an int column: numpy's reference inference accepts it
    ("sched", (1, 2, 2**63)),  # beyond int64
    ("sched", (1, 2, "x")),  # wrong type
    ("sched", (1, 2)),  # a required field missing
    ("sched", (1, 2, 0, (("r0", 1.5, 0),))),  # wrong type in a nested entry
    ("sched", (1, 2, 0, ("r0",))),  # an entry that is not an array
    ("sched", (1, 2, 0, (5,))),  # an entry that is an int (has no length)
    ("sched", (1, 2, 0, (("r0", (1, 2), 0),))),  # an array where an entry's int belongs
    ("sched", ((1, 2), 2, 0)),  # an array where a record's int belongs
    ("upd", (1, 2, 0, (), "v")),  # optional int given a string
    ("deliver", (7, "r0", 0, 1, 1)),  # an int where a bool belongs
    ("deliver", (7, "r0", 0, 1, False, None, 5)),  # entries field given an int
    ("sched", (1, 2, 0), "p"),  # a proc that is not an int
    ("sched", (1, 2, 0), 2**64 - 1),  # a proc beyond int64
    ("sched", (1, 2, 0), 2),  # a proc the header does not list
    ("header", tuple(header())),  # a second header
    (5, (1, 2)),  # a kind that is not a string
    ({"k": 1}, (1, 2)),  # a kind that cannot even be looked up (unhashable)
    ("sched", [1, 2, 0], 0, 0),  # a frame of 4
    "not a frame",
])
def test_unusual_frames_fall_back_to_the_reference_result(tmp_path, monkeypatch, frame):
    path = tmp_path / "t.msgpack"
    write_frames(path, ("sched", (0, 1, 0)), frame, ("sched", (3, 4, 1)))
    assert_same(path, monkeypatch)


def test_random_byte_damage_gives_one_clear_error_or_the_reference_tables(tmp_path, monkeypatch):
    # A seeded sample of what a 15,000-case run of the same loop found nothing wrong with (after it had
    # found four ways the reference columnizer raised a bare ValueError or TypeError on damaged input).
    good = tmp_path / "good.msgpack"
    write_trace(good, synthetic_trace(waves=1, groups_per_wave=2, group_size=2, max_tokens=6))
    data = good.read_bytes()
    rng = random.Random(0)
    path = tmp_path / "t.msgpack"
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(150, len(damaged))] = rng.randrange(256)
        if rng.random() < 0.3:
            damaged = damaged[:rng.randrange(150, len(damaged))]
        path.write_bytes(bytes(damaged))
        assert_same(path, monkeypatch)  # anything but a TraceFormatError propagates and fails


def test_truncated_and_corrupted_files_give_the_reference_records_errors_and_warnings(tmp_path, monkeypatch):
    good = tmp_path / "good.msgpack"
    write_trace(good, synthetic_trace(waves=1, groups_per_wave=1, group_size=2, max_tokens=4))
    data = good.read_bytes()
    path = tmp_path / "t.msgpack"
    for cut in range(len(data) - 1, len(data) - 400, -7):  # truncated inside the last records
        path.write_bytes(data[:cut])
        assert_same(path, monkeypatch)
    for at in range(200, len(data), 97):  # a corrupted byte anywhere
        path.write_bytes(data[:at] + b"\xc1" + data[at + 1:])
        assert_same(path, monkeypatch)
