"""A concise builder for hand-made traces in the checker tests.

``Run`` steps a tiny synchronous engine and an RL loop around it the correct way, emitting the records of
``tracesim.format``; tests then change one record (``replace``/``drop``/``insert``) to make the minimal
violating twin of a clean trace.
"""

from __future__ import annotations

from tracesim import __version__
from tracesim.format import (
    FORMAT_MAJOR, FORMAT_MINOR, Aborted, CacheReset, ConsumedSample, Header, OutputDelivered, OutReq, Paused,
    ProcessInfo, RequestAdded, Resumed, RewardBound, SampleDropped, SampleLogprobs, SampleSettings, SchedReq, StepExecuted, StepScheduled,
    StepUpdated, Trace, TrainerConsumed, VersionSpan, WeightsUpdated, token_digest,
)

US = 1_000


def tokens(req_id: str, n: int) -> list:
    """The output tokens of a request: distinct per id, so digests differ between requests."""
    base = sum(ord(ch) * (i + 1) for i, ch in enumerate(req_id))
    return [base + i for i in range(n)]


class Run:
    def __init__(self, version: int = 0):
        self.records: list = []
        self.t_ns, self.step, self.version, self.train_step = 0, 0, version, 0
        self.out: dict = {}  # req_id -> tokens produced so far
        self.meta: dict = {}  # req_id -> (group_id, label version)

    def at(self, dt_us: int = 10) -> int:
        self.t_ns += dt_us * US
        return self.t_ns

    def emit(self, record):
        self.records.append(record)
        return record

    # --- client + engine admission ---------------------------------------------------------------------

    def admit(self, req_id: str, group: str | None = "g0", idx: int = 0, size: int = 1, prompt: str = "p0",
              engine: bool = True, client: bool = True):
        kw = dict(group_id=group, sample_idx=idx, group_size=size, prompt_len=8, max_tokens=16,
                  prompt_digest=token_digest(tokens(prompt, 8)))
        if client:
            self.emit(RequestAdded(self.at(), req_id, "client", version=self.version, **kw))
        if engine:
            self.emit(RequestAdded(self.at(), req_id, "engine", **kw))
        self.out[req_id] = []
        self.meta[req_id] = (group, self.version)

    def engine_step(self, prefill=(), decode=(), finish=(), preempted=(), cached: dict | None = None,
                    version: int | None = None, deliver: bool = True, resumed=()) -> None:
        """One synchronous step: prefill (first token) for ``prefill``, one token for ``decode``."""
        version = self.version if version is None else version
        reqs = [SchedReq(r, 8, 0, resumed=r in resumed, cached_tokens=(cached or {}).get(r, 0)) for r in prefill]
        reqs += [SchedReq(r, 0, 1, computed_tokens=8 + len(self.out[r]) - 1) for r in decode]
        s = self.step
        t = self.at()
        self.emit(StepScheduled(t, t + 5 * US, s, tuple(reqs), tuple(preempted)))
        self.emit(StepExecuted(self.at(), self.at(100), s, version))
        outs = []
        for q in reqs:
            r = q.req_id
            self.out[r].append(tokens(r, 64)[len(self.out[r])])
            outs.append(OutReq(r, 1, "stop" if r in finish else None, token_ids=(self.out[r][-1],)))
        upd_ns = self.at()
        self.emit(StepUpdated(upd_ns, upd_ns + 5 * US, s, tuple(outs), version))
        self.step += 1
        if deliver:
            for o in outs:
                self.deliver(o.req_id, final=o.finish_reason is not None, version=version)

    def deliver(self, req_id: str, final: bool = False, version: int | None = None) -> None:
        out = self.out[req_id]
        n = len(out)
        spans = (VersionSpan(self.version if version is None else version, 0, n),) if final else None
        self.emit(OutputDelivered(self.at(), req_id, n - 1, 1, final, "stop" if final else None, spans,
                                  token_digest(out) if final else None))

    def generate(self, reqs, n_tokens: int = 3) -> None:
        """Prefill every request in one step, then decode until each has ``n_tokens`` tokens."""
        reqs = list(reqs)
        self.engine_step(prefill=reqs, finish=reqs if n_tokens == 1 else ())
        for k in range(1, n_tokens):
            self.engine_step(decode=reqs, finish=reqs if k == n_tokens - 1 else ())

    # --- rewards, training, updates -------------------------------------------------------------------

    def reward(self, req_id: str, scored: str | None = None, value: float = 0.5) -> None:
        """Bind a reward to ``req_id`` computed on the output of ``scored`` (default: its own)."""
        self.emit(RewardBound(self.at(), req_id, token_digest(self.out[scored or req_id]),
                              self.meta[req_id][1], value, self.meta[req_id][0]))

    def consume(self, reqs, trainer_version: int | None = None, value: float = 0.5) -> None:
        samples = tuple(ConsumedSample(r, self.meta[r][0], self.meta[r][1], token_digest(self.out[r]), value)
                        for r in reqs)
        tv = self.version if trainer_version is None else trainer_version
        self.emit(TrainerConsumed(self.at(), self.train_step, samples, tv))
        self.train_step += 1

    def drop(self, reqs, reason: str = "aborted") -> None:
        self.emit(SampleDropped(self.at(), tuple(reqs), reason))

    def abort(self, reqs, side: str = "client") -> None:
        self.emit(Aborted(self.at(), tuple(reqs), "test", side))

    def update_weights(self, reset: bool | None = True, reset_running: bool = False) -> None:
        """Pause, write the next version, optionally reset the prefix cache (``None``: no reset), resume."""
        self.emit(Paused(self.at(), "client", "abort", bool(reset), end_ns=self.at()))
        if reset is not None:
            self.emit(CacheReset(self.at(), reset, "engine", reset_running))
        start = self.at()
        self.version += 1
        self.emit(WeightsUpdated(start, self.at(1000), self.version, "client"))
        self.emit(Resumed(self.at(), "client"))

    def trace(self) -> Trace:
        header = Header(FORMAT_MAJOR, FORMAT_MINOR, __version__, "synthetic", (ProcessInfo("test", "h", 1),))
        return Trace(header, list(self.records))

    # --- edits that make the violating twin -----------------------------------------------------------

    def find(self, kind: type, pred=lambda r: True, nth: int = 0) -> int:
        hits = [i for i, r in enumerate(self.records) if isinstance(r, kind) and pred(r)]
        return hits[nth]

    def replace(self, kind: type, pred=lambda r: True, nth: int = 0, **changes) -> None:
        i = self.find(kind, pred, nth)
        self.records[i] = self.records[i]._replace(**changes)

    def remove(self, kind: type, pred=lambda r: True, nth: int = 0) -> None:
        del self.records[self.find(kind, pred, nth)]


