"""The slices-v1 weight fingerprint, and the served_weights_match_published invariant on hand-made traces.

The real engine (vLLM on the CPU) is in test_fingerprint_vllm.py."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from check_builder import correct_group  # noqa: E402
from conftest import REPO  # noqa: E402
from tracesim.check import check_trace  # noqa: E402
from tracesim.check.fingerprint import SERVED  # noqa: E402
from tracesim.format import WeightsFingerprint  # noqa: E402
from tracesim.record.fingerprint import METHOD, SLICE_LEN, SLICES, fingerprint  # noqa: E402


def _weights(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(300, 70, generator=g), "a.bias": torch.randn(70, generator=g),
            "b.weight": torch.randn(8, 8, generator=g)}


def _slice_starts(n: int) -> list:
    return [k * (n - SLICE_LEN) // (SLICES - 1) for k in range(SLICES)]


def test_every_sampled_element_counts_and_unsampled_ones_do_not():
    w = _weights()
    base = fingerprint(w)
    n = w["a.weight"].numel()
    for start in _slice_starts(n):
        for pos in (start, start + SLICE_LEN - 1):
            changed = {k: v.clone() for k, v in w.items()}
            changed["a.weight"].view(-1)[pos] += 1e-3
            assert fingerprint(changed) != base, pos
    # the documented blind spot: an element between two slices
    gap = _slice_starts(n)[0] + SLICE_LEN + 1
    assert gap < _slice_starts(n)[1]
    changed = {k: v.clone() for k, v in w.items()}
    changed["a.weight"].view(-1)[gap] += 1.0
    assert fingerprint(changed) == base
    small = {k: v.clone() for k, v in w.items()}  # a tensor of at most SLICES * SLICE_LEN elements: all of it
    small["b.weight"][7, 7] += 1e-3
    assert fingerprint(small) != base


def test_dtype_name_and_shape_count():
    w = _weights()
    base = fingerprint(w)
    assert fingerprint({**w, "b.weight": w["b.weight"].to(torch.bfloat16)}) != base
    assert fingerprint({**w, "b.weight": w["b.weight"].view(torch.int32)}) != base  # same bytes, other dtype
    renamed = dict(w)
    renamed["c.weight"] = renamed.pop("b.weight")
    assert fingerprint(renamed) != base
    assert fingerprint({**w, "b.weight": w["b.weight"].reshape(4, 16)}) != base
    assert fingerprint({k: w[k] for k in w if k != "a.bias"}) != base


def test_input_form_order_and_memory_layout_do_not_count():
    w = _weights()
    base = fingerprint(w)
    assert fingerprint(list(reversed(list(w.items())))) == base
    strided = {**w, "a.weight": w["a.weight"].t().contiguous().t()}  # same values, column-major storage
    assert not strided["a.weight"].is_contiguous()
    assert fingerprint(strided) == base
    module = torch.nn.Linear(4, 3)
    assert fingerprint(module) == fingerprint(dict(module.named_parameters()))
    with pytest.raises(ValueError, match="'x' given twice"):
        fingerprint([("x", torch.zeros(1)), ("x", torch.zeros(1))])


def test_equal_in_another_process():
    code = ("import torch; from tracesim.record.fingerprint import fingerprint; g = torch.Generator().manual_seed(0);"
            "print(fingerprint({'a.weight': torch.randn(300, 70, generator=g), 'a.bias': torch.randn(70, generator=g),"
            "'b.weight': torch.randn(8, 8, generator=g)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == fingerprint(_weights())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_equal_on_the_gpu():
    w = _weights()
    mixed = {k: (v.cuda() if k != "b.weight" else v) for k, v in w.items()}
    assert fingerprint({k: v.cuda() for k, v in w.items()}) == fingerprint(w) == fingerprint(mixed)
    bf = {k: v.to(torch.bfloat16) for k, v in w.items()}
    assert fingerprint({k: v.cuda() for k, v in bf.items()}) == fingerprint(bf)


# --- served_weights_match_published on hand-made traces ------------------------------------------------


def _with_prints(prints) -> object:
    run = correct_group()
    for side, version, fp, rank in prints:
        run.emit(WeightsFingerprint(run.at(), version, fp, side, rank, METHOD))
    return run.trace()


def test_engine_fingerprints_equal_to_the_published_ones_are_clean():
    report = check_trace(_with_prints([("trainer", 1, "aa", 0), ("engine", 1, "aa", 0), ("engine", 1, "aa", 1)]),
                         only=[SERVED])
    assert report.checked == [SERVED] and report.violations == []


def test_a_rank_serving_other_weights_is_named_with_its_version_and_times():
    trace = _with_prints([("trainer", 1, "aa", 0), ("trainer", 2, "bb", 0), ("engine", 2, "bb", 0),
                          ("engine", 2, "aa", 1), ("engine", 2, "cc", 2)])
    (stale, foreign) = check_trace(trace, only=[SERVED]).violations
    assert stale.invariant == SERVED and "rank 1 serves version 2" in stale.message
    assert "weights it published as version 1" in stale.message and "not loaded" in stale.cause
    assert "rank 2 serves version 2" in foreign.message and "never published" in foreign.cause
    assert [e.kind for e in foreign.events] == ["fingerprint", "fingerprint"] and foreign.t_ns == foreign.events[-1].t_ns


def test_one_version_published_as_two_payloads_is_a_violation():
    (v,) = check_trace(_with_prints([("trainer", 1, "aa", 0), ("trainer", 1, "bb", 0)]), only=[SERVED]).violations
    assert "published version 1 as aa" in v.message and "again as bb" in v.message


def test_without_fingerprints_or_comparable_ones_it_is_not_checkable():
    assert "no WeightsFingerprint" in check_trace(correct_group().trace(), only=[SERVED]).not_checkable[SERVED]
    # a method the trainer did not use, and a version it did not publish, cannot be compared
    run = correct_group()
    run.emit(WeightsFingerprint(run.at(), 1, "aa", "trainer", 0, METHOD))
    run.emit(WeightsFingerprint(run.at(), 1, "zz", "engine", 0, "other-v1"))
    run.emit(WeightsFingerprint(run.at(), 0, "zz", "engine", 0, METHOD))
    assert "missing comparable" in check_trace(run.trace(), only=[SERVED]).not_checkable[SERVED]
