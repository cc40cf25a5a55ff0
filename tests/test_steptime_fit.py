"""The step-time fit (``tracesim.sim.steptime.fit``) follows the typical step, not the slow tail.

Real recordings on a shared machine have a few steps stalled to several times their length. The fit is least
absolute deviations (``_nonneg_lad``) so that the tail does not pull every prediction up; these assertions hold
for it and fail for least squares on the same recordings (checked by switching the fit to ``_nonneg_lstsq``:
held-out median error 0.252 / 0.220 / 0.640 and 71-80% of training steps over-predicted, against 0.116 / 0.113 /
0.130 and 49-50% with LAD).
"""

from pathlib import Path

import numpy as np
import pytest

from tracesim.format import read_trace
from tracesim.sim import steptime

TRACES = Path(__file__).resolve().parent.parent / "traces"

# (bundled real recording, held-out median relative error LAD stays under; least squares gives about twice it)
RECORDINGS = [("vllm-keep.msgpack", 0.18), ("vllm-abort.msgpack", 0.17), ("vllm-abort-tokens.msgpack", 0.30)]


def _predicted_ns(st, features) -> float:
    prefill, decode, context = features
    return (st.base_us + st.prefill_us * prefill + st.decode_us * decode + st.context_us_per_1k * context / 1000) * 1e3


@pytest.mark.parametrize("name,max_median_rel_err", RECORDINGS)
def test_the_fit_predicts_held_out_steps_of_a_real_recording_within_its_typical_error(name, max_median_rel_err):
    result = steptime.fit(read_trace(TRACES / name))
    assert result.test_steps >= 25
    assert result.median_rel_err < max_median_rel_err


@pytest.mark.parametrize("name", [name for name, _ in RECORDINGS])
def test_the_fit_splits_the_training_steps_evenly_around_it_despite_the_slow_tail(name):
    """A median fit: about half of the steps it was fitted on lie above it. Least squares, pulled up by the
    stalled steps, over-predicts most of them."""
    trace = read_trace(TRACES / name)
    costs = steptime.step_costs(trace)
    steps = sorted(k for k in costs.exec_ns if k in costs.features)
    train = [k for i, k in enumerate(steps) if i % steptime.HOLD_OUT_EVERY != steptime.HOLD_OUT_EVERY - 1]
    measured = np.array([costs.exec_ns[k] for k in train], dtype=float)
    assert np.max(measured) > 3 * np.median(measured)  # the recording has the slow tail this is about
    st = steptime.fit(trace).steptime
    predicted = np.array([_predicted_ns(st, costs.features[k]) for k in train])
    over = float(np.mean(predicted > measured))
    assert 0.4 < over < 0.6
