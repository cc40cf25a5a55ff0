"""A byte ring in shared memory from the engine process (one writer) to its converter process (one reader).

Why not only the pipe: on a busy machine a system call is where the kernel hands the engine's core to another
process (measured on the 2-core machine of benchmarks/README.md: a drain's pipe write cost 85-250 us of wall
time per step for ~2 us of CPU). Writing into shared memory is a copy and two loads and a store, no system call
and no wake-up; the converter polls the ring (``sidecar.main``). The pipe stays as the control channel: the init
message, and its end of stream, which the converter also sees when the engine dies, and which tells it to
take what is left in the ring and close the trace.

Layout: two 8-byte counters on their own cache lines, then ``size`` data bytes. ``written`` (offset 0) counts
the bytes the engine has put in, ever; ``taken`` (offset 64) the bytes the converter has copied out. The data of
byte ``i`` of the stream is at ``i % size``. The writer stores the data, then ``written``; the reader loads
``written``, then the data, then stores ``taken``. That order is all the synchronisation there is, which x86-64
guarantees for plain loads and stores (stores are not reordered with stores, nor loads with loads); elsewhere
the recorder keeps to the pipe (``supported``).
"""

from __future__ import annotations

import mmap
import os
import platform

RING_BYTES = 8 << 20  # ~8 s of 256-request steps at full speed here: what a converter may fall behind by
_HEAD = 128
_WRITTEN, _TAKEN = 0, 8  # indices of the two counters in the head, read as unsigned 64-bit ints


def supported() -> bool:
    """Whether the ring can be used here: x86-64 (its memory order) and Linux's ``memfd_create``."""
    return platform.machine().lower() in ("x86_64", "amd64") and hasattr(os, "memfd_create")


class Ring:
    """One end of the ring: ``create`` (the engine) makes it, ``Ring(fd, size)`` (the converter) maps it."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self._map = mmap.mmap(fd, _HEAD + size)
        view = memoryview(self._map)
        self._counters = view[:_HEAD].cast("Q")
        self._data = view[_HEAD:]

    @classmethod
    def create(cls, size: int = RING_BYTES) -> "Ring":
        """A new ring in anonymous shared memory (raises OSError where that cannot be made)."""
        fd = os.memfd_create("tracesim-ring")  # close-on-exec: only the converter gets it (Popen's pass_fds)
        try:
            os.ftruncate(fd, _HEAD + size)
            return cls(fd, size)
        except Exception:
            os.close(fd)
            raise

    @property
    def written(self) -> int:
        return self._counters[_WRITTEN]

    @property
    def taken(self) -> int:
        return self._counters[_TAKEN]

    def put(self, data) -> int:
        """Writer: append as much of ``data`` as there is room for; returns how many bytes (0: the ring is
        full). The rest is the caller's to put next, before anything else: the stream is one byte sequence."""
        counters = self._counters
        written = counters[_WRITTEN]
        n = min(len(data), self.size - (written - counters[_TAKEN]))
        if n <= 0:
            return 0
        start = written % self.size
        first = min(n, self.size - start)
        view = memoryview(data)
        self._data[start:start + first] = view[:first]
        if first < n:  # wraps around the end
            self._data[:n - first] = view[first:n]
        view.release()
        counters[_WRITTEN] = written + n  # after the data: the reader must not see the count before the bytes
        return n

    def take(self) -> bytes:
        """Reader: everything written since the last take (empty when nothing was)."""
        counters = self._counters
        taken = counters[_TAKEN]
        n = counters[_WRITTEN] - taken
        if not n:
            return b""
        start = taken % self.size
        first = min(n, self.size - start)
        data = bytes(self._data[start:start + first])
        if first < n:
            data += bytes(self._data[:n - first])
        counters[_TAKEN] = taken + n  # after the copy: the writer may reuse the space from now on
        return data

    def close(self) -> None:
        try:
            self._counters.release()
            self._data.release()
            self._map.close()
        except Exception:  # pragma: no cover - a view still exported somewhere: the mapping goes with the process
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