def logprobs_of(req_id: str, n: int) -> list:
    """Logprobs the engine returned for a request's tokens: distinct per position."""
    return [-0.25 - 0.125 * i for i in range(n)]


def record_logprobs(run: Run, reqs, mode: str = "processed_logprobs", temperature: float = 0.7) -> None:
    """The logprob records of ``reqs`` (after generation): the engine's settings, the logprobs it returned, and
    the trainer's behaviour logprobs, equal to them."""
    for r in reqs:
        toks = run.out[r]
        run.emit(SampleSettings(run.at(), r, "engine", mode, temperature, prompt_ids=(1, 2, 3)))
        run.emit(SampleLogprobs(run.at(), r, "returned", "client", 0, tuple(toks), tuple(logprobs_of(r, len(toks)))))
        run.emit(SampleLogprobs(run.at(), r, "behaviour", "trainer", 0, tuple(toks),
                                tuple(logprobs_of(r, len(toks))), run.version))


def correct_group(run: Run | None = None, group: str = "g0", size: int = 2, n_tokens: int = 3) -> Run:
    """A whole group admitted, generated, scored and consumed the correct way."""
    run = run or Run()
    reqs = [f"{group}s{i}" for i in range(size)]
    for i, r in enumerate(reqs):
        run.admit(r, group, i, size)
    run.generate(reqs, n_tokens)
    for r in reversed(reqs):  # rewards finish out of order
        run.reward(r)
    record_logprobs(run, reqs)
    run.consume(reqs)
    return run
