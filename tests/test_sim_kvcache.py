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
    order = list(pool.free)
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
