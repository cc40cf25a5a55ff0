"""KV blocks and the prefix cache, after vLLM V1's ``BlockPool`` / ``KVCacheManager``.

A block holds ``block_size`` tokens. A full block gets a content key once computed: ``(prompt_key, i)`` when
every token in it is a prompt token (shared by the samples of one group), ``(req_id, i)`` otherwise (its
output tokens belong to one request). Unreferenced blocks sit in a free queue in LRU order (a dict used as an
ordered set, so the order is deterministic); a cached free block can be hit again until it is evicted by an
allocation. One block is reserved (vLLM's null block), so ``num_gpu_blocks - 1`` are usable.

Each cached block remembers the weight version that computed it: ``stale_hits`` counts hits on KV written
by older weights (what a cache clear at a weight update prevents).
"""

from __future__ import annotations


class BlockPool:
    def __init__(self, num_gpu_blocks: int, block_size: int, prefix_caching: bool):
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.num_blocks = num_gpu_blocks - 1
        self.ref = [0] * self.num_blocks
        self.key_of: list = [None] * self.num_blocks
        self.version_of = [0] * self.num_blocks
        self.cached: dict = {}  # content key -> block id
        self.free: dict = dict.fromkeys(range(self.num_blocks))  # LRU order, front evicted first

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks

    def lookup(self, keys: list) -> list:
        """Block ids of the longest cached prefix of ``keys`` (content keys of full blocks)."""
        hits = []
        if not self.prefix_caching:
            return hits
        for key in keys:
            block = self.cached.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def can_take(self, hits: list, num_new: int) -> bool:
        """Whether ``num_new`` fresh blocks fit after touching the cache hits ``hits``."""
        evictable_hits = sum(1 for b in hits if self.ref[b] == 0)
        return num_new <= len(self.free) - evictable_hits

    def touch(self, blocks: list) -> None:
        for b in blocks:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1

    def take(self, n: int) -> list:
        """Allocate ``n`` blocks from the LRU front, evicting their cached content."""
        out = []
        for _ in range(n):
            b = next(iter(self.free))
            del self.free[b]
            key = self.key_of[b]
            if key is not None:
                if self.cached.get(key) == b:
                    del self.cached[key]
                self.key_of[b] = None
            self.ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks: list) -> None:
        """Drop one reference to each block; tail blocks are queued first so they are evicted first."""
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None

    def commit(self, block: int, key, version: int) -> None:
        """Give a computed full block its content key (first writer wins, as in vLLM)."""
        if not self.prefix_caching or self.key_of[block] is not None:
            return
        if key in self.cached:
            return
        self.cached[key] = block
        self.key_of[block] = key
        self.version_of[block] = version

    def reset(self) -> bool:
        """Forget every cached key; fails (returns False) while any block is referenced."""
        if len(self.free) != self.num_blocks:
            return False
        for b in range(self.num_blocks):
            self.key_of[b] = None
        self.cached.clear()
        return True
