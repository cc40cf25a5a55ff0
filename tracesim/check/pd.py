"""Prefill/decode disaggregation: a KV transfer completes only for a request the decode engine still holds."""

from __future__ import annotations

from tracesim.check.base import ms, ref, violation
from tracesim.format.records import Aborted, KvTransfer

HELD = "kv_transfer_completes_for_held_request"

_CAUSE = ("the engine freed a request aborted during its KV transfer instead of holding its blocks until the "
          "transfer completed (delay_free_blocks)")


def kv_transfer_completes_for_held_request(ix, policy) -> list:
    """Per engine process: every KV-transfer completion (``KvTransfer`` "done") names a request whose transfer
    started there and has not completed yet, and which the engine still holds: not ended since the start, or
    ended by an abort after which the engine said it holds its blocks ("held"). A completion for a request
    freed at its abort is vLLM's ``assert req_id in self.requests`` in ``_update_from_kv_xfer_finished`` (the
    decode engine dies, prime-rl#2841 / #2843), or, where the assertion is skipped, a transfer that wrote
    into blocks already given to another request. Holds trivially on a trace without ``KvTransfer`` records."""
    if not ix.n_kv_transfers:  # no disaggregation: no completion to judge (checked, not "not checkable", so
        return []              # that the reports of every trace without P/D stay as they were)
    state: dict = {}  # (proc, req_id) -> [state, start record, abort record]; state "live" | "held" | "freed"
    out = []
    for proc, rec in ix.timeline:
        t = type(rec)
        if t is Aborted:
            if rec.side == "client":
                continue
            for r in rec.req_ids:
                st = state.get((proc, r))
                if st is not None and st[0] == "live":
                    st[0], st[2] = "freed", rec
        elif t is KvTransfer:
            for r in rec.req_ids:
                key = (proc, r)
                if rec.phase == "start":
                    state[key] = ["live", rec, None]
                elif rec.phase == "held":
                    st = state.get(key)
                    if st is not None and st[0] == "freed":
                        st[0] = "held"
                elif rec.phase == "done":
                    st = state.pop(key, None)
                    if st is None:
                        out.append(violation(HELD, f"a KV transfer of {r} completed at {ms(ix, rec.t_ns)} without "
                                             "one in flight (none started, or it completed already)", r,
                                             events=[ref(rec, r)]))
                    elif st[0] == "freed":
                        out.append(violation(
                            HELD, f"the KV transfer of {r} (started {ms(ix, st[1].t_ns)}) completed at "
                            f"{ms(ix, rec.t_ns)} after the engine freed {r} at its abort ({ms(ix, st[2].t_ns)}, "
                            "blocks not held): a completion for a freed request", r,
                            events=[ref(st[1], r), ref(st[2], r), ref(rec, r)], cause=_CAUSE))
    return out
