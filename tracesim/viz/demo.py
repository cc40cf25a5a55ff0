"""A small, deterministic RL-loop trace for examples, tests and benchmarks of the plots and the export.

It is generated without an engine (``source="synthetic"``) from the record vocabulary only: groups of
requests are admitted, an engine with a batch queue of ``queue_depth`` schedules prefill and decode tokens
(``schedule(N+1)`` before ``update(N)`` when the queue holds two steps), every ``update_every`` steps the
client pauses (mode ``keep``), writes new weights and resumes, so requests that straddle an update are
produced by two versions. Outputs are delivered with version spans, scored and consumed by a trainer.

This is a picture-maker, not a model of vLLM: the simulator (``tracesim.sim``) is the model.
"""

from __future__ import annotations

import random

from tracesim import __version__
from tracesim.format import (
    ConsumedSample, Header, OutputDelivered, OutReq, Paused, ProcessInfo, RequestAdded, Resumed, RewardBound,
    SchedReq, StepExecuted, StepScheduled, StepUpdated, Trace, TrainerConsumed, VersionSpan, WeightsUpdated,
    token_digest,
)

_US = 1_000


class _Req:
    __slots__ = ("req_id", "group_id", "prompt_len", "max_tokens", "computed", "produced", "spans",
                 "delivered", "label")

    def __init__(self, req_id, group_id, prompt_len, max_tokens, label):
        self.req_id, self.group_id, self.label = req_id, group_id, label
        self.prompt_len, self.max_tokens = prompt_len, max_tokens
        self.computed = 0  # prompt tokens computed so far
        self.produced = 0  # output tokens sampled so far
        self.spans: list = []  # [version, start, end] runs of output tokens
        self.delivered = 0


