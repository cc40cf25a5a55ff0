"""What parity recomputes: each recorded series of logprobs, with its sample's prompt, settings and version spans.

A *series* is one party's logprobs of one sample's output tokens: the engine's as returned (client
``SampleLogprobs`` role ``returned``, and the engine's own ``OutReq.token_ids``/``logprobs`` under its
``record_tokens`` flag, each a series) and the trainer's (``SampleLogprobs`` role ``behaviour`` or ``current``). Settings come
from the engine's ``SampleSettings`` (it knows ``logprobs_mode``), else the client's. Version spans, which part of
the sample which weights sampled: the client's final ``OutputDelivered.spans``, else the versions the engine
stamped on each ``StepUpdated``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tracesim.format.records import OutputDelivered, SampleLogprobs, SampleSettings, StepUpdated


@dataclass
class Series:
    req_id: str
    role: str  # "returned", "behaviour" or "current"
    source: str  # "client", "engine" or "trainer": which records it came from
    start_idx: int  # output position of the first token
    token_ids: list
    logprobs: list
    version: int | None = None  # the weights that computed them, where the record says
    t_ns: int = 0  # when the last part of it was recorded
    kind: str = "logprobs"  # record kind it came from ("logprobs", or "upd" for the engine's StepUpdated)


@dataclass
class Sample:
    req_id: str
    settings: SampleSettings
    prompt_ids: list
    output_ids: list  # every output token known, from position 0
    spans: list = field(default_factory=list)  # [(version, start, end)], output positions
    series: list = field(default_factory=list)  # [Series]


def _engine_outputs(trace) -> dict:
    """req_id -> (token ids, logprobs (NaN where not recorded), versions, last t_ns) from the engine's
    StepUpdated, in update order."""
    out: dict = {}
    for upd in trace.of(StepUpdated):
        for o in upd.outs:
            if o.token_ids is None or not o.sampled:
                continue
            ids, lps, vers, _ = out.get(o.req_id) or ([], [], [], 0)
            ids.extend(o.token_ids)
            lps.extend(o.logprobs if o.logprobs is not None else [math.nan] * len(o.token_ids))
            vers.extend([upd.version] * len(o.token_ids))
            out[o.req_id] = (ids, lps, vers, upd.t_ns)
    return out


def _runs(versions) -> list:
    spans = []
    for pos, v in enumerate(versions):
        if v is None:
            continue
        if spans and spans[-1][0] == v and spans[-1][2] == pos:
            spans[-1] = (v, spans[-1][1], pos + 1)
        else:
            spans.append((v, pos, pos + 1))
    return spans


def _merge(parts: list) -> Series | None:
    """One series from a sample's records of one role and source (frames of a stream), in position order."""
    parts = sorted(parts, key=lambda r: r.start_idx)
    first = parts[0]
    ids, lps = [], []
    for r in parts:
        if r.token_ids is None or r.logprobs is None:
            continue
        if r.start_idx > first.start_idx + len(ids):  # a gap: keep what is contiguous
            break
        skip = first.start_idx + len(ids) - r.start_idx
        ids.extend(r.token_ids[skip:])
        lps.extend(r.logprobs[skip:len(r.token_ids)])
    if not ids:
        return None
    return Series(first.req_id, first.role, first.side, first.start_idx, ids, lps, first.version, parts[-1].t_ns)


def collect_samples(trace) -> list:
    """Every sample that has settings, a prompt and at least one series of logprobs, in order of first settings."""
    settings: dict = {}
    for s in trace.of(SampleSettings):
        have = settings.get(s.req_id)
        if have is None or (s.side == "engine" and have.side != "engine"):
            if s.prompt_ids is None and have is not None:
                s = s._replace(prompt_ids=have.prompt_ids)
            settings[s.req_id] = s
        elif have.prompt_ids is None and s.prompt_ids is not None:
            settings[s.req_id] = have._replace(prompt_ids=s.prompt_ids)
    parts: dict = {}
    for r in trace.of(SampleLogprobs):
        parts.setdefault((r.req_id, r.role, r.side), []).append(r)
    engine = _engine_outputs(trace)
    final_spans = {d.req_id: d.spans for d in trace.of(OutputDelivered) if d.finished and d.spans}
    samples = []
    for req_id, st in settings.items():
        if st.prompt_ids is None:
            continue
        series = [s for key, recs in parts.items() if key[0] == req_id and (s := _merge(recs)) is not None]
        eng = engine.get(req_id)
        if eng is not None and any(math.isfinite(x) for x in eng[1]):  # the engine's own copy, a series of its own
            ids, lps, _, t_ns = eng
            series.insert(0, Series(req_id, "returned", "engine", 0, list(ids), list(lps), None, t_ns, "upd"))
        if not series:
            continue
        output_ids = list(eng[0]) if eng is not None else []
        for s in series:  # the longest known prefix of the output
            end = s.start_idx + len(s.token_ids)
            if end > len(output_ids) and s.start_idx <= len(output_ids):
                output_ids = output_ids[:s.start_idx] + list(s.token_ids)
        spans = [(v.version, v.start, v.end) for v in final_spans[req_id]] if req_id in final_spans else \
            _runs(eng[2]) if eng is not None else []
        samples.append(Sample(req_id, st, list(st.prompt_ids), output_ids, spans, series))
    return samples


def version_at(spans, pos: int):
    """The version that sampled output position ``pos`` (None: not known)."""
    for v, start, end in spans:
        if start <= pos < end:
            return v
    return None
