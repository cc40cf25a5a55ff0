"""Compare each recorded series with the recompute, and say why they differ: findings as check Violations.

A series *matches* a candidate recompute when the mean |Δlogprob| over its tokens is within the tolerance. The
expected meaning of recorded behaviour logprobs is the processed distribution the engine sampled from, in the
precision asked for (``processed``). When that does not match, the first candidate that does names the cause:

* ``raw`` (or ``raw_alt``)  -> PARITY_RAW: the numbers are the raw model's (vLLM ``logprobs_mode`` raw_*), not the
  sampling distribution's; the gap grows as temperature moves from 1 and vanishes at 1 without penalties/top-k/p;
* ``processed_alt``         -> PARITY_PRECISION: they match only with the lm_head in the other precision;
* ``untruncated``           -> PARITY_SUPPORT: they are the full-vocabulary distribution at the sampling
  temperature, while the engine sampled from a truncated support (min-p/top-k/top-p);
* none                      -> PARITY_MISMATCH, naming the closest candidate.

Tokens that the version spans say other weights sampled (``model_version`` given) are set apart first:
mismatches there are PARITY_VERSION, with the token ranges. Independently, a sample whose settings truncate the
support gets PARITY_SUPPORT when the mass outside it exceeds the tolerance in log terms (-log(1 - mass)): the
numbers may be right, but a trainer's full-vocabulary logprobs of the same tokens differ by that much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tracesim.check.base import violation
from tracesim.check.violation import EventRef
from tracesim.parity.processing import truncates
from tracesim.parity.samples import version_at

PARITY_RAW = "parity_logprobs_processed"  # (a)
PARITY_PRECISION = "parity_lm_head_precision"  # (b)
PARITY_VERSION = "parity_tokens_from_model_version"  # (c)
PARITY_SUPPORT = "parity_truncated_support"  # (d)
PARITY_MISMATCH = "parity_logprobs_match_recompute"  # none of the above explains it
NAMES = (PARITY_MISMATCH, PARITY_RAW, PARITY_PRECISION, PARITY_VERSION, PARITY_SUPPORT)

CAUSE_RAW = ("the engine returned raw-model logprobs (logprobs_mode raw_*), not those of the processed sampling "
             "distribution (temperature, penalties, top-k/p)")
CAUSE_PRECISION = "the logprobs were computed with the final projection (lm_head) in another precision"
CAUSE_VERSION = "these tokens were sampled by other weights than the checkpoint recomputed"
CAUSE_SUPPORT = "the engine sampled from a truncated support (min-p/top-k/top-p): mass outside it is excluded"
CAUSE_FULL_VOCAB = "the logprobs are over the full vocabulary while the engine sampled from a truncated support"
CAUSE_UNKNOWN = "no candidate recompute (raw, processed, other lm_head precision, untruncated) matches"


@dataclass
class SeriesStats:
    req_id: str
    role: str
    source: str
    tokens: int
    mean_abs: float  # mean |recorded - processed recompute| (nats)
    max_abs: float
    mean_ratio_err: float  # mean of exp(|Δ|) - 1: the importance-ratio error per token
    kl_seq: float  # sequence KL(processed || recorded), k3 estimator summed over tokens (see docs/parity.md)
    beyond: float  # share of tokens with |Δ| > tolerance
    outside_mass_max: float  # probability outside the engine's support, the most at any token
    temperature: float
    finding: str | None = None  # the invariant of this series' mismatch finding, if any
    candidates: dict = field(default_factory=dict)  # candidate -> mean |Δ|


def _mean_abs(rec, values, idx) -> float:
    d = [abs(rec[i] - values[i]) for i in idx if math.isfinite(values[i])]
    return sum(d) / len(d) if d else (math.inf if idx else 0.0)


def _ranges(positions) -> list:
    out = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return [f"{a}..{b - 1}" if b - a > 1 else str(a) for a, b in out]


def _events(sample, series) -> tuple:
    st = sample.settings
    return (EventRef("sampling", st.t_ns, None, sample.req_id), EventRef(series.kind, series.t_ns, None, series.req_id))


def diagnose(samples, recomputed, tolerance: float, model_version: int | None = None,
             head_dtype: str = "float32", alt_dtype: str = "bfloat16"):
    """``(stats, violations)``: a ``SeriesStats`` per series and the findings, sample by sample."""
    stats, found = [], []
    for sample, rc in zip(samples, recomputed):
        for series in sample.series:
            s, v = _series(sample, series, rc, tolerance, model_version, head_dtype, alt_dtype)
            stats.append(s)
            found.extend(v)
        found.extend(_support(sample, rc, tolerance))
    return stats, found


def _series(sample, series, rc, tol, model_version, head_dtype, alt_dtype):
    n_out = len(rc.processed)
    pos = [series.start_idx + i for i in range(len(series.token_ids))]
    keep = [i for i, p in enumerate(pos) if p < n_out and sample.output_ids[p] == series.token_ids[i]
            and math.isfinite(series.logprobs[i])]
    rec = {pos[i]: float(series.logprobs[i]) for i in keep}
    idx = [pos[i] for i in keep]
    deltas = [rec[p] - rc.processed[p] for p in idx]
    absd = [abs(d) for d in deltas if math.isfinite(d)]
    n = len(absd)
    st = sample.settings
    stats = SeriesStats(
        sample.req_id, series.role, series.source, len(idx), sum(absd) / n if n else 0.0, max(absd, default=0.0),
        sum(math.expm1(min(d, 50.0)) for d in absd) / n if n else 0.0,
        sum(math.expm1(min(d, 50.0)) - d for d in deltas if math.isfinite(d)),
        sum(d > tol for d in absd) / n if n else 0.0, max((rc.outside_mass[p] for p in idx), default=0.0),
        st.temperature)
    found = []
    label = f"sample {sample.req_id}: {series.role} logprobs ({series.source})"
    # (c) first: tokens of other weights are explained by the spans, whatever their numbers
    other = set()
    if model_version is not None:
        if series.version is not None and series.version != model_version:
            other = set(idx)
        else:
            other = {p for p in idx if (v := version_at(sample.spans, p)) is not None and v != model_version}
        bad = sorted(p for p in other if abs(rec[p] - rc.processed[p]) > tol)
        if bad:
            versions = sorted({str(version_at(sample.spans, p) if series.version is None else series.version)
                               for p in bad})
            found.append(violation(PARITY_VERSION, f"{label}: {len(bad)} token(s) at output positions "
                                   f"{', '.join(_ranges(bad))} were sampled by version(s) {', '.join(versions)}, "
                                   f"not {model_version}, and differ from the recompute beyond {tol:g}",
                                   sample.req_id, events=_events(sample, series), cause=CAUSE_VERSION))
    same = [p for p in idx if p not in other]
    cands = {"processed": rc.processed, "raw": rc.raw, "processed_alt": rc.processed_alt, "raw_alt": rc.raw_alt,
             "untruncated": rc.untruncated}
    stats.candidates = {name: _mean_abs(rec, values, same) for name, values in cands.items()}
    primary = stats.candidates["processed"]
    if not same or primary <= tol:
        return stats, found
    match = next((c for c in ("raw", "processed_alt", "raw_alt", "untruncated") if stats.candidates[c] <= tol), None)
    gap = f"mean |Δ| {primary:.4g} vs the processed recompute ({head_dtype} lm_head)"
    if match in ("raw", "raw_alt"):
        how = "" if match == "raw" else f", with the lm_head in {alt_dtype}"
        stats.finding = PARITY_RAW
        found.append(violation(PARITY_RAW, f"{label} match the raw model's (mean |Δ| {stats.candidates[match]:.4g}"
                               f"{how}), not the processed distribution sampled at temperature {st.temperature:g}"
                               f"{_penalties(st)} ({gap}); logprobs_mode {st.logprobs_mode or 'unknown'}",
                               sample.req_id, events=_events(sample, series), cause=CAUSE_RAW))
    elif match == "processed_alt":
        stats.finding = PARITY_PRECISION
        found.append(violation(PARITY_PRECISION, f"{label} match the recompute only with the lm_head in {alt_dtype} "
                               f"(mean |Δ| {stats.candidates[match]:.4g}; {gap})", sample.req_id,
                               events=_events(sample, series), cause=CAUSE_PRECISION))
    elif match == "untruncated":
        stats.finding = PARITY_SUPPORT
        found.append(violation(PARITY_SUPPORT, f"{label} are the full-vocabulary distribution at temperature "
                               f"{st.temperature:g} (mean |Δ| {stats.candidates[match]:.4g}), not the truncated one "
                               f"the engine sampled from ({gap})", sample.req_id, events=_events(sample, series),
                               cause=CAUSE_FULL_VOCAB))
    else:
        best = min((c for c in stats.candidates if c != "processed"), key=stats.candidates.get)
        stats.finding = PARITY_MISMATCH
        found.append(violation(PARITY_MISMATCH, f"{label} differ from the recompute: {gap}, {stats.beyond:.0%} of "
                               f"tokens beyond {tol:g}; closest candidate {best} (mean |Δ| "
                               f"{stats.candidates[best]:.4g})", sample.req_id, events=_events(sample, series),
                               cause=CAUSE_UNKNOWN))
    return stats, found


def _penalties(st) -> str:
    parts = [f"{name} {value:g}" for name, value, neutral in (
        ("top-k", st.top_k, 0), ("top-p", st.top_p, 1.0), ("min-p", st.min_p, 0.0),
        ("presence penalty", st.presence_penalty, 0.0), ("frequency penalty", st.frequency_penalty, 0.0),
        ("repetition penalty", st.repetition_penalty, 1.0)) if value != neutral]
    return (" with " + ", ".join(parts)) if parts else ""


def _support(sample, rc, tol) -> list:
    """(d): how much probability the engine's support left out, where that moves a full-vocabulary logprob."""
    st = sample.settings
    if not truncates(st) or not rc.outside_mass:
        return []
    gaps = [-math.log1p(-min(m, 1 - 1e-12)) for m in rc.outside_mass]
    bad = [p for p, g in enumerate(gaps) if g > tol]
    if not bad:
        return []
    mean_mass = sum(rc.outside_mass) / len(rc.outside_mass)
    return [violation(PARITY_SUPPORT, f"sample {sample.req_id}: the engine's support ({_penalties(st)[6:]}) left out "
                      f"up to {max(rc.outside_mass):.3g} of the probability (mean {mean_mass:.3g}); at output "
                      f"positions {', '.join(_ranges(bad)[:8])}{' ...' if len(bad) > 8 else ''} a full-vocabulary "
                      f"logprob of the same token differs from the processed one by more than {tol:g} (up to "
                      f"{max(gaps):.3g})", sample.req_id,
                      events=(EventRef("sampling", st.t_ns, None, sample.req_id),), cause=CAUSE_SUPPORT)]


__all__ = ["NAMES", "SeriesStats", "diagnose"]
