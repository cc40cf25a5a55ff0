"""Behaviour-logprob parity: recompute a trace's recorded logprobs from the checkpoint and say why they differ.

``parity(trace, model_dir, ...) -> ParityResult``: collects every sample with settings, prompt and logprobs
(``samples.py``), recomputes its tokens' logprobs with transformers and torch under vLLM's sampler semantics
(``recompute.py``, ``processing.py``) and diagnoses each difference as a named finding (``diagnose.py``). The
findings are ``tracesim.check.Violation``s; the CLI (``tracesim parity``) prints them like ``tracesim check``.
See docs/parity.md. torch and transformers are imported only when a recompute runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracesim.inputs import InputError
from tracesim.parity.diagnose import NAMES, SeriesStats, diagnose
from tracesim.parity.samples import collect_samples

DEFAULT_TOLERANCE = {"float32": 1e-2, "bfloat16": 5e-2}  # nats of mean |Δlogprob| per token


@dataclass
class ParityResult:
    stats: list  # [SeriesStats], one per recorded series
    violations: list  # [Violation]
    tolerance: float
    head_dtype: str
    alt_dtype: str
    samples: int = 0
    overall: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"tolerance": self.tolerance, "lm_head_dtype": self.head_dtype, "samples": self.samples,
                "overall": self.overall, "series": [vars(s) for s in self.stats],
                "violations": [v.to_json() for v in self.violations]}


def _overall(stats) -> dict:
    out = {}
    for role in sorted({s.role for s in stats}):
        rows = [s for s in stats if s.role == role and s.tokens]
        n = sum(s.tokens for s in rows)
        if not n:
            continue
        out[role] = {"series": len(rows), "tokens": n,
                     "mean_abs": sum(s.mean_abs * s.tokens for s in rows) / n,
                     "max_abs": max(s.max_abs for s in rows),
                     "mean_ratio_err": sum(s.mean_ratio_err * s.tokens for s in rows) / n,
                     "kl_seq_mean": sum(s.kl_seq for s in rows) / len(rows),
                     "beyond": sum(s.beyond * s.tokens for s in rows) / n}
    return out


def parity(trace, model_dir: str, *, dtype: str = "float32", lm_head_fp32: bool = False,
           tolerance: float | None = None, model_version: int | None = None, progress: bool = True) -> ParityResult:
    """Recompute and diagnose every recorded logprob series of ``trace`` against the checkpoint ``model_dir``.

    Raises InputError when the trace holds nothing to compare (no ``SampleSettings`` with a prompt and logprobs:
    record with ``record_tokens`` / ``RolloutRecorder(record_logprobs=True)``) or the model cannot be loaded."""
    from tracesim.parity.recompute import load_model, recompute

    samples = collect_samples(trace)
    where = getattr(trace, "path", None) or "trace"
    if not samples:
        raise InputError(f"{where}: no sample to compare: parity needs SampleSettings records with prompt_ids and "
                         "logprobs (SampleLogprobs or StepUpdated outs with logprobs); record with record_tokens")
    tolerance = DEFAULT_TOLERANCE[dtype] if tolerance is None and dtype in DEFAULT_TOLERANCE else tolerance
    model = load_model(model_dir, dtype, lm_head_fp32)
    too_big = [s.req_id for s in samples if any(t >= model.vocab or t < 0 for t in s.prompt_ids + s.output_ids)]
    if too_big:
        raise InputError(f"{where}: sample {too_big[0]}: token ids outside the model's vocabulary ({model.vocab}): "
                         f"is {model_dir} the model that produced this trace?")
    recomputed = recompute(model, samples, progress)
    stats, found = diagnose(samples, recomputed, tolerance, model_version, model.head_dtype, model.alt_dtype)
    order = {name: i for i, name in enumerate(NAMES)}
    found.sort(key=lambda v: order[v.invariant])
    return ParityResult(stats, found, tolerance, model.head_dtype, model.alt_dtype, len(samples), _overall(stats))


__all__ = ["DEFAULT_TOLERANCE", "NAMES", "ParityResult", "SeriesStats", "parity"]
