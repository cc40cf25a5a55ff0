"""``tracesim plot``: every kind writes an image; bad arguments are one line and exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from matplotlib.image import imread

from helpers import simulated
from tracesim.cli.main import main
from tracesim.format import write_trace

BUNDLED = str(Path(__file__).resolve().parents[1] / "traces" / "synthetic-small.msgpack")


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("traces") / "demo.msgpack"
    write_trace(path, simulated())
    return str(path)


@pytest.mark.parametrize("kind,extra,shape", [
    ("timeline", [], (700, 1200)),
    ("batches", ["--window", "20ms:120ms"], (700, 1200)),
    ("compare", ["--other", BUNDLED], (1120, 1200)),
])
def test_plot_writes_an_image_of_the_requested_kind(kind, extra, shape, demo_path, tmp_path, capsys):
    out = tmp_path / f"{kind}.png"
    assert main(["plot", demo_path, "-o", str(out), "--kind", kind, *extra]) == 0
    assert imread(out).shape[:2] == shape
    assert f"wrote {out} ({kind}" in capsys.readouterr().out


def test_plot_zooms_to_a_violation_found_by_the_checkers(demo_path, tmp_path, capsys):
    out = tmp_path / "v.png"
    assert main(["plot", demo_path, "-o", str(out), "--violation", "1", "--size", "8x5", "--dpi", "80"]) == 0
    assert imread(out).shape[:2] == (400, 640)
    marked = re.search(r"(\d+) violation\(s\) marked", capsys.readouterr().out)
    assert marked and int(marked.group(1)) > 0


@pytest.mark.parametrize("args,message", [
    (["--window", "5:3"], "--window"),
    (["--window", "abc"], "--window"),
    (["--kind", "compare"], "--other"),
    (["--other", BUNDLED], "--other"),
    (["--violation", "1"], "--violation 1: the trace has 0 violation(s)"),
    (["--size", "big"], "--size"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert main(["plot", BUNDLED, "-o", str(tmp_path / "x.png"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unknown_image_suffix_is_refused(tmp_path, capsys):
    assert main(["plot", BUNDLED, "-o", str(tmp_path / "x.txt")]) == 2
    assert "suffix" in capsys.readouterr().err


def test_corrupted_trace_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x92\xa6header\xc1garbage")
    assert main(["plot", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "bad.msgpack" in capsys.readouterr().err
