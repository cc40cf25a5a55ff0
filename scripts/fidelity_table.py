"""Print the fidelity table of docs/simulator.md for the given recordings: exact and fitted replay of each.

    python scripts/fidelity_table.py traces/vllm-*.msgpack [more recordings ...]

Columns: steps recorded / simulated, identical batches from the start, finishing order, per-step and
per-request relative error (median / p99), and the whole-run figures a what-if user reads (relative error of
output throughput, time to drain, latency p50 / p90 / p99). Fitted replay fits the step-time model on the
same recording (every 5th step held out of the fit).
"""

from __future__ import annotations

import os
import sys

from tracesim.format import read_trace
from tracesim.sim.fidelity import compare
from tracesim.sim.replay import replay
from tracesim.sim.steptime import fit


def row(name: str, timing: str, f) -> str:
    order = "identical" if f.finish_order_identical else "differs"
    whole = " / ".join(f"{getattr(f, k)[2]:.2f}" for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms"))
    return (f"| {name} | {timing} | {f.steps_recorded} / {f.steps_simulated} | {f.batches_identical} | {order} | "
            f"{f.step_err_median:.2f} / {f.step_err_p99:.2f} | {f.request_err_median:.2f} / {f.request_err_p99:.2f} | "
            f"{f.throughput_tok_s[2]:.3f} | {f.drain_ms[2]:.3f} | {whole} |")


def main(paths) -> int:
    print("| trace | timing | steps rec/sim | identical batches | finishing order | per-step err median / p99 | "
          "per-request err median / p99 | throughput err | drain err | latency p50 / p90 / p99 err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        trace = read_trace(path)
        name = os.path.basename(path).removesuffix(".msgpack")
        print(row(name, "exact", compare(trace, replay(trace))), flush=True)
        print(row(name, "fitted", compare(trace, replay(trace, timing="fitted", steptime=fit(trace)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
