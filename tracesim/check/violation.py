"""What a checker returns: one broken binding, pointing at the events involved."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EventRef:
    """One event involved in a violation."""

    kind: str  # record KIND, e.g. "reward", "upd"
    t_ns: int
    step: int | None = None
    req_id: str | None = None


@dataclass(frozen=True)
class Violation:
    invariant: str  # name of the invariant, e.g. "reward_bound_to_own_tokens"
    message: str  # one sentence saying what broke
    req_id: str | None = None  # the request / sample concerned
    step: int | None = None  # engine step, when one is involved
    t_ns: int | None = None  # time of the event that exposed the violation
    events: tuple = ()  # tuple[EventRef, ...], the cause first, the one that exposed the break last
    cause: str | None = None  # the likely mechanism, one sentence shared by every violation it explains
    group_id: str | None = None  # the sample's group, when it has one

    def to_json(self) -> dict:
        d = asdict(self)
        d["events"] = [asdict(e) for e in self.events]
        return d
