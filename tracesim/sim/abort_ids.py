"""The pause's aborts sent by the loop as an id list (``[loop] abort_ids``), instead of by the engine.

vLLM's ``pause_generation(mode="abort")`` aborts every request inside the engine (``abort_ids = "engine"``,
the default). Frameworks with their own abort path (SkyRL's ``abort_generation``, verl's ``abort_all_requests``)
call ``engine.abort(ids)`` with a list of request ids they collected, and take the call's return as the end of
generation. Since vLLM 0.16 the engine keys requests by an *internal* id (``"{external}-{8 random chars}"``,
``InputProcessor.assign_request_id``) and ``abort(ids)`` looks the ids up as *external* ones, silently
skipping any it does not know (NovaSky-AI/SkyRL#1243, fixed in #1250):

* ``"external"``: the loop aborts its live requests by the ids it submitted them under (the fix);
* ``"internal"``: the loop read the ids from the output processor's request states (internal ids) and passes
  them as external ones: the engine finds none of them, aborts nothing, and the requests generate on through
  the weight write that follows.

With either, the loop does not wait for vLLM's pause to drain: its abort call returns once the core has taken
it and ended the step in flight (an approximation of ``await engine.abort(...)`` plus the loop's own
bookkeeping), and the weight write starts then. The engine is still put in ``PAUSED_NEW`` (the loop stops
submitting; requests already running keep running).
"""

from __future__ import annotations

import zlib

from tracesim.format.records import Aborted

ABORT_IDS = ("engine", "external", "internal")
POLL_US = 50  # how often the loop looks whether its abort call has returned (the core took it, its step ended)


def internal_id(req_id: str) -> str:
    """vLLM's internal id of ``req_id``: the external one plus 8 characters (random in vLLM, derived here so
    runs stay deterministic)."""
    return f"{req_id}-{zlib.crc32(req_id.encode()):08x}"


def live_ids(rollout) -> tuple:
    """The client's live request ids (submitted, no final frame yet), in submission order."""
    return tuple(rid for rid, s in rollout.samples.items() if s.group is not None and not s.finished)


def pause_by_ids(trainer):
    """SimPy sub-process of the update cycle: the loop's abort by id list, then the engine pause without its
    own abort; returns when the abort call has returned (see the module doc)."""
    env, engine, policy, rollout = trainer.env, trainer.engine, trainer.policy, trainer.rollout
    ids = live_ids(rollout)
    sent = ids if policy.abort_ids == "external" else tuple(internal_id(r) for r in ids)
    if ids:
        trainer.emit(Aborted(t_ns=env.now, req_ids=sent, reason="pause", side="client"))
        engine.submit("abort", sent)  # queued before the pause: the core takes both at its next input drain
    engine.request_pause(policy.pause_mode, policy.clear_cache, abort_all=False)
    # the call returns once the core has taken its inputs and ended the steps in flight then
    while engine.inputs:
        yield env.timeout(POLL_US * 1000)
    last = engine.queue[-1].step if engine.queue else None
    while last is not None and engine.queue and engine.queue[0].step <= last:
        yield env.timeout(POLL_US * 1000)
