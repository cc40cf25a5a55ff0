# cython: language_level=3
"""Python's object arenas, mapped in bulk with their pages populated (Linux): for the bulk commands' short
processes that build millions of records (``tracesim.bulkmem``; built by setup.py on Linux only).

pymalloc takes memory for small objects in 1 MiB arenas, each its own mmap; every 4 KiB page of it then costs
a page fault when first written (~2.6 us each on the machine measured, 2.4 s of a 14 s ``tracesim replay``).
This allocator hands pymalloc arenas cut from larger mappings made with MAP_POPULATE, which the kernel fills
in one pass, and keeps the arenas pymalloc gives back for its next requests instead of unmapping them. Memory
a process freed is therefore not returned to the system before it exits: right for a command that ends when
its output is out, wrong for a long-lived process, which is why only ``tracesim``'s bulk commands install it.

Populating is the kernel zeroing each page (and, on a VM, the host backing it): ~1.3 s per GB on the machine
measured, a quarter of a ``tracesim replay``'s wall time, on the one core the command runs on. With
``background=True`` a helper thread (plain C, no Python) maps and populates the next chunk while the command
works, so that cost moves to another core; the command waits only if it outruns the helper. One chunk (up to
128 MiB) is always made ahead, so up to that much more is resident than the command uses. The helper is
used by the process that installed the allocator only (a forked child maps its chunks itself).

Requests of any other size, arenas it did not make, and a failed mapping go to the allocator it replaced.
Called by pymalloc with the GIL held: the arena lists need no lock; the hand-over of a chunk between the
helper and the allocator takes one mutex, once per chunk.
"""

from libc.stddef cimport size_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.types cimport pid_t
from posix.unistd cimport getpid

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_detach(pthread_t thread)
    int pthread_mutex_init(pthread_mutex_t *mutex, const void *attr)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
    int pthread_cond_init(pthread_cond_t *cond, const void *attr)
    int pthread_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
    int pthread_cond_signal(pthread_cond_t *cond)

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
    int madvise(void *addr, size_t length, int advice) nogil
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_POPULATE
    void *MAP_FAILED

cdef extern from *:
    """
    #include <sys/mman.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23  /* Linux 5.14; older C headers lack the name */
    #endif
    """
    int MADV_POPULATE_WRITE

cdef enum:
    FIRST_CHUNK_BYTES = 8 << 20  # the first mapping; each next one twice the last, up to
    MAX_CHUNK_BYTES = 128 << 20  # (a small command populates little it does not use)
    MAX_CHUNKS = 4096
    MAX_FREE_ARENAS = 1 << 16
    SLICE_BYTES = 2 << 20  # what the helper populates per madvise call (_map_populated)

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

# The background populator (install(background=True)): the allocator asks for its next chunk (_wanted_bytes)
# as soon as it takes one; the helper maps it and leaves it in _ready. All four guarded by _lock.
cdef pthread_mutex_t _lock
cdef pthread_cond_t _wanted  # the helper waits here for a request
cdef pthread_cond_t _made  # the allocator waits here for the chunk in the making
cdef size_t _wanted_bytes = 0  # requested and not yet made; 0: none
cdef void *_ready = NULL  # made, not taken yet (NULL: none, or the mapping failed)
cdef size_t _ready_bytes = 0
cdef bint _background = False
cdef pid_t _owner = 0  # the process whose helper thread it is
cdef long long _waited_ns = 0  # time the allocator waited for the helper's chunk
cdef bint _slices_work = True  # MADV_POPULATE_WRITE works here (until it failed once)


cdef void *_map_populated(size_t size, bint sliced) noexcept nogil:
    """A new mapping of ``size`` bytes with its pages populated, or NULL.

    ``sliced`` (the helper thread): populated a slice at a time with MADV_POPULATE_WRITE. MAP_POPULATE holds
    the process's mmap lock (for reading) while it populates a whole chunk, ~0.35 s for 128 MiB on the VM
    measured, and every mremap / mmap / munmap of the command's thread (a list of millions of records growing)
    waits for the write lock meanwhile: 1.2 s of a 6.6 s replay went to that. Between slices the lock is free,
    so such a call waits one slice at most. Where the kernel lacks MADV_POPULATE_WRITE (before 5.14),
    MAP_POPULATE."""
    global _slices_work
    cdef void *p
    cdef size_t done = 0
    if sliced and _slices_work:
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            return NULL
        while done < size:
            if madvise(<char*>p + done, SLICE_BYTES if size - done > SLICE_BYTES else size - done,
                       MADV_POPULATE_WRITE) != 0:
                if done == 0:  # not supported here: MAP_POPULATE from now on
                    _slices_work = False
                    munmap(p, size)
                    break
                return p  # the rest is faulted in as it is used
            done += SLICE_BYTES
        else:
            return p
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
    return NULL if p == MAP_FAILED else p


