"""A synthetic RL-rollout trace made without an engine: small bundled examples and benchmark inputs.

The workload runs in waves. Each wave admits ``groups_per_wave`` prompt groups of ``group_size`` samples under
the current policy version, steps a synchronous engine (prefill then one token per step, token budget per
step) until every sample finishes, delivers each token to the client, scores every sample on a pool of reward
workers that finish out of order, and lets the trainer consume the wave in batches of whole groups. Between
waves the trainer updates the weights the correct way: abort-mode pause, cache reset, weight write, new
version, resume. The bindings are therefore all correct, which makes the trace a clean reference input for
the checkers and a realistic mix of record kinds for benchmarks. Everything derives from ``seed``.
"""

from __future__ import annotations

import random

from tracesim.format.digest import token_digest
from tracesim.format.header import make_header
from tracesim.format.records import (
    PAUSED_ALL, CacheReset, ConsumedSample, OutputDelivered, OutReq, Paused, ProcessInfo, RequestAdded,
    Resumed, RewardBound, SchedReq, StepExecuted, StepScheduled, StepUpdated, TrainerConsumed, VersionSpan,
    WeightsUpdated,
)
from tracesim.format.trace import Trace

_US = 1_000  # ns


def synthetic_trace(*, waves: int = 3, groups_per_wave: int = 4, group_size: int = 4, max_tokens: int = 24,
                    token_budget: int = 512, groups_per_batch: int = 2, reward_workers: int = 3,
                    seed: int = 0) -> Trace:
    """Return a correct, self-consistent trace (source ``synthetic``); see the module docstring."""
    rng = random.Random(seed)
    gen = _Generator(rng, group_size, max_tokens, token_budget, groups_per_batch, reward_workers)
    for wave in range(waves):
        gen.run_wave(wave, groups_per_wave)
        if wave + 1 < waves:
            gen.update_weights()
    gen.events.sort(key=lambda e: e[0])  # stable: ties keep generation order
    header = make_header(
        "synthetic", (ProcessInfo("synthetic", "synthetic", 0),),
        engine_config={"async_scheduling": False, "max_num_batched_tokens": token_budget, "pause_mode": "abort",
                       "clear_cache": True},
        seed=seed,
        inputs={"generator": "tracesim.format.synthetic", "waves": waves, "groups_per_wave": groups_per_wave,
                "group_size": group_size, "max_tokens": max_tokens, "groups_per_batch": groups_per_batch,
                "reward_workers": reward_workers},
    )
    return Trace(header, [e[1] for e in gen.events])


