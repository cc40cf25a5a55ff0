"""Where perturbations enter a run: ``Hooks`` applies a run's perturbation list (``perturb.py``) at the places
the model reads its inputs.

* before the run: configuration switches and transport latencies change the scenario (``scenario``);
* step durations: a timing wrapper scales forward passes (``timing``);
* the engine core: inputs are held back or swapped between its actions (``gate`` / ``release``), and control
  actions are injected when it schedules or updates a step or enters a pause (``action``);
* the output path: frames of one update reach the client later, each request's frames still in order
  (``install`` wraps ``engine.on_output``);
* the RL loop: one reward's latency, and the weight-update cycle (drain wait, write time, version label).

With no perturbation nothing is installed, so an unperturbed run takes exactly the path it took before.
Every perturbation is looked up by a target that exists or not; one that matches nothing changes nothing.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

from tracesim.sim.perturb import (
    CONFIG_KEYS, Abort, DeferInput, DelayDelivery, ExtraUpdate, Latency, ResetCache, Retry, RewardDelay,
    SetConfig, StepTimeJitter, StepTimeScale, SwapInputs, VersionShift, WriteEarly, WriteLate, WriteTime,
)

SWAP_WINDOW_ACTIONS = 4  # a swap holds its input at most this many engine actions waiting for the next one


class UpdateTweaks:
    """How perturbations change one weight-update cycle (all in ns; ``early_ns`` None: wait for the drain)."""

    __slots__ = ("write_extra_ns", "late_ns", "early_ns", "shift_ns")

    def __init__(self):
        self.write_extra_ns, self.late_ns, self.early_ns, self.shift_ns = 0, 0, None, 0


class PerturbedTiming:
    """A timing (``ModelTiming`` / ``RecordedTiming``) whose forward passes of some steps are scaled."""

    def __init__(self, inner, factors: dict):
        self.inner, self.factors = inner, factors
        self.fallback = getattr(inner, "fallback", None)

    def exec_ns(self, step: int, reqs) -> int:
        ns = self.inner.exec_ns(step, reqs)
        f = self.factors.get(step)
        return ns if f is None else int(ns * f)

    def sched_ns(self, step: int) -> int:
        return self.inner.sched_ns(step)

    def upd_ns(self, step: int) -> int:
        return self.inner.upd_ns(step)

    def gap_ns(self, kind: str, step: int) -> int:
        return self.inner.gap_ns(kind, step)


class _Held:
    __slots__ = ("item", "until", "swap")

    def __init__(self, item, until: int, swap: bool):
        self.item, self.until, self.swap = item, until, swap


class Hooks:
    """The perturbations of one run, grouped by where they apply. Build one per run (it keeps run state)."""

    def __init__(self, perturbations=()):
        self.perturbations = tuple(perturbations)
        by = defaultdict(list)
        for p in self.perturbations:
            by[type(p)].append(p)
        self._by = by
        # ordering: (input kind, key) -> the first DeferInput / SwapInputs aimed at it (each acts once)
        self._order = {}
        for p in by[DeferInput] + by[SwapInputs]:
            self._order.setdefault((p.kind, p.key), p)
        # control actions by point ("sched:12"), in list order
        self._controls = defaultdict(list)
        for p in self.perturbations:
            if isinstance(p, (Abort, Retry, ResetCache, ExtraUpdate)):
                self._controls[p.at].append(p)
        self._delivery = defaultdict(dict)  # step -> req ("*" for all) -> extra ns
        for p in by[DelayDelivery]:
            self._delivery[p.step][p.req] = self._delivery[p.step].get(p.req, 0) + p.ms * 1_000_000
        self.reward_extra_ns = {}
        for p in by[RewardDelay]:
            self.reward_extra_ns[p.req] = self.reward_extra_ns.get(p.req, 0) + p.ms * 1_000_000
        self._seen = defaultdict(int)  # input kind -> inputs of that kind the engine was offered so far
        self.pauses = 0  # pauses the engine entered so far
        self.hold_resumes = False  # a perturbed replay waits for a write: resumes wait for it (replay.py)
        self._held_resumes: list = []
        self._held: list = []
        self._ready: list = []
        self._last_arrival: dict = {}  # req_id -> when its latest frame reaches the client (delivery delays)
        self.env = self.engine = self.client = self.trainer = None

    def __bool__(self) -> bool:
        return bool(self.perturbations)

    # --- before the run ----------------------------------------------------------------------------------

    def scenario(self, s):
        """The scenario with the configuration switches and transport latencies applied."""
        parts = {"engine": {}, "loop": {}}
        for p in self._by[SetConfig]:
            parts[CONFIG_KEYS[p.key][0]][p.key] = p.value
        add = sum(p.add_us for p in self._by[Latency])
        out = sum(p.output_us for p in self._by[Latency])
        if add or out:
            parts["engine"]["add_latency_us"] = s.engine.add_latency_us + add
            parts["engine"]["output_latency_us"] = s.engine.output_latency_us + out
        if not parts["engine"] and not parts["loop"]:
            return s
        return s.replace(engine=dataclasses.replace(s.engine, **parts["engine"]),
                         loop=dataclasses.replace(s.loop, **parts["loop"]))

    def engine_config(self, cfg):
        """An EngineConfig with the engine switches and latencies applied (replay has no full scenario)."""
        values = {p.key: p.value for p in self._by[SetConfig] if CONFIG_KEYS[p.key][0] == "engine"}
        add = sum(p.add_us for p in self._by[Latency])
        out = sum(p.output_us for p in self._by[Latency])
        if add or out:
            values.update(add_latency_us=cfg.add_latency_us + add, output_latency_us=cfg.output_latency_us + out)
        return dataclasses.replace(cfg, **values) if values else cfg

    def timing(self, timing):
        factors: dict = {}
        for p in self._by[StepTimeScale]:
            for k in range(p.step, p.step + p.count):
                factors[k] = factors.get(k, 1.0) * p.factor
        for p in self._by[StepTimeJitter]:
            for k in range(p.step, p.step + p.count):
                r = random.Random(f"{p.seed}:{k}").uniform(-p.pct, p.pct) / 100.0
                factors[k] = factors.get(k, 1.0) * (1.0 + r)
        return PerturbedTiming(timing, factors) if factors else timing

    def install(self, env, engine, client, trainer=None, rewards=None, loop=None, engine_always=False) -> None:
        """Attach to a built run: the engine core, its client (a Rollout), and the RL loop when there is one
        (a simulation's ``trainer`` and reward pool ``rewards``, or a replay's ``replay_loop.ReplayLoop``)."""
        self.env, self.engine, self.client, self.trainer = env, engine, client, trainer
        if self._order or self._controls or engine_always:  # replay: also counts pauses, holds resumes
            engine.hooks = self
        if self._delivery:
            engine.on_output = self._send
        if rewards is not None:
            rewards.extra_ns = self.reward_extra_ns
        if loop is not None:
            loop.extra_ns = self.reward_extra_ns
        if trainer is not None:
            trainer.tweaks = self.update_tweaks

    # --- the engine core's inputs ------------------------------------------------------------------------

    def gate(self, engine) -> None:
        """Called as the engine core drains its inputs: hold back or reorder them as the ordering
        perturbations say. Held inputs come back in arrival order once due."""
        if not self._held and not self._ready and not self._order and not self.hold_resumes:
            return
        out, self._ready = self._ready, []
        new = list(engine.inputs)
        engine.inputs.clear()
        if self.hold_resumes:
            self._held_resumes.extend(item for item in new if item[0] == "resume")
            new = [item for item in new if item[0] != "resume"]
        for h in list(self._held):
            if engine.actions >= h.until:
                self._held.remove(h)
                out.append(h.item)
        for item in new:
            kind = item[0]
            self._seen[kind] += 1
            p = self._order.pop((kind, _key(item, self._seen[kind])), None) if self._order else None
            if isinstance(p, DeferInput):
                self._held.append(_Held(item, engine.actions + p.actions, False))
                continue
            if isinstance(p, SwapInputs):
                self._held.append(_Held(item, engine.actions + SWAP_WINDOW_ACTIONS, True))
                continue
            out.append(item)
            swapped = [h for h in self._held if h.swap]
            for h in swapped:  # the input that followed a swapped one is in: the swapped one comes after it
                self._held.remove(h)
                out.append(h.item)
        engine.inputs.extend(out)

    def release(self, engine) -> bool:
        """The engine core has nothing else to do: give it every held input now (never wait on a hold)."""
        if not self._held:
            return False
        self._ready.extend(h.item for h in self._held)
        self._held.clear()
        return True

    def holding(self) -> bool:
        return bool(self._held or self._ready or self._held_resumes)

    def take_held_resumes(self) -> list:
        out, self._held_resumes = self._held_resumes, []
        return out

    # --- control actions injected at engine actions ------------------------------------------------------

    def action(self, engine, kind: str, n: int) -> None:
        """The engine core just scheduled step ``n`` ("sched"), applied its output ("upd"), or entered a pause
        ("pause", ``n`` ignored: pauses are counted here)."""
        if kind == "pause":
            self.pauses += 1
            n = self.pauses
        todo = self._controls.pop(f"{kind}:{n}", None)
        if not todo:
            return
        client = self.client
        for p in todo:
            if isinstance(p, Abort):
                client.cancel(p.req, p.scope == "group")
            elif isinstance(p, Retry):
                client.retry(p.req)
            elif isinstance(p, ResetCache):
                client.control("reset", p.running)
            elif isinstance(p, ExtraUpdate) and self.trainer is not None:
                self.trainer.extra_update()

    # --- output path --------------------------------------------------------------------------------------

    def _send(self, step, frames) -> None:
        """``engine.on_output`` with delivery delays: each frame reaches the client after the transport latency
        plus its delay, and never before an earlier frame of the same request."""
        env, client, last = self.env, self.client, self._last_arrival
        delays = self._delivery.get(step, {}) if step is not None else {}
        every = delays.get("*", 0)
        base = env.now + client.latency_ns
        batches: dict = {}
        for frame in frames:
            req_id = frame.req_id
            at = max(base + every + delays.get(req_id, 0), last.get(req_id, 0))
            last[req_id] = at
            batches.setdefault(at, []).append(frame)
        for at in sorted(batches):
            env.timeout(at - env.now, batches[at]).callbacks.append(client._arrived)

    # --- the weight-update cycle -------------------------------------------------------------------------

    def update_tweaks(self, update: int) -> UpdateTweaks:
        t = UpdateTweaks()
        for p in self._by[WriteTime]:
            if p.update == update:
                t.write_extra_ns += p.ms * 1_000_000
        for p in self._by[WriteLate]:
            if p.update == update:
                t.late_ns += p.ms * 1_000_000
        for p in self._by[WriteEarly]:
            if p.update == update:
                ns = p.ms * 1_000_000
                t.early_ns = ns if t.early_ns is None else min(t.early_ns, ns)
        for p in self._by[VersionShift]:
            if p.update == update:
                t.shift_ns += p.ms * 1_000_000
        return t


def _key(item, ordinal: int) -> str:
    """An engine input's key for ordering perturbations: the request id of an add or abort, else its ordinal."""
    kind, payload = item
    if kind == "add":
        return payload.req_id
    if kind == "abort":
        return payload[0] if payload else ""
    return str(ordinal)


__all__ = ["Hooks", "PerturbedTiming", "UpdateTweaks"]
