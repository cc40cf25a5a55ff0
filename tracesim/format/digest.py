"""Short, stable digests of token sequences: how rewards and samples are bound to the tokens they used."""

from __future__ import annotations

import hashlib
from array import array


def token_digest(token_ids) -> str:
    """16 hex characters of BLAKE2b over the ids as little-endian int32; equal ids give equal digests."""
    data = array("i", token_ids)
    if data.itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte C ints
        raise RuntimeError("token_digest needs 4-byte ints")
    if array("i", [1]).tobytes()[0] != 1:  # pragma: no cover - big-endian hosts
        data.byteswap()
    return hashlib.blake2b(data.tobytes(), digest_size=8).hexdigest()
