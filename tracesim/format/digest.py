"""Short, stable digests of token sequences: how rewards and samples are bound to the tokens they used."""

from __future__ import annotations

import hashlib
import sys
from array import array

import msgpack

from tracesim.format.codec import encode_frame

if array("i").itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte C ints
    raise RuntimeError("token_digest needs 4-byte ints")
_BIG_ENDIAN = sys.byteorder == "big"  # checked once: the simulator digests every sample it finishes


def token_digest(token_ids) -> str:
    """16 hex characters of BLAKE2b over the ids as little-endian int32; equal ids give equal digests."""
    data = array("i", token_ids)
    if _BIG_ENDIAN:  # pragma: no cover - big-endian hosts
        data.byteswap()
    return hashlib.blake2b(data.tobytes(), digest_size=8).hexdigest()


def prefix_digests(token_ids, ends) -> list:
    """``token_digest(token_ids[:end])`` for each ``end`` of ``ends``, hashing each id once when the ends
    increase (one running BLAKE2b state, copied at each end) instead of once per prefix."""
    h, done, out = hashlib.blake2b(digest_size=8), 0, []
    for end in ends:
        if end < done:
            out.append(token_digest(token_ids[:end]))
            continue
        data = array("i", token_ids[done:end])
        if _BIG_ENDIAN:  # pragma: no cover - big-endian hosts
            data.byteswap()
        h.update(data.tobytes())
        done = end
        out.append(h.copy().hexdigest())
    return out


def records_digest(records) -> str:
    """sha256 of ``records`` (a header included or not) as the trace writer frames and packs them: equal
    digests, byte-identical record streams. For comparing runs without writing files."""
    h, packer = hashlib.sha256(), msgpack.Packer(use_bin_type=True)
    for record in records:
        h.update(packer.pack(encode_frame(record)))
    return h.hexdigest()