cdef void *_populator(void *arg) noexcept nogil:
    """The helper thread: make each chunk asked for, for ever (the process ends it)."""
    global _wanted_bytes, _ready, _ready_bytes
    cdef size_t size
    cdef void *p
    while True:
        pthread_mutex_lock(&_lock)
        while _wanted_bytes == 0:
            pthread_cond_wait(&_wanted, &_lock)
        size = _wanted_bytes
        pthread_mutex_unlock(&_lock)
        p = _map_populated(size, True)
        pthread_mutex_lock(&_lock)
        _ready, _ready_bytes, _wanted_bytes = p, size, 0
        pthread_cond_signal(&_made)
        pthread_mutex_unlock(&_lock)


cdef void *_next_chunk(size_t *size) noexcept nogil:
    """A new populated chunk (its size in ``*size``), or NULL. From the helper where there is one (waiting for
    the chunk it is making), which is then asked for the one after; else mapped here."""
    global _wanted_bytes, _ready, _ready_bytes, _waited_ns
    cdef void *p = NULL
    cdef size_t next_bytes
    if not _background or getpid() != _owner:
        size[0] = _chunk_bytes
        return _map_populated(_chunk_bytes, False)
    pthread_mutex_lock(&_lock)
    if _wanted_bytes != 0:
        _waited_ns -= _now_ns()
        while _wanted_bytes != 0:
            pthread_cond_wait(&_made, &_lock)
        _waited_ns += _now_ns()
    p, size[0] = _ready, _ready_bytes
    _ready = NULL
    if p == NULL:  # none asked for yet (the first chunk), or the helper's mapping failed
        size[0] = _chunk_bytes
    next_bytes = size[0] * 2 if size[0] < MAX_CHUNK_BYTES else MAX_CHUNK_BYTES
    _wanted_bytes = next_bytes
    pthread_cond_signal(&_wanted)
    pthread_mutex_unlock(&_lock)
    return p if p != NULL else _map_populated(size[0], False)


cdef long long _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000LL + ts.tv_nsec


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
    cdef size_t got = 0
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
        p = _next_chunk(&got)
        if p == NULL:
            return _replaced.alloc(_replaced.ctx, size)
        _next, _end = <char*>p, <char*>p + got
        _chunk_begin[_n_chunks], _chunk_end[_n_chunks] = _next, _end
        _n_chunks += 1
        _populated_bytes += got
        _chunk_bytes = got * 2 if got < MAX_CHUNK_BYTES else MAX_CHUNK_BYTES
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


def install(bint background=False) -> bool:
    """Serve pymalloc's arenas from here from now on (once per process); True if it was installed now.
    ``background``: a helper thread populates the next chunk ahead (for a machine with a core to spare)."""
    global _installed, _background, _owner
    cdef PyObjectArenaAllocator mine
    cdef pthread_t helper
    if _installed:
        return False
    if background:
        pthread_mutex_init(&_lock, NULL)
        pthread_cond_init(&_wanted, NULL)
        pthread_cond_init(&_made, NULL)
        if pthread_create(&helper, NULL, _populator, NULL) == 0:
            pthread_detach(helper)
            _background, _owner = True, getpid()
    PyObject_GetArenaAllocator(&_replaced)
    mine.ctx = NULL
    mine.alloc = _alloc
    mine.free = _free
    PyObject_SetArenaAllocator(&mine)
    _installed = True
    return True


def in_background() -> bool:
    """Whether a helper thread populates the chunks (install(background=True) started one)."""
    return _background


def populated_bytes() -> int:
    """Bytes mapped with their pages populated so far."""
    return _populated_bytes


def waited_ns() -> int:
    """Nanoseconds the process waited for the helper thread's next chunk so far (0 without a helper)."""
    return _waited_ns
