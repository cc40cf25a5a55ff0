"""Weight fingerprints: the weights an engine serves under version v are the weights the trainer published as v.

A version label says nothing about what is in the engine's memory: a rank that loaded another rank's payload,
an adapter never pushed, a sync that was skipped, weights reloaded from disk after the sync all keep the label
and change the weights. The trainer records a fingerprint of what it publishes (``WeightsFingerprint``,
side "trainer"), every engine rank one of what it serves after installing a version (side "engine"); equal
fingerprints of one method mean equal weights (``tracesim/record/fingerprint.py`` says what a method cannot
see). An engine fingerprint of a version the trainer published no fingerprint of, under that method, cannot be
judged: the weights before the first update are often loaded from disk on both sides without one.
"""

from __future__ import annotations

from tracesim.check.base import NotCheckable, ms, ref, violation

SERVED = "served_weights_match_published"

_STALE = ("the engine serves weights the trainer published under another version: the new payload was not "
          "loaded (or an older one was loaded again)")
_FOREIGN = ("the engine serves weights the trainer never published: another payload (another rank's, the "
            "checkpoint reloaded from disk, an adapter not pushed) was installed under this version")
_TWICE = "the trainer published two different sets of weights under one version"


def served_weights_match_published(ix, policy) -> list:
    """Every engine fingerprint of version v equals a trainer fingerprint of v of the same method; the trainer
    publishes one set of weights per version."""
    if not ix.fingerprints:
        return NotCheckable("missing weight fingerprints (no WeightsFingerprint records)")
    published: dict = {}  # (method, version) -> first trainer record of each distinct fingerprint
    by_print: dict = {}  # (method, fingerprint) -> first trainer record
    out = []
    for fp in ix.fingerprints:
        if fp.side != "trainer":
            continue
        recs = published.setdefault((fp.method, fp.version), [])
        if all(r.fingerprint != fp.fingerprint for r in recs):
            if recs:
                first = recs[0]
                out.append(violation(
                    SERVED, f"the trainer published version {fp.version} as {_short(first.fingerprint)} at "
                    f"{ms(ix, first.t_ns)} and again as {_short(fp.fingerprint)} at {ms(ix, fp.t_ns)}",
                    events=[ref(first), ref(fp)], cause=_TWICE))
            recs.append(fp)
        by_print.setdefault((fp.method, fp.fingerprint), fp)
    compared = 0
    for fp in ix.fingerprints:
        if fp.side == "trainer":
            continue
        recs = published.get((fp.method, fp.version))
        if not recs:
            continue
        compared += 1
        if any(r.fingerprint == fp.fingerprint for r in recs):
            continue
        pub = recs[-1] if recs[-1].t_ns <= fp.t_ns else recs[0]
        other = by_print.get((fp.method, fp.fingerprint))
        msg = (f"rank {fp.rank} serves version {fp.version} with weights {_short(fp.fingerprint)} "
               f"(fingerprinted at {ms(ix, fp.t_ns)}), but the trainer published version {fp.version} as "
               f"{_short(pub.fingerprint)} at {ms(ix, pub.t_ns)}")
        if other is not None:
            msg += f"; these are the weights it published as version {other.version}"
        events = sorted([ref(pub), ref(fp)] + ([ref(other)] if other is not None else []), key=lambda e: e.t_ns)
        out.append(violation(SERVED, msg, events=events, cause=_STALE if other is not None else _FOREIGN))
    if not compared and not out:
        return NotCheckable("missing comparable fingerprints (no engine fingerprint of a version the trainer "
                            "published a fingerprint of, with the same method)")
    return out


def _short(fingerprint: str) -> str:
    return fingerprint[:12]
