"""Weight payloads: what the trainer publishes under a version, what the engine then serves, and the
``WeightsFingerprint`` records that let ``served_weights_match_published`` compare the two.

The model's versions are numbers the loop sets; the weights themselves are not simulated. A payload is named by
the content it holds (``"update3"``: the weights the third update cycle published; ``"update0"``: the base
checkpoint), and a fingerprint is a digest of that name, so equal fingerprints mean equal weights, as on a real
run. A sync
fault (``[loop].weight_sync_fault``) changes what the engine holds, never the version number it stamps: the
label keeps moving and every version invariant stays quiet, which is what made the real reports slow to find
("masquerades as staleness"). Only the fingerprints show it:

* ``"skip"``: the sync never reaches the engine, which keeps serving what it held (verl#7495: a disaggregated
  LoRA sync never delivered the adapter, every rollout came from the initial policy).
* ``"reload_base"``: the sync lands, then the engine's wake-up reloads the base checkpoint over it
  (TRL#5312: colocate sleep level 2, ``reload_weights`` on wake-up). The engine fingerprints twice: after
  the load (the right weights) and after the wake-up at resume (the base).
* ``"torn"``: the copy is taken before the gather finished, so the engine holds a mix of the previous and the
  new weights that the trainer never published (ms-swift#9060).

Fingerprints are recorded only when asked (``weight_fingerprints = true``) or when a fault is set (a fault that
left no trace would be a setting without an effect): traces of the default settings stay byte for byte as they
were. One engine rank (0) is modelled.
"""

from __future__ import annotations

import hashlib

from tracesim.format.records import WeightsFingerprint

METHOD = "sim-v1"  # WeightsFingerprint.method of simulated fingerprints: only equal methods compare
SYNC_FAULTS = ("none", "skip", "reload_base", "torn")
BASE = "update0"  # the checkpoint the engine starts from (and reloads with "reload_base")


def fingerprint_of(content: str) -> str:
    """The fingerprint of the weights named ``content`` (32 hex digits, stable across runs and hosts)."""
    return hashlib.blake2b(f"tracesim-weights:{content}".encode(), digest_size=16).hexdigest()


class WeightSync:
    """Tracks the engine's weights across update cycles and writes the fingerprints of both sides.

    The trainer calls ``published`` when it starts writing version ``v``, ``installed`` when the write ended
    and ``resumed`` after its resume call; ``start`` once, before anything runs, for the base weights."""

    def __init__(self, policy, emit):
        self.fault = policy.weight_sync_fault
        self.enabled = policy.weight_fingerprints or self.fault != "none"
        self.emit = emit
        self.served = BASE  # the content the engine holds
        self.reloads = False  # "reload_base": the next resume reloads the base checkpoint

    def start(self, t_ns: int) -> None:
        """Both sides begin from the base checkpoint, published as version 0."""
        if self.enabled:
            self.emit(WeightsFingerprint(t_ns, 0, fingerprint_of(BASE), "trainer", 0, METHOD))
            self.emit(WeightsFingerprint(t_ns, 0, fingerprint_of(BASE), "engine", 0, METHOD))

    def published(self, t_ns: int, version: int, content: str) -> None:
        if self.enabled:
            self.emit(WeightsFingerprint(t_ns, version, fingerprint_of(content), "trainer", 0, METHOD))

    def installed(self, t_ns: int, version: int, content: str) -> None:
        """The write of ``content`` as ``version`` ended: what the engine holds now, after the fault."""
        if self.fault == "skip":
            pass  # the payload never arrived: the engine keeps what it held
        elif self.fault == "torn":
            self.served = f"torn({self.served}|{content})"  # a mix the trainer never published
        else:
            self.served = content
        self.reloads = self.fault == "reload_base"
        if self.enabled:
            self.emit(WeightsFingerprint(t_ns, version, fingerprint_of(self.served), "engine", 0, METHOD))

    def resumed(self, t_ns: int, version: int) -> None:
        """The engine wakes up for generation; with "reload_base" it reloads the base checkpoint now."""
        if not self.reloads:
            return
        self.reloads = False
        self.served = BASE
        if self.enabled:
            self.emit(WeightsFingerprint(t_ns, version, fingerprint_of(self.served), "engine", 0, METHOD))
