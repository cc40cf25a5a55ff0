# Compiled build of kvcache.py (setup.py): C-level types for the block pool. kvcache.py stays the source and
# runs as plain Python where the build is missing or stale (tracesim/sim/_compiled.py).
cimport cython


cdef class BlockPool:
    cdef public long long block_size
    cdef public bint prefix_caching
    cdef public long long num_blocks
    cdef public list ref
    cdef public list key_of
    cdef public list version_of
    cdef public dict cached
    # the free queue's links, read and written as C arrays (see kvcache.py)
    cdef long long[::1] nxt
    cdef long long[::1] prv
    cdef public long long num_free
    cdef public long long offload_blocks
    cdef public object tier
    cdef public long long tier_hits

    cpdef double usage(self)
    @cython.locals(b=cython.longlong, out=list)
    cpdef list free_order(self)
    @cython.locals(after=cython.longlong, before=cython.longlong)
    cdef inline void _unlink(self, long long b)
    @cython.locals(last=cython.longlong, end=cython.longlong)
    cdef inline void _link_back(self, long long b)
    @cython.locals(first=cython.longlong, end=cython.longlong)
    cdef inline void _link_front(self, long long b)
    cpdef list lookup(self, list keys)
    @cython.locals(n=Py_ssize_t, i=Py_ssize_t)
    cpdef long long lookup_tier(self, list keys, Py_ssize_t start)
    @cython.locals(i=Py_ssize_t)
    cpdef load_tier(self, list keys, Py_ssize_t start, Py_ssize_t n)
    cpdef _offload(self, object key)
    @cython.locals(b=Py_ssize_t, evictable=Py_ssize_t)
    cpdef bint can_take(self, list hits, long long num_new)
    @cython.locals(b=Py_ssize_t)
    cpdef touch(self, list blocks)
    @cython.locals(b=Py_ssize_t, out=list)
    cpdef list take(self, long long n)
    @cython.locals(b=Py_ssize_t, front=list)
    cpdef release(self, list blocks)
    cpdef commit(self, Py_ssize_t block, object key, long long version)
    cpdef bint reset(self)
    cpdef bint reset_tier(self)
