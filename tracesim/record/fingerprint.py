"""A cheap fingerprint of a set of weights: "the weights served as version v are the weights sent as v".

``fingerprint(named_tensors)`` hashes, for every tensor in name order, its name, dtype and shape and the raw
bytes of fixed slices of its elements: ``SLICES`` runs of ``SLICE_LEN`` consecutive elements of the flattened
tensor, the first at the start, the last at the end, the others evenly spaced between (a tensor of at most
``SLICES * SLICE_LEN`` elements is hashed whole). The positions depend only on the element count, so two
processes with equal weights compute the same fingerprint wherever the tensors live: the slices are gathered
where the weights are (one small gather per tensor, one device-to-host copy per device), and only the bytes
reach the hash. Method name: ``METHOD`` (``WeightsFingerprint.method``); only fingerprints of one method compare.

What it detects: another payload (another rank's, another checkpoint's, the weights reloaded from disk after a
sync, an adapter merged or never pushed: each changes virtually every element, so every slice), a tensor
missing, added or renamed, another dtype or shape. What it cannot: a change confined to elements outside the
slices (e.g. one embedding row updated, a sparse edit) and a change that leaves the sampled bytes equal; weights
that are laid out differently on the two sides (tensor-parallel shards, quantised weights, a model whose engine
names differ from the trainer's) must be brought to one layout first (``served_named_tensors`` in
``weights_rpc.py`` undoes vLLM's fused projections and vocabulary padding).

torch is imported lazily: ``import tracesim`` does not need it.
"""

from __future__ import annotations

import hashlib

METHOD = "slices-v1"
SLICES = 8  # runs per tensor
SLICE_LEN = 64  # elements per run


def named_tensors_of(source) -> list:
    """``[(name, tensor)]`` from a ``torch.nn.Module`` (its ``named_parameters()``), a mapping (a state dict)
    or an iterable of ``(name, tensor)`` pairs. Raises ValueError for a name given twice."""
    if hasattr(source, "named_parameters"):
        pairs = list(source.named_parameters())
    elif hasattr(source, "items"):
        pairs = list(source.items())
    else:
        pairs = list(source)
    seen = set()
    for name, _t in pairs:
        if name in seen:
            raise ValueError(f"fingerprint: tensor name {name!r} given twice")
        seen.add(name)
    return pairs


def fingerprint(named_tensors) -> str:
    """The ``slices-v1`` fingerprint (32 hex digits) of ``named_tensors``: a module, a state dict or
    ``(name, tensor)`` pairs (see ``named_tensors_of``). Equal weights under equal names give equal
    fingerprints in any process and on any device; order of the input does not matter."""
    import torch

    pairs = sorted(named_tensors_of(named_tensors), key=lambda p: p[0])
    index_cache: dict = {}  # (element count, device) -> flat indices of the slices
    by_device: dict = {}  # device -> [uint8 tensors], in name order
    parts = []  # (name, dtype, shape, device, byte count), in name order
    with torch.no_grad():
        for name, t in pairs:
            t = t.detach()
            flat = t.reshape(-1)  # a view for contiguous tensors; a copy only for the rare strided one
            n = flat.numel()
            if n <= SLICES * SLICE_LEN:
                sel = flat.contiguous()
            else:
                key = (n, flat.device)
                idx = index_cache.get(key)
                if idx is None:
                    starts = torch.tensor([k * (n - SLICE_LEN) // (SLICES - 1) for k in range(SLICES)],
                                          device=flat.device)
                    idx = index_cache[key] = (starts[:, None] + torch.arange(SLICE_LEN, device=flat.device)).reshape(-1)
                sel = flat.index_select(0, idx)
            raw = sel.view(torch.uint8) if sel.numel() else sel.new_empty(0, dtype=torch.uint8)
            by_device.setdefault(flat.device, []).append(raw)
            parts.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), flat.device, raw.numel()))
        host = {dev: torch.cat(chunks).cpu().numpy().tobytes() for dev, chunks in by_device.items()}
    h = hashlib.blake2b(digest_size=16)
    offsets = dict.fromkeys(host, 0)
    for name, dtype, shape, dev, nbytes in parts:
        h.update(f"{name}\0{dtype}\0{shape}\0{nbytes}\0".encode())
        at = offsets[dev]
        h.update(host[dev][at:at + nbytes])
        offsets[dev] = at + nbytes
    return h.hexdigest()