def demo_trace(n_steps: int = 60, *, max_batch: int = 8, group_size: int = 2, queue_depth: int = 2,
               update_every: int = 25, max_tokens: int = 12, token_budget: int = 256, seed: int = 0,
               outputs: bool = True) -> Trace:
    """Return a synthetic trace of ``n_steps`` engine steps (every argument is a count; times are virtual ns).

    ``outputs=False`` leaves out deliveries, rewards and consumption (engine records only), which keeps
    very large traces (benchmarks) small in memory. Raises ``ValueError`` for non-positive sizes.
    """
    if min(n_steps, max_batch, group_size, queue_depth, max_tokens, token_budget) < 1:
        raise ValueError("demo_trace: every size must be >= 1")
    rng = random.Random(seed)
    records: list = []
    waiting: list = []
    running: list = []
    in_flight: list = []  # (step, reqs, forward-pass end ns) scheduled and not yet updated
    version, t_ns, next_group, train_step, gpu_free_ns = 0, 1_000 * _US, 0, 0, 0
    finished_batch: list = []

    def admit():
        nonlocal next_group
        gid = f"g{next_group}"
        next_group += 1
        prompt_len = rng.randint(16, 96)
        for i in range(group_size):
            req = _Req(f"{gid}.{i}", gid, prompt_len, rng.randint(max_tokens // 2, max_tokens), version)
            records.append(RequestAdded(t_ns, req.req_id, "client", gid, i, group_size, prompt_len,
                                        req.max_tokens, version=version))
            records.append(RequestAdded(t_ns + 20 * _US, req.req_id, "engine", gid, i, group_size, prompt_len,
                                        req.max_tokens))
            waiting.append(req)

    def update_oldest():
        nonlocal t_ns
        step, reqs, exec_end_ns = in_flight.pop(0)
        t_ns = max(t_ns, exec_end_ns + 20 * _US)  # update(N) blocks until forward pass N is done
        outs = []
        for req in reqs:
            # still in a prefill chunk, or finished by the previous output: nothing sampled
            if req.computed < req.prompt_len or req.produced >= req.max_tokens:
                outs.append(OutReq(req.req_id, 0))
                continue
            _sample(req, version)
            done = req.produced >= req.max_tokens
            outs.append(OutReq(req.req_id, 1, "length" if done else None))
            if outputs:
                _deliver(req, records, t_ns + 60 * _US, done)
            if done:
                running.remove(req)
                finished_batch.append(req)
        records.append(StepUpdated(t_ns, t_ns + 40 * _US, step, tuple(outs), version))
        t_ns += 80 * _US

    for step in range(n_steps):
        if step % update_every == update_every - 1:
            while in_flight:
                update_oldest()
            t_ns = _weight_update(records, t_ns, version + 1, rng)
            version += 1
        # arrivals come in bursts, so the waiting queue fills and drains
        while len(waiting) + len(running) < max_batch or (len(waiting) < 2 * max_batch and rng.random() < 0.3):
            admit()
        while waiting and len(running) < max_batch:
            running.append(waiting.pop(0))
        sched, prefill_total = [], 0
        for req in running:
            if req.computed < req.prompt_len:
                chunk = min(req.prompt_len - req.computed, token_budget - prefill_total)
                if chunk <= 0:
                    continue
                sched.append(SchedReq(req.req_id, chunk, 0, computed_tokens=req.computed))
                req.computed += chunk
                prefill_total += chunk
            else:  # async scheduling: decode again before the previous step's output is back
                sched.append(SchedReq(req.req_id, 0, 1, computed_tokens=req.prompt_len + req.produced))
        scheduled = {s.req_id for s in sched}
        picked = [r for r in running if r.req_id in scheduled]
        sched_end = t_ns + 150 * _US + 2 * _US * len(sched)
        records.append(StepScheduled(t_ns, sched_end, step, tuple(sched), waiting=len(waiting),
                                     running=len(running), queue_depth=len(in_flight) + 1,
                                     kv_usage=round(min(1.0, len(running) / (2 * max_batch)), 3)))
        exec_ns = 2_000 * _US + 8 * _US * prefill_total + 50 * _US * len(sched) + rng.randint(0, 400) * _US
        exec_start = max(sched_end + 30 * _US, gpu_free_ns)  # one forward pass at a time on the device
        gpu_free_ns = exec_start + exec_ns
        records.append(StepExecuted(exec_start, gpu_free_ns, step, version))
        in_flight.append((step, picked, gpu_free_ns))
        t_ns = sched_end + 50 * _US
        if len(in_flight) >= queue_depth:
            update_oldest()
        if outputs and len(finished_batch) >= 2 * group_size:
            train_step += 1
            samples = tuple(_score(req, records, t_ns, i) for i, req in enumerate(finished_batch))
            records.append(TrainerConsumed(t_ns + 900 * _US, train_step, samples, version))
            finished_batch.clear()
    while in_flight:
        update_oldest()
    return Trace(_header(seed, n_steps), sorted(records, key=_time_key))


def _time_key(record):
    return record.t_ns


def _sample(req: _Req, version: int) -> None:
    if req.spans and req.spans[-1][0] == version:
        req.spans[-1][2] += 1
    else:
        req.spans.append([version, req.produced, req.produced + 1])
    req.produced += 1


def _deliver(req: _Req, records: list, t_ns: int, done: bool) -> None:
    if not done and req.produced - req.delivered < 4:  # the client sees frames of up to four tokens
        return
    spans = tuple(VersionSpan(*s) for s in req.spans) if done else None
    digest = token_digest([len(req.req_id), req.produced]) if done else None
    records.append(OutputDelivered(t_ns, req.req_id, req.delivered, req.produced - req.delivered, done,
                                   "length" if done else None, spans, digest))
    req.delivered = req.produced


def _score(req: _Req, records: list, t_ns: int, worker: int) -> ConsumedSample:
    reward = round((len(req.req_id) * 37 % 100) / 100, 2)
    records.append(RewardBound(t_ns + (100 + 50 * worker) * _US, req.req_id, None, req.label, reward,
                               req.group_id, worker % 2))
    return ConsumedSample(req.req_id, req.group_id, req.label, None, reward)


def _weight_update(records: list, t_ns: int, new_version: int, rng: random.Random) -> int:
    """Pause (keep) -> write weights -> set version -> resume; returns the time after resuming."""
    write_ns = (3_000 + rng.randint(0, 1_000)) * _US
    records.append(Paused(t_ns, "client", "keep", False, end_ns=t_ns + 200 * _US))
    records.append(Paused(t_ns + 100 * _US, "engine"))
    start = t_ns + 300 * _US
    records.append(WeightsUpdated(start, start + write_ns, new_version, set_ns=start + write_ns))
    records.append(Resumed(start + write_ns + 100 * _US, "engine"))
    records.append(Resumed(start + write_ns + 150 * _US, "client"))
    return start + write_ns + 300 * _US


def _header(seed: int, n_steps: int) -> Header:
    procs = (ProcessInfo("sim", "synthetic", 0),)
    return Header(1, 0, __version__, "synthetic", procs, {"async_scheduling": True}, seed,
                  {"generator": "tracesim.viz.demo", "n_steps": n_steps})
