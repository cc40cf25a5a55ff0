"""KV blocks and the prefix cache, after vLLM V1's ``BlockPool`` / ``KVCacheManager``.

A block holds ``block_size`` tokens. A full block gets a content key once computed (``SimReq.block_key``).
As in vLLM, identical blocks are not de-duplicated: two requests that computed the same block both keep
theirs under the key, a lookup hits the first one cached, and evicting one leaves the others hittable. As in
vLLM's ``BlockHashToBlockMap``, a key maps to its block id while one block holds it, and to a dict of block
ids (an ordered set, in caching order) only while several do: most keys have one block, and a dict made and
freed per cached block is then saved.

Unreferenced blocks (``ref`` 0) sit in a free queue, a doubly linked list over block ids as vLLM's
``FreeKVCacheBlockQueue`` is (``nxt`` / ``prv``, int64 arrays with a sentinel node: O(1) at both ends and in
the middle, no object per operation; C arrays where compiled); allocation takes from the front. As in
vLLM's ``BlockPool.free_blocks``, a freed cached block goes to the back (LRU: it can be hit again until an
allocation evicts it) and a freed block without content (never hittable) to the front, to be reused first.
One block is reserved (vLLM's null block), so ``num_gpu_blocks - 1`` are usable.

Each cached block remembers the weight version that computed it (``version_of``).

External KV tier (``offload_blocks`` > 0, ``[engine].kv_offload_blocks``): an offload cache or KV connector
beside the GPU pool, keyed like the prefix cache, holding up to ``offload_blocks`` content keys in LRU order.
A cached block evicted from the GPU (``take``) and, on a successful ``reset``, every cached block move their
key there; ``lookup_tier`` continues a GPU prefix hit into the tier (the caller loads those blocks into fresh
GPU blocks, which are keyed again). ``reset`` leaves the tier: only ``reset_tier`` (vLLM's
``reset_connector``) empties it, which is how KV of old weights can survive a successful prefix-cache reset.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict


class BlockPool:
    def __init__(self, num_gpu_blocks: int, block_size: int, prefix_caching: bool, offload_blocks: int = 0):
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.num_blocks = num_gpu_blocks - 1
        self.ref = [0] * self.num_blocks
        self.key_of: list = [None] * self.num_blocks
        self.version_of = [0] * self.num_blocks
        self.cached: dict = {}  # content key -> block id, or {block id: None} in caching order (first is hit)
        # The free queue: node num_blocks is the sentinel (its nxt is the front, allocated (evicted) first, its
        # prv the back); every block starts in it, in id order.
        n = self.num_blocks
        self.nxt = array("q", range(1, n + 2))
        self.nxt[n] = 0
        self.prv = array("q", range(-1, n))
        self.prv[0] = n
        self.num_free = n
        self.offload_blocks = offload_blocks if prefix_caching else 0  # the tier's capacity in blocks (0: none)
        self.tier = OrderedDict()  # content key -> None, least recently stored or hit first (dropped first)
        self.tier_hits = 0  # blocks loaded from the tier into the GPU

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def free_order(self) -> list:
        """The free queue's block ids, front (allocated first) to back."""
        out, b = [], self.nxt[self.num_blocks]
        while b != self.num_blocks:
            out.append(b)
            b = self.nxt[b]
        return out

    # The links are read through self (not locals) so that the compiled build indexes its C arrays in place.
    def _unlink(self, b: int) -> None:
        """Take block ``b`` out of the free queue."""
        after, before = self.nxt[b], self.prv[b]
        self.prv[after] = before
        self.nxt[before] = after
        self.num_free -= 1

    def _link_back(self, b: int) -> None:
        """Queue block ``b`` at the back of the free queue (allocated last)."""
        end = self.num_blocks
        last = self.prv[end]
        self.nxt[last] = b
        self.prv[b] = last
        self.nxt[b] = end
        self.prv[end] = b
        self.num_free += 1

    def _link_front(self, b: int) -> None:
        """Queue block ``b`` at the front of the free queue (allocated next)."""
        end = self.num_blocks
        first = self.nxt[end]
        self.prv[first] = b
        self.nxt[b] = first
        self.prv[b] = end
        self.nxt[end] = b
        self.num_free += 1

    def lookup(self, keys: list) -> list:
        """Block ids of the longest cached prefix of ``keys`` (content keys of full blocks)."""
        hits = []
        if not self.prefix_caching:
            return hits
        cached = self.cached
        for key in keys:
            blocks = cached.get(key)
            if blocks is None:
                break
            hits.append(next(iter(blocks)) if type(blocks) is dict else blocks)
        return hits

    def lookup_tier(self, keys: list, start: int) -> int:
        """How many of ``keys[start:]`` (the keys past a GPU hit of ``start`` blocks) continue the prefix in the
        external tier (no side effect: an admission that goes ahead calls ``load_tier``)."""
        n = 0
        tier = self.tier
        for i in range(start, len(keys)):
            if keys[i] not in tier:
                break
            n += 1
        return n

    def load_tier(self, keys: list, start: int, n: int) -> None:
        """``keys[start:start + n]`` were loaded from the tier: count them and mark them recently used (vLLM's
        offload cache keeps its copy after a load)."""
        tier = self.tier
        for i in range(start, start + n):
            tier.move_to_end(keys[i])
        self.tier_hits += n

    def _offload(self, key) -> None:
        """Store ``key`` in the external tier (most recently used), dropping the least recent past capacity."""
        tier = self.tier
        tier[key] = None
        tier.move_to_end(key)
        if len(tier) > self.offload_blocks:
            tier.popitem(last=False)

    def can_take(self, hits: list, num_new: int) -> bool:
        """Whether ``num_new`` fresh blocks fit after touching the cache hits ``hits``."""
        evictable = 0  # hits no request holds: they sit in the free queue, and touching them takes them out
        for b in hits:
            if self.ref[b] == 0:
                evictable += 1
        return num_new <= self.num_free - evictable

    def touch(self, blocks: list) -> None:
        for b in blocks:
            if self.ref[b] == 0:
                self._unlink(b)
            self.ref[b] += 1

    def take(self, n: int) -> list:
        """Allocate ``n`` blocks from the LRU front, evicting their cached content."""
        out = []
        for _ in range(n):
            b = self.nxt[self.num_blocks]  # the front
            if b == self.num_blocks:
                raise IndexError("take from an empty free queue")
            self._unlink(b)
            key = self.key_of[b]
            if key is not None:
                same = self.cached[key]
                if type(same) is dict:  # other blocks hold the key: the first of those left is hit now
                    del same[b]
                    if len(same) == 1:
                        self.cached[key] = next(iter(same))
                else:  # b was its only block
                    del self.cached[key]
                    if self.offload_blocks:  # its last GPU copy is evicted: the tier keeps the content
                        self._offload(key)
                self.key_of[b] = None
            self.ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks: list) -> None:
        """Drop one reference to each block, tail first (vLLM frees in reverse so the tail is evicted first):
        cached blocks are queued at the back, uncached ones at the front in that same order."""
        front = []
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key_of[b] is None:
                    front.append(b)
                else:
                    self._link_back(b)
        for b in reversed(front):
            self._link_front(b)

    def commit(self, block: int, key, version: int) -> None:
        """Give a computed full block its content key (a block already keyed, e.g. a cache hit, keeps it)."""
        if not self.prefix_caching or self.key_of[block] is not None:
            return
        same = self.cached.get(key)
        if same is None:
            self.cached[key] = block
        elif type(same) is dict:
            same[block] = None
        else:  # a second block holds the key: the first cached stays first
            self.cached[key] = {same: None, block: None}
        self.key_of[block] = key
        self.version_of[block] = version

    def reset(self) -> bool:
        """Forget every cached key; fails (returns False) while any block is referenced. With an external
        tier the cached blocks move there first (it outlives the reset: ``reset_tier``)."""
        if self.num_free != self.num_blocks:
            return False
        if self.offload_blocks:
            for key in self.cached:
                self._offload(key)
        for b in range(self.num_blocks):
            self.key_of[b] = None
        self.cached.clear()
        return True

    def reset_tier(self) -> bool:
        """Empty the external tier (vLLM's ``reset_connector``); always succeeds."""
        self.tier.clear()
        return True
