"""Perturbations: small, typed, serialisable changes to one simulated run (DESIGN §6).

A run is (base scenario or recording, seed, perturbations). Each perturbation is a frozen value with a stable
one-line text form, ``kind(field=value,...)``, used in repro commands, repro files, JSON and trace headers
(``parse`` reads it back, ``str`` writes it). The model applies them where it reads its inputs
(``tracesim/sim/hooks.py``): step durations, output deliveries, reward latencies, the weight-update cycle,
the order in which the engine core takes its inputs, actions the client injects at an engine action, and
configuration switches.

Targets are named by what is stable across runs (a request id, a step index, the n-th weight update, the
n-th pause) so a list of perturbations keeps its meaning when another one is removed. A perturbation whose
target does not exist in a run changes nothing there: it is a no-op, never an error, so shrinking can drop
or weaken any of them.

``simpler()`` lists strictly simpler variants of one perturbation, simplest first (magnitudes towards their
neutral value, ranges towards one step, group scope towards one request): the shrinker
(``tracesim/explore/shrink.py``) walks them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import ClassVar

from tracesim.inputs import InputError


class PerturbationError(InputError):
    """A perturbation's text or value is unusable; the message quotes it and names the field."""


# Where a control action is injected: right after the engine scheduled step K (its forward pass in flight,
# its update still to come), right after it applied step K's output, or when it enters its N-th pause
# (1-based; every pause mode).
POINT_RE = re.compile(r"^(sched|upd|pause):(\d+)$")


@dataclass(frozen=True)
class Perturbation:
    KIND: ClassVar[str] = ""
    # field -> (neutral value, quantum): magnitudes shrink towards the neutral value in steps of the quantum.
    MAGNITUDES: ClassVar[dict] = {}

    def __str__(self) -> str:
        return f"{self.KIND}({','.join(f'{f.name}={_fmt(getattr(self, f.name))}' for f in dataclasses.fields(self))})"

    def simpler(self) -> list:
        """Strictly simpler variants, simplest first: each magnitude field moved towards its neutral value."""
        out = []
        for name, (neutral, quantum) in self.MAGNITUDES.items():
            for value in _towards(getattr(self, name), neutral, quantum):
                out.append(dataclasses.replace(self, **{name: value}))
        return out

    def validate(self) -> None:
        """Raise PerturbationError for values no run could use (a negative count, an unknown point)."""


# --- timing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTimeScale(Perturbation):
    """Forward passes of steps [step, step + count) take ``factor`` times as long."""

    KIND = "step_time"
    MAGNITUDES = {"count": (1, 1), "factor": (1.0, 0.05)}
    step: int
    factor: float
    count: int = 1

    def validate(self) -> None:
        _check(self.factor > 0, self, "factor", "must be positive")
        _check(self.count >= 1 and self.step >= 0, self, "count", "step >= 0 and count >= 1")


@dataclass(frozen=True)
class StepTimeJitter(Perturbation):
    """Forward passes of steps [step, step + count) each take a factor drawn in [1 - pct/100, 1 + pct/100]
    (deterministic in ``seed`` and the step index)."""

    KIND = "step_jitter"
    MAGNITUDES = {"count": (1, 1), "pct": (0, 1)}
    step: int
    count: int
    pct: int
    seed: int = 0

    def validate(self) -> None:
        _check(0 <= self.pct < 100, self, "pct", "must be in [0, 100)")
        _check(self.count >= 1 and self.step >= 0, self, "count", "step >= 0 and count >= 1")


@dataclass(frozen=True)
class DelayDelivery(Perturbation):
    """Output frames of step ``step``'s update (of request ``req``, or every request for ``*``) reach the client
    ``ms`` later; each request's frames still arrive in order (later frames of it queue behind)."""

    KIND = "delay_delivery"
    MAGNITUDES = {"ms": (0, 1)}
    step: int
    ms: int
    req: str = "*"


@dataclass(frozen=True)
class RewardDelay(Perturbation):
    """The reward of sample ``req`` takes ``ms`` longer to compute (other rewards keep their latency)."""

    KIND = "reward_delay"
    MAGNITUDES = {"ms": (0, 1)}
    req: str
    ms: int


@dataclass(frozen=True)
class WriteTime(Perturbation):
    """Weight update ``update`` (1-based) writes for ``ms`` longer (negative: shorter, not below zero)."""

    KIND = "write_time"
    MAGNITUDES = {"ms": (0, 1)}
    update: int
    ms: int


