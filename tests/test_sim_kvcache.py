"""The simulated KV block pool frees and evicts blocks in vLLM 0.32's order (block_pool.py), which exact
replay of recordings under KV pressure depends on."""

from __future__ import annotations

from tracesim.sim.kvcache import BlockPool


def test_freed_blocks_without_content_are_reused_first_and_cached_ones_last():
    pool = BlockPool(num_gpu_blocks=6, block_size=4, prefix_caching=True)  # 5 usable blocks
    blocks = pool.take(3)
    pool.commit(blocks[0], "k0", 0)
    pool.commit(blocks[1], "k1", 0)  # blocks[2] is the request's partial tail: no content key
    pool.release(blocks)
    order = pool.free_order()
    assert order[0] == blocks[2]  # uncached: to the front, reused first
    assert order[-2:] == [blocks[1], blocks[0]]  # cached: to the back, tail first (evicted first)
    assert pool.take(1) == [blocks[2]]


def test_identical_blocks_stay_hittable_after_one_of_them_is_evicted():
    pool = BlockPool(num_gpu_blocks=4, block_size=4, prefix_caching=True)  # 3 usable blocks
    a, b = pool.take(1)[0], pool.take(1)[0]
    pool.commit(a, "same", 0)
    pool.commit(b, "same", 0)  # vLLM does not de-duplicate: both are cached under the key
    assert pool.lookup(["same"]) == [a]  # the first one cached is hit
    pool.release([a])
    pool.release([b])
    evicted = pool.take(2)  # the third (never used) block, then a
    assert a in evicted and b not in evicted
    assert pool.lookup(["same"]) == [b]


class _ReferencePool:
    """The pool as it was written before its free queue became a linked list and single-block keys plain ids:
    an OrderedDict as the free queue, a dict of block ids per key. The model below must do what this does."""

    def __init__(self, num_gpu_blocks, prefix_caching=True):
        from collections import OrderedDict
        self.num_blocks = num_gpu_blocks - 1
        self.ref, self.key_of = [0] * self.num_blocks, [None] * self.num_blocks
        self.cached, self.prefix_caching = {}, prefix_caching
        self.free = OrderedDict.fromkeys(range(self.num_blocks))

    def lookup(self, keys):
        hits = []
        for key in keys if self.prefix_caching else ():
            blocks = self.cached.get(key)
            if not blocks:
                break
            hits.append(next(iter(blocks)))
        return hits

    def touch(self, blocks):
        for b in blocks:
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1

    def take(self, n):
        out = []
        for _ in range(n):
            b = self.free.popitem(last=False)[0]
            key = self.key_of[b]
            if key is not None:
                del self.cached[key][b]
                if not self.cached[key]:
                    del self.cached[key]
                self.key_of[b] = None
            self.ref[b] = 1
            out.append(b)
        return out

    def release(self, blocks):
        front = []
        for b in reversed(blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                if self.key_of[b] is None:
                    front.append(b)
                else:
                    self.free[b] = None
        for b in reversed(front):
            self.free[b] = None
            self.free.move_to_end(b, last=False)

    def commit(self, block, key):
        if self.prefix_caching and self.key_of[block] is None:
            self.cached.setdefault(key, {})[block] = None
            self.key_of[block] = key


def test_pool_matches_the_ordered_dict_reference_over_random_operations():
    """Allocation, eviction, hits and usage agree step for step with the reference over thousands of random
    operations on a small pool (so that keys are shared by several blocks, evicted and re-cached)."""
    import random
    for seed in range(20):
        rng = random.Random(seed)
        pool, ref = BlockPool(num_gpu_blocks=17, block_size=4, prefix_caching=True), _ReferencePool(17)
        held: list = []  # block lists of live "requests"
        for _ in range(400):
            op = rng.random()
            if op < 0.45 and pool.num_free:
                keys = [f"k{rng.randrange(6)}" for _ in range(rng.randrange(4))]
                hits = pool.lookup(keys)
                assert hits == ref.lookup(keys)
                n = rng.randrange(1, 4)
                if pool.can_take(hits, n):
                    pool.touch(hits)
                    ref.touch(hits)
                    blocks = hits + pool.take(n)
                    assert blocks == hits + ref.take(n)
                    for b in blocks[len(hits):]:
                        if rng.random() < 0.7:
                            key = f"k{rng.randrange(6)}"
                            pool.commit(b, key, 0)
                            ref.commit(b, key)
                    held.append(blocks)
            elif held:
                blocks = held.pop(rng.randrange(len(held)))
                pool.release(blocks)
                ref.release(blocks)
            assert pool.free_order() == list(ref.free)
            assert pool.num_free == len(ref.free)
            assert pool.usage() == 1.0 - len(ref.free) / ref.num_blocks
            assert pool.lookup([f"k{i}" for i in range(6)])[:1] == ref.lookup([f"k{i}" for i in range(6)])[:1]
        assert pool.num_free < pool.num_blocks or not held