class _Generator:
    def __init__(self, rng, group_size, max_tokens, token_budget, groups_per_batch, reward_workers):
        self.rng, self.group_size, self.max_tokens = rng, group_size, max_tokens
        self.token_budget, self.groups_per_batch = token_budget, groups_per_batch
        self.worker_free_ns = [0] * reward_workers
        self.events: list = []  # (t_ns, record)
        self.t_ns, self.step, self.version, self.train_step = 0, 0, 0, 0

    def emit(self, record) -> None:
        self.events.append((record.t_ns, record))

    def run_wave(self, wave: int, n_groups: int) -> None:
        reqs = self.admit(wave, n_groups)
        waiting, running = list(reqs), []
        while waiting or running:
            self.engine_step(waiting, running)
        rewards = self.score(reqs)
        self.consume(reqs, rewards)

    def admit(self, wave: int, n_groups: int) -> list:
        reqs = []
        for g in range(n_groups):
            group_id = f"w{wave}g{g}"
            prompt = [self.rng.randrange(1, 32000) for _ in range(self.rng.randrange(8, 64))]
            for i in range(self.group_size):
                req = {"id": f"{group_id}s{i}", "group": group_id, "prompt": prompt, "out": [],
                       "out_len": self.rng.randrange(4, self.max_tokens + 1), "version": self.version}
                self.t_ns += self.rng.randrange(5, 50) * _US
                common = dict(req_id=req["id"], group_id=group_id, sample_idx=i, group_size=self.group_size,
                              prompt_len=len(prompt), max_tokens=self.max_tokens,
                              prompt_digest=token_digest(prompt))
                self.emit(RequestAdded(self.t_ns, side="client", version=self.version, **common))
                self.emit(RequestAdded(self.t_ns + 200 * _US, side="engine", **common))
                reqs.append(req)
        self.t_ns += 300 * _US
        return reqs

    def engine_step(self, waiting: list, running: list) -> None:
        budget, entries = self.token_budget, []
        for req in running:
            entries.append(SchedReq(req["id"], 0, 1, computed_tokens=len(req["prompt"]) + len(req["out"]) - 1))
            budget -= 1
        while waiting and len(waiting[0]["prompt"]) <= budget:
            req = waiting.pop(0)
            budget -= len(req["prompt"])
            entries.append(SchedReq(req["id"], len(req["prompt"]), 0))
            running.append(req)
        sched_ns = self.t_ns
        exec_ns = sched_ns + self.rng.randrange(80, 160) * _US
        tokens = sum(e.prefill_tokens + e.decode_tokens for e in entries)
        upd_ns = exec_ns + (2_000 + 3 * tokens + self.rng.randrange(0, 400)) * _US
        self.emit(StepScheduled(sched_ns, exec_ns - 10 * _US, self.step, tuple(entries), waiting=len(waiting),
                                running=len(running), queue_depth=1, kv_usage=round(len(running) / 64, 4)))
        self.emit(StepExecuted(exec_ns, upd_ns, self.step, self.version))
        outs, finished = [], []
        for req in running:
            token = self.rng.randrange(1, 32000)
            req["out"].append(token)
            done = len(req["out"]) == req["out_len"]
            reason = ("length" if req["out_len"] == self.max_tokens else "stop") if done else None
            outs.append(OutReq(req["id"], 1, reason))
            deliver_ns = upd_ns + self.rng.randrange(100, 300) * _US
            n = len(req["out"])
            self.emit(OutputDelivered(
                deliver_ns, req["id"], n - 1, 1, done, reason,
                (VersionSpan(self.version, 0, n),) if done else None, token_digest(req["out"]) if done else None))
            if done:
                req["done_ns"] = deliver_ns
                finished.append(req)
        self.emit(StepUpdated(upd_ns, upd_ns + 50 * _US, self.step, tuple(outs), self.version))
        for req in finished:
            running.remove(req)
        self.step += 1
        self.t_ns = upd_ns + 60 * _US

    def score(self, reqs: list) -> dict:
        """Reward each finished sample on the first free worker; durations vary, so they finish out of order."""
        rewards = {}
        for req in sorted(reqs, key=lambda r: r["done_ns"]):
            w = min(range(len(self.worker_free_ns)), key=lambda i: self.worker_free_ns[i])
            start_ns = max(self.worker_free_ns[w], req["done_ns"])
            end_ns = start_ns + self.rng.randrange(200, 5_000) * _US
            self.worker_free_ns[w] = end_ns
            reward = round(self.rng.random(), 6)
            rewards[req["id"]] = (end_ns, reward)
            self.emit(RewardBound(end_ns, req["id"], token_digest(req["out"]), req["version"], reward,
                                  req["group"], w))
        return rewards

    def consume(self, reqs: list, rewards: dict) -> None:
        groups: dict = {}
        for req in reqs:
            groups.setdefault(req["group"], []).append(req)
        ordered = list(groups.values())
        for b in range(0, len(ordered), self.groups_per_batch):
            batch = [req for group in ordered[b:b + self.groups_per_batch] for req in group]
            ready_ns = max(rewards[req["id"]][0] for req in batch) + 100 * _US
            self.t_ns = max(self.t_ns, ready_ns)
            samples = tuple(ConsumedSample(req["id"], req["group"], req["version"], token_digest(req["out"]),
                                           rewards[req["id"]][1]) for req in batch)
            self.emit(TrainerConsumed(self.t_ns, self.train_step, samples, self.version))
            self.train_step += 1

    def update_weights(self) -> None:
        """Abort-mode pause with cache clear while nothing is in flight, write, bump the version, resume."""
        t = self.t_ns + 500 * _US
        self.emit(Paused(t, "client", "abort", True, PAUSED_ALL, end_ns=t + 100 * _US))
        self.emit(Paused(t + 50 * _US, "engine", None, True, PAUSED_ALL))
        self.emit(CacheReset(t + 80 * _US, True, "engine"))
        write_ns = t + 150 * _US
        end_ns = write_ns + self.rng.randrange(5_000, 20_000) * _US
        self.version += 1
        self.emit(WeightsUpdated(write_ns, end_ns, self.version, "client", end_ns))
        self.emit(Resumed(end_ns + 50 * _US, "engine"))
        self.emit(Resumed(end_ns + 60 * _US, "client"))
        self.t_ns = end_ns + 100 * _US


def main(argv: list[str] | None = None) -> None:
    """``python -m tracesim.format.synthetic OUT [--seed N] [--waves N]``: write a synthetic trace."""
    import argparse

    from tracesim.format.trace import write_trace

    parser = argparse.ArgumentParser(prog="python -m tracesim.format.synthetic", description=main.__doc__)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--groups-per-wave", type=int, default=4)
    args = parser.parse_args(argv)
    trace = synthetic_trace(waves=args.waves, groups_per_wave=args.groups_per_wave, seed=args.seed)
    write_trace(args.out, trace)
    print(f"wrote {len(trace.records)} records to {args.out}")


if __name__ == "__main__":
    main()