@dataclass(frozen=True)
class WriteLate(Perturbation):
    """Weight update ``update`` starts writing ``ms`` after the pause has drained (the engine stays paused)."""

    KIND = "write_late"
    MAGNITUDES = {"ms": (0, 1)}
    update: int
    ms: int


@dataclass(frozen=True)
class WriteEarly(Perturbation):
    """Weight update ``update`` starts writing at most ``ms`` after the pause call, drained or not (a loop
    that stops waiting for the drain). Larger ``ms`` is the weaker perturbation."""

    KIND = "write_early"
    update: int
    ms: int

    def simpler(self) -> list:
        return [dataclasses.replace(self, ms=v) for v in (self.ms * 4, self.ms * 2) if v <= 60_000 and v > self.ms]


@dataclass(frozen=True)
class VersionShift(Perturbation):
    """Weight update ``update``'s new version label is set ``ms`` after (positive) or before (negative) its
    write ends (not before the write starts): outputs are stamped, and the client labels samples, with a
    version the weights on the device do not have yet, or still have not."""

    KIND = "version_shift"
    MAGNITUDES = {"ms": (0, 1)}
    update: int
    ms: int


@dataclass(frozen=True)
class Latency(Perturbation):
    """Extra transport latency: ``add_us`` client -> engine core (adds, aborts, control), ``output_us`` engine
    core -> client (output frames)."""

    KIND = "latency"
    MAGNITUDES = {"add_us": (0, 1), "output_us": (0, 1)}
    add_us: int = 0
    output_us: int = 0

    def validate(self) -> None:
        _check(self.add_us >= 0 and self.output_us >= 0, self, "add_us", "latencies cannot be negative")


# --- ordering ----------------------------------------------------------------------------------------------

INPUT_KINDS = ("add", "abort", "pause", "resume", "reset")


@dataclass(frozen=True)
class DeferInput(Perturbation):
    """The engine core takes input ``kind``/``key`` only after ``actions`` more of its own actions (schedule()
    / update_from_output()) than it otherwise would: an input that came just before a schedule lands after it.
    ``key``: the request id of an add or an abort (its first id), the ordinal (1-based) of a pause, resume or
    reset."""

    KIND = "defer_input"
    MAGNITUDES = {"actions": (1, 1)}
    kind: str
    key: str
    actions: int = 1

    def validate(self) -> None:
        _check(self.kind in INPUT_KINDS, self, "kind", f"one of {', '.join(INPUT_KINDS)}")
        _check(self.actions >= 1, self, "actions", "must be at least 1")


@dataclass(frozen=True)
class SwapInputs(Perturbation):
    """Input ``kind``/``key`` (as for ``defer_input``) and the input that follows it are taken in the opposite
    order (if that one comes within 4 engine actions; else the held input is taken then)."""

    KIND = "swap_inputs"
    kind: str
    key: str

    def validate(self) -> None:
        _check(self.kind in INPUT_KINDS, self, "kind", f"one of {', '.join(INPUT_KINDS)}")


# --- control actions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Abort(Perturbation):
    """At ``at``, the client aborts request ``req`` (``scope=group``: every live member of its group); the loop
    then does what its policy says with aborted samples (drop the group, or requeue)."""

    KIND = "abort"
    at: str
    req: str
    scope: str = "request"

    def simpler(self) -> list:
        return [dataclasses.replace(self, scope="request")] if self.scope == "group" else []

    def validate(self) -> None:
        _check_point(self)
        _check(self.scope in ("request", "group"), self, "scope", "request or group")


@dataclass(frozen=True)
class Retry(Perturbation):
    """At ``at``, the client gives up on request ``req`` (aborts it) and resubmits its sample at once, under a
    fresh id or the same one (the loop's ``retry_ids``), without waiting for the abort to be processed."""

    KIND = "retry"
    at: str
    req: str

    def validate(self) -> None:
        _check_point(self)


@dataclass(frozen=True)
class ResetCache(Perturbation):
    """At ``at``, the client asks the engine to reset its prefix cache (refused while blocks are in use), or
    with ``running`` to preempt the running requests first (vLLM's ``reset_running_requests=True``: output
    of their steps still in flight is void and dropped, the window of ``fault_frame_to_new_incarnation``)."""

    KIND = "reset_cache"
    at: str
    running: bool = False

    def __str__(self) -> str:  # the text form predating ``running`` stays the same
        return f"reset_cache(at={_fmt(self.at)}{',running=true' if self.running else ''})"

    def simpler(self) -> list:
        return [dataclasses.replace(self, running=False)] if self.running else []

    def validate(self) -> None:
        _check_point(self)
        _check(isinstance(self.running, bool), self, "running", "expected true or false")


