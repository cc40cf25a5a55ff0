# cython: language_level=3
"""Python's object arenas, mapped in bulk with their pages populated (Linux): for the bulk commands' short
processes that build millions of records (``tracesim.bulkmem``; built by setup.py on Linux only).

pymalloc takes memory for small objects in 1 MiB arenas, each its own mmap; every 4 KiB page of it then costs
a page fault when first written (~2.6 us each on the machine measured, 2.4 s of a 14 s ``tracesim replay``).
This allocator hands pymalloc arenas cut from larger mappings made with MAP_POPULATE, which the kernel fills
in one pass, and keeps the arenas pymalloc gives back for its next requests instead of unmapping them. Memory
a process freed is therefore not returned to the system before it exits: right for a command that ends when
its output is out, wrong for a long-lived process, which is why only ``tracesim``'s bulk commands install it.

Requests of any other size, arenas it did not make, and a failed mapping go to the allocator it replaced.
Called by pymalloc with the GIL held: no locking.
"""

from libc.stddef cimport size_t

cdef extern from "Python.h":
    ctypedef struct PyObjectArenaAllocator:
        void *ctx
        void* (*alloc)(void *ctx, size_t size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    void PyObject_GetArenaAllocator(PyObjectArenaAllocator *allocator)
    void PyObject_SetArenaAllocator(PyObjectArenaAllocator *allocator)

cdef extern from "sys/mman.h":
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void *addr, size_t length) nogil
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_POPULATE
    void *MAP_FAILED

cdef enum:
    FIRST_CHUNK_BYTES = 8 << 20  # the first mapping; each next one twice the last, up to
    MAX_CHUNK_BYTES = 128 << 20  # (a small command populates little it does not use)
    MAX_CHUNKS = 4096
    MAX_FREE_ARENAS = 1 << 16

cdef PyObjectArenaAllocator _replaced  # the allocator before install(): everything this one does not take
cdef size_t _arena_bytes = 0  # pymalloc's arena size, the first size asked for
cdef size_t _chunk_bytes = FIRST_CHUNK_BYTES
cdef char *_chunk_begin[MAX_CHUNKS]
cdef char *_chunk_end[MAX_CHUNKS]
cdef size_t _n_chunks = 0
cdef char *_next = NULL  # the uncut rest of the last chunk
cdef char *_end = NULL
cdef void *_free_arenas[MAX_FREE_ARENAS]
cdef size_t _n_free = 0
cdef bint _installed = False
cdef size_t _populated_bytes = 0


cdef bint _ours(void *ptr) noexcept nogil:
    cdef size_t i
    for i in range(_n_chunks):
        if _chunk_begin[i] <= <char*>ptr < _chunk_end[i]:
            return True
    return False


cdef void *_alloc(void *ctx, size_t size) noexcept nogil:
    global _arena_bytes, _chunk_bytes, _n_chunks, _next, _end, _n_free, _populated_bytes
    cdef void *p
    cdef char *arena
    if _arena_bytes == 0:
        _arena_bytes = size
    if size != _arena_bytes:
        return _replaced.alloc(_replaced.ctx, size)
    if _n_free:
        _n_free -= 1
        return _free_arenas[_n_free]
    if _next == NULL or _next + size > _end:
        if _n_chunks == MAX_CHUNKS:
            return _replaced.alloc(_replaced.ctx, size)
        p = mmap(NULL, _chunk_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        if p == MAP_FAILED:
            return _replaced.alloc(_replaced.ctx, size)
        _next, _end = <char*>p, <char*>p + _chunk_bytes
        _chunk_begin[_n_chunks], _chunk_end[_n_chunks] = _next, _end
        _n_chunks += 1
        _populated_bytes += _chunk_bytes
        if _chunk_bytes < MAX_CHUNK_BYTES:
            _chunk_bytes *= 2
    arena = _next
    _next += size
    return arena


cdef void _free(void *ctx, void *ptr, size_t size) noexcept nogil:
    global _n_free
    if size != _arena_bytes or not _ours(ptr):
        _replaced.free(_replaced.ctx, ptr, size)
    elif _n_free < MAX_FREE_ARENAS:
        _free_arenas[_n_free] = ptr  # populated already: the next arena asked for
        _n_free += 1
    else:
        munmap(ptr, size)  # a hole in its chunk, never handed out again


def install() -> bool:
    """Serve pymalloc's arenas from here from now on (once per process); True if it was installed now."""
    global _installed
    cdef PyObjectArenaAllocator mine
    if _installed:
        return False
    PyObject_GetArenaAllocator(&_replaced)
    mine.ctx = NULL
    mine.alloc = _alloc
    mine.free = _free
    PyObject_SetArenaAllocator(&mine)
    _installed = True
    return True


def populated_bytes() -> int:
    """Bytes mapped with their pages populated so far."""
    return _populated_bytes
