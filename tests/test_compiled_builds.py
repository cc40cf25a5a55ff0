"""tracesim/compiled.py: the one check of whether a compiled build is current (digests of its sources), for the
simulator's hot modules and the columnizer alike. Exercised here on a package laid out in a temporary
directory; tests/test_sim_compiled.py and tests/test_format_columns_compiled.py check what each group does with
the answer, on copies of the real build."""

from __future__ import annotations

import importlib.machinery

import pytest

from tracesim import compiled

EXT = importlib.machinery.EXTENSION_SUFFIXES[0]


@pytest.fixture
def root(tmp_path):
    """A tracesim package with one group (tracesim.fast: modules a and b, built from a.py, b.py and c.pxd)."""
    pkg = tmp_path / "tracesim" / "fast"
    pkg.mkdir(parents=True)
    for name in ("a.py", "b.py", "c.pxd"):
        (pkg / name).write_text(f"# {name}\n")
    for module in ("a", "b"):
        (pkg / f"{module}{EXT}").write_bytes(b"")
    compiled.write_record({"tracesim.fast": (("a", "b"), ("a.py", "b.py", "c.pxd"))}, root=str(tmp_path / "tracesim"))
    return tmp_path / "tracesim"


def _status(root):
    return compiled.status("tracesim.fast", root=str(root))


def test_a_build_from_the_current_sources_is_current(root):
    record = compiled.read_record(str(root))
    assert list(record) == ["tracesim.fast"] and record["tracesim.fast"]["modules"] == ("a", "b")
    assert set(record["tracesim.fast"]["sources"]) == {"a.py", "b.py", "c.pxd"}
    assert _status(root) == compiled.Status(True, "compiled (setup.py) from the current sources", ("a", "b"))


def test_an_edited_source_makes_the_group_stale(root):
    (root / "fast" / "c.pxd").write_text("# edited\n")
    status = _status(root)
    assert not status.compiled and status.stale and status.modules == ("a", "b")
    assert status.reason.startswith("c.pxd changed after the compiled modules were built")


def test_the_same_bytes_again_are_current_whatever_the_file_times(root):
    source = root / "fast" / "a.py"
    source.write_text(source.read_text())  # a checkout or copy: new times, same contents
    assert _status(root).compiled


def test_a_source_not_shipped_counts_as_unchanged(root):
    (root / "fast" / "c.pxd").unlink()  # e.g. a wheel without the .pxd
    assert _status(root).compiled


def test_a_missing_module_is_not_built_and_no_reason_to_warn(root):
    (root / "fast" / f"b{EXT}").unlink()
    status = _status(root)
    assert (status.compiled, status.stale, status.modules) == (False, False, ("a", "b"))
    assert status.reason.startswith("not built: b")


def test_without_a_record(root):
    (root / compiled.RECORD).unlink()
    status = _status(root)
    assert (status.compiled, status.stale, status.modules) == (False, True, ("a", "b"))
    assert "compiled modules without a build record (a, b)" in status.reason
    for module in ("a", "b"):
        (root / "fast" / f"{module}{EXT}").unlink()
    assert _status(root) == compiled.Status(False, "not built (no C compiler at install, or a source tree never "
                                                   "installed)", ())


@pytest.mark.parametrize("text", ["BUILDS = {", "BUILDS = __import__('os').getcwd()", "OTHER = {}", "BUILDS = [1]"])
def test_a_record_that_is_not_literals_is_no_record_and_nothing_in_it_runs(root, text):
    (root / compiled.RECORD).write_text(text)
    assert compiled.read_record(str(root)) is None
    assert _status(root).stale and not _status(root).compiled


def test_a_group_missing_from_the_record_is_not_current(root):
    compiled.write_record({"tracesim.other": ((), ())}, root=str(root))
    assert "without a build record" in _status(root).reason


def test_pure_python_setting(monkeypatch):
    for value, pure in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv(compiled.PURE_PYTHON_ENV, value)
        assert compiled.pure_python() is pure