@dataclass(frozen=True)
class ExtraUpdate(Perturbation):
    """At ``at``, the trainer runs one more weight-update cycle (pause, write, new version, resume) with the
    loop's own settings; skipped while another update is in progress."""

    KIND = "extra_update"
    at: str

    def validate(self) -> None:
        _check_point(self)


# --- configuration switches -------------------------------------------------------------------------------

# key -> (part of the Scenario, type): the switches exploration may flip. Engine keys test whether a correct
# loop stays correct on another engine configuration; loop keys change the user's own loop (explore offers them
# only when asked).
CONFIG_KEYS = {
    "async_scheduling": ("engine", bool), "max_concurrent_batches": ("engine", int),
    "enable_prefix_caching": ("engine", bool),
    "num_gpu_blocks": ("engine", int), "max_num_seqs": ("engine", int), "max_num_batched_tokens": ("engine", int),
    "reward_workers": ("loop", int), "pause_mode": ("loop", str), "clear_cache": ("loop", bool),
    # engine fault modes (docs/simulator.md "Engine fault modes"): a probability in [0, 1]
    "fault_drop_inflight_frame": ("engine", float), "fault_frame_to_new_incarnation": ("engine", float),
    "fault_resume_context_missing_tokens": ("engine", float), "fault_duplicate_frame": ("engine", float),
    # client actions of real loops (docs/simulator.md "Client actions of real loops", cache resets): what-if
    # switches of the user's own loop, injectable with --perturb / repro
    "on_abort": ("loop", str), "continue_label": ("loop", str), "retry_ids": ("loop", str),
    "request_timeout_ms": ("loop", int), "reset_prefix_cache": ("loop", bool), "on_reset_refused": ("loop", str),
    "reset_connector": ("loop", bool),
    # workload structure and grouping (docs/simulator.md "Abort by id list", "Grouping")
    "abort_ids": ("loop", str), "group_by": ("loop", str), "aborted_child": ("loop", str),
    # the version publisher and the weights served (docs/simulator.md "Publishing a version and the weights served")
    "label_advance": ("loop", str), "publish_aborts_all": ("loop", bool), "version_reset_at": ("loop", int),
    "weight_sync_fault": ("loop", str), "weight_fingerprints": ("loop", bool),
    "cancel_off_policy": ("loop", bool),  # off-policy cancellation at the update's pause (cancel.py)
    # data-parallel engine cores (docs/simulator.md "Data-parallel engines")
    "data_parallel_size": ("engine", int), "fault_dp_finish_no_output": ("engine", float),
    "dp_pause_wait": ("loop", str),
    # prefill/decode KV transfer (docs/simulator.md "Prefill/decode KV transfer")
    "pd_transfer_us": ("engine", int), "fault_pd_free_in_transfer": ("engine", float),
}


@dataclass(frozen=True)
class SetConfig(Perturbation):
    """The run uses ``key = value`` instead of the base's setting (see ``CONFIG_KEYS``)."""

    KIND = "set"
    key: str
    value: object

    def __str__(self) -> str:
        return f"set({self.key}={_fmt(self.value)})"

    def validate(self) -> None:
        _check(self.key in CONFIG_KEYS, self, "key", f"one of {', '.join(CONFIG_KEYS)}")
        kind = CONFIG_KEYS[self.key][1]
        ok = isinstance(self.value, kind) and (kind is not int or not isinstance(self.value, bool))
        _check(ok, self, self.key, f"expected {kind.__name__}")
        if kind is int:
            _check(self.value > 0, self, self.key, "must be positive")
        if kind is float:
            _check(0.0 <= self.value <= 1.0, self, self.key, "a probability in [0, 1]")
        if kind is str:
            from tracesim.sim.scenario import _CHOICES

            choices = _CHOICES[self.key]
            _check(self.value in choices, self, self.key, ", ".join(choices))


KINDS: dict = {cls.KIND: cls for cls in (
    StepTimeScale, StepTimeJitter, DelayDelivery, RewardDelay, WriteTime, WriteLate, WriteEarly, VersionShift,
    Latency, DeferInput, SwapInputs, Abort, Retry, ResetCache, ExtraUpdate, SetConfig)}


# --- text form ---------------------------------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_.:*+-]+$")
_ITEM = re.compile(r'\s*([A-Za-z_]\w*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,()"\s]+)\s*(,|$)')


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _BARE.match(text) and _literal(text) == text:
        return text
    return json.dumps(text)


def _literal(text: str):
    if text.startswith('"'):
        return json.loads(text)
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", text):
        return float(text)
    return text


def parse(text: str) -> Perturbation:
    """Read one perturbation from its text form ``kind(field=value,...)``; raise PerturbationError."""
    m = re.fullmatch(r"\s*([a-z_]+)\s*\((.*)\)\s*", text or "")
    if not m:
        raise PerturbationError(f"perturbation {_cut(text)!r}: expected kind(field=value,...)")
    kind, body = m.group(1), m.group(2)
    cls = KINDS.get(kind)
    if cls is None:
        raise PerturbationError(f"perturbation {_cut(text)!r}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    values, pos = {}, 0
    while pos < len(body.strip()) and body.strip():
        item = _ITEM.match(body, pos)
        if not item:
            raise PerturbationError(f"perturbation {_cut(text)!r}: cannot read {_cut(body[pos:])!r}")
        values[item.group(1)] = _literal(item.group(2))
        pos = item.end()
    if cls is SetConfig:
        if len(values) != 1:
            raise PerturbationError(f"perturbation {_cut(text)!r}: set(...) takes exactly one key=value")
        (key, value), = values.items()
        if CONFIG_KEYS.get(key, (None, None))[1] is float and isinstance(value, int):
            value = float(value)
        return make(cls, {"key": key, "value": value}, text)
    return make(cls, values, text)


def make(cls, values: dict, text: str = "") -> Perturbation:
    """``cls(**values)`` with each field's type checked (ints stay ints); raise PerturbationError."""
    where = _cut(text) or cls.KIND
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            raise PerturbationError(f"perturbation {where!r}: unknown field {name!r} (fields: {', '.join(known)})")
    for name, f in known.items():
        if name not in values:
            if f.default is dataclasses.MISSING:
                raise PerturbationError(f"perturbation {where!r}: missing field {name!r}")
            continue
        want = {"int": int, "float": float, "str": str}.get(f.type)
        v = values[name]
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            values[name] = v = float(v)
        if want is str and isinstance(v, (int, float)) and not isinstance(v, bool):
            values[name] = v = _fmt(v)  # a key that looks like a number ("2") is still a key
        if want is not None and (not isinstance(v, want) or isinstance(v, bool)):
            raise PerturbationError(f"perturbation {where!r}: field {name!r}: expected {want.__name__}, got {v!r}")
    p = cls(**values)
    p.validate()
    return p


def parse_list(text: str) -> tuple:
    """Perturbations separated by ``;`` (the repro command's form); empty text gives ()."""
    return tuple(parse(part) for part in _split(text) if part.strip())


def format_list(perturbations) -> str:
    return "; ".join(str(p) for p in perturbations)


def _split(text: str) -> list:
    parts, cur, quoted, esc = [], [], False, False
    for ch in text or "":
        if esc:
            esc = False
        elif ch == "\\" and quoted:
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _cut(text, n: int = 120) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n] + "..."


def _check(ok: bool, p, field: str, what: str) -> None:
    if not ok:
        raise PerturbationError(f"perturbation {_cut(str(p))!r}: field {field!r}: {what}")


def _check_point(p) -> None:
    _check(bool(POINT_RE.match(p.at)), p, "at", "sched:STEP, upd:STEP or pause:N")


def _towards(value, neutral, quantum) -> list:
    """Values strictly between ``neutral`` (included) and ``value``, nearest the neutral first: distances of
    d / 2^k (from the neutral) and d - d / 2^k (just below ``value``), d being ``value``'s distance in quanta.
    Taking the first that still fails halves the gap to the smallest failing value each round (a binary
    search in O(log d) rounds), and ``value`` minus one quantum is always tried, so a result is minimal."""
    d = value - neutral
    if abs(d) < quantum * 0.5:
        return []
    sign = 1 if d > 0 else -1
    steps = round(abs(d) / quantum)
    cands, k = {0, steps - 1}, steps
    while k > 1:
        k //= 2
        cands.add(k)
        cands.add(steps - k)
    out = []
    for n in sorted(c for c in cands if 0 <= c < steps):
        v = neutral + sign * n * quantum
        out.append(round(v, 6) if isinstance(quantum, float) else int(v))
    return out


__all__ = ["Perturbation", "PerturbationError", "KINDS", "CONFIG_KEYS", "INPUT_KINDS", "POINT_RE", "parse",
           "parse_list", "format_list", "make"] + [cls.__name__ for cls in KINDS.values()]
