"""Convert and write an engine's records in a separate process, off the engine's interpreter lock.

In a busy engine core every microsecond of Python the recorder runs is taken from the scheduler, even on
a background thread, because both hold the same GIL. So the engine side does only what needs the engine's
objects: its thread reduces each queued item to plain values (``capture.plain``) and packs them with msgpack
(C code; with the compact reduction, the hooks do both, ``reduce.py``). Those bytes go to a converter process
(``python -m tracesim.record.sidecar``) that maps ids, splits prefill from decode, builds the records and writes
the trace on a core of its own.

``ProcessSink`` is the engine side; ``main`` the converter. The stream is msgpack: first
``["init", path, header, options, flush_interval_s, proc]`` on the pipe, then plain items (``items.py``: each an
array ``[kind, field, ...]``, named again by ``items.from_wire``) through the shared-memory ring (``ring.py``) or,
where there is none, the pipe. The engine side sends what is queued every ``DRAIN_INTERVAL_S``; the converter
writes the trace with the configured flush interval (and when the stream has been quiet that long) and closes
it (fsync) at the pipe's end of stream, which is also what it sees when the engine dies: a killed engine loses
only what its thread had not sent yet, at most ``DRAIN_INTERVAL_S`` of events. The
converter runs in its own session, so a Ctrl-C meant for the engine does not cut it short while it drains.

If the converter cannot be started, ``ProcessSink`` converts on its own thread like ``RecordSink``; if it
dies, the engine side warns once and counts what it could not send. The engine never waits on it except at
close, for at most ``CLOSE_TIMEOUT_S``.

Why the engine neither writes to the pipe nor wakes the converter per drain (issue 16): on a busy machine a
system call is where the kernel hands the engine's core to another process, and a write into a pipe that its
reader is blocked on also wakes the reader, often onto the writer's core: the engine lost 85-250 us per step
inside ``os.write``, which itself costs ~2 us of CPU. So after the init message the data goes through a ring in
shared memory (``ring.py``; the pipe, non-blocking, where the ring is not supported), and the converter does
not wait on anything while the engine is busy: it sleeps ``POLL_S`` and then takes whatever came (``main``); it
blocks on the pipe only after ``QUIET_S`` of empty polls (an idle engine, which a wake-up costs nothing). The
pipe's end of stream still ends the trace. What the ring cannot take goes to an in-process backlog
(``ProcessSink.backlog_bytes``), sent first at the next drain; past ``MAX_BACKLOG_BYTES`` whole sends are
dropped and counted (a ``RecorderLost``), never the engine blocked. The converter also runs at a lower CPU
priority (``nice``, ``TRACESIM_RECORD_CONVERTER_NICE``): when the cores are contended it yields to the engine
and catches up when they are free; the ring and the backlog bound what that can cost.
"""

from __future__ import annotations

import collections
import os
import select
import subprocess
import sys
import time

import msgpack
import msgspec

from tracesim.record.config import DEFAULT_CONVERTER_NICE as DEFAULT_NICE
from tracesim.record import ring
from tracesim.record.items import PlainLost
from tracesim.record.sink import _HOLD_GIL_S, MAX_PENDING, RecordSink, log

CLOSE_TIMEOUT_S = 60.0
# How the engine side packs items for the pipe: msgspec (default; encodes lists of ints and strings ~3-6x
# faster than msgpack's Packer here, into one buffer per send) or msgpack (the path before issue 16).
ENCODERS = ("msgspec", "msgpack")
_SEND_BYTES = 256 << 10  # packed bytes buffered on the engine side before a pipe write
_PIPE_BYTES = 1 << 20  # pipe capacity asked for (Linux), so a busy converter rarely blocks the sender
_F_SETPIPE_SZ = 1031
# The engine-side thread hands items to the converter this often (the converter flushes the file on the
# configured interval): vLLM's per-step objects are released sooner and the thread holds the GIL in short
# bursts (a few steps' worth) instead of one burst per flush window.
DRAIN_INTERVAL_S = 0.05
# The converter reads the pipe this often while the engine is busy (sleeping in between, never waiting on the
# pipe: see the module's docstring), and after this long without data waits on the pipe instead.
POLL_S = 0.05
QUIET_S = 0.5
# Bytes the engine side holds when the pipe is full (a converter behind: slowed by its priority on a busy
# machine, or stalled); beyond it, sends are dropped and counted. ~1 MB per second of 256-request steps here.
MAX_BACKLOG_BYTES = 256 << 20


def _package_root() -> str:
    import tracesim

    return os.path.dirname(os.path.dirname(os.path.abspath(tracesim.__file__)))


class ProcessSink(RecordSink):
    """A ``RecordSink`` whose items are converted and written by a converter process.

    ``prepare(item) -> plain item`` runs on the engine-side thread; ``options`` (``raw_ids``) configure the
    converter; ``convert`` is the in-process fallback (``prepare`` then conversion) used when no converter
    process can be started.
    """

    def __init__(self, path, header, *, prepare, convert, options: dict | None = None,
                 flush_interval_s: float = 0.5, proc: int = 0, max_pending: int = MAX_PENDING,
                 on_lost=None, encoder: str = "msgspec", nice: int = DEFAULT_NICE,
                 max_backlog_bytes: int = MAX_BACKLOG_BYTES, ring_bytes: int | None = ring.RING_BYTES):
        self._prepare = prepare
        self._ring_bytes = ring_bytes  # None: data goes down the pipe (as where the ring is not supported)
        self._ring = None
        self._in_ring: collections.deque = collections.deque()  # [end offset in the stream, items], not yet taken
        self._nice = max(0, int(nice))
        self._max_backlog_bytes = max_backlog_bytes
        self._backlog: collections.deque = collections.deque()  # [memoryview of unsent bytes, items in it]
        self.backlog_bytes = 0  # bytes waiting for room in the ring (or pipe)
        self.peak_backlog_bytes = 0  # the most it held: how far the converter fell behind
        self._encoder = encoder if encoder in ENCODERS else "msgspec"
        self._options = dict(options or {})
        self._child = None
        self._fd = None
        self._sent_lost = 0
        self._encode = msgspec.msgpack.Encoder().encode  # put_encoded's, on the engine thread
        super().__init__(path, header, convert=convert, flush_interval_s=flush_interval_s, proc=proc,
                         max_pending=max_pending, on_lost=on_lost)
        if self._child is not None:
            self._drain_interval_s = min(flush_interval_s, DRAIN_INTERVAL_S)

    def put_encoded(self, item) -> None:
        """``put`` for a plain item (``items.py``), encoded here, on the caller's thread: encoding a step's
        lists right after the hook built them costs ~3 us, against 10-25 us for the drain, which finds them out
        of the CPU's cache up to 50 ms later. Never raises; an item that cannot be encoded is counted as lost."""
        if self._fd is None or self._encoder != "msgspec":  # converting in-process (or the legacy path)
            return self.put(item)
        try:
            data = self._encode(item)
        except Exception as exc:
            return self._lost_one(exc)
        self.put(data)

    @property
    def converter_pid(self) -> int | None:
        """Pid of the converter process (None: converting in-process)."""
        return self._child.pid if self._child is not None else None

    def _open(self) -> None:
        # The engine creates the file itself, so an unwritable path is reported here, at once, as in-process.
        with open(self.path, "wb"):
            pass
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        args, fds = [], ()
        if self._ring_bytes and ring.supported():
            try:
                self._ring = ring.Ring.create(self._ring_bytes)
                args, fds = ["--ring", str(self._ring.fd), str(self._ring.size)], (self._ring.fd,)
            except OSError as exc:  # no shared memory here: the pipe carries the data
                log.info("tracesim recorder: no shared-memory ring (%s); sending through the pipe", exc)
                self._ring = None
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "tracesim.record.sidecar", *args], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, env=env, start_new_session=True, pass_fds=fds)
        except Exception as exc:  # no interpreter to run, no fork allowed, ...: convert in this process
            log.warning("tracesim recorder: no converter process (%s); converting on a thread instead", exc)
            self._child = None
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            return super()._open()
        self._fd = self._child.stdin.fileno()
        try:
            import fcntl

            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        except Exception:  # not Linux, or above the system's limit: the default capacity works, just slower
            pass
        os.set_blocking(self._fd, False)  # a full pipe goes to the backlog: the engine never waits on it
        if self._nice:
            try:  # from here, not in the child: in effect before the converter runs any code
                os.setpriority(os.PRIO_PROCESS, self._child.pid,
                               min(19, os.getpriority(os.PRIO_PROCESS, 0) + self._nice))
            except (OSError, AttributeError):  # not permitted, or no such call here: same priority, still works
                pass
        init = msgpack.packb(("init", self.path, self.header, self._options, self._interval_s, self.proc),
                             use_bin_type=True)
        if self._ring is None:
            self._send(init)
        else:  # the pipe carries only this and its end; the data goes through the ring
            self._write_pipe_all(init, CLOSE_TIMEOUT_S)

    def _process(self, batch: list) -> None:
        if self._child is None:
            if self._writer is None:  # the file could not be created: count, never raise
                self.dropped += len(batch)
                return
            return super()._process(batch)
        if self._fd is None:  # the converter is gone
            self.dropped += len(batch)
            return
        if self._encoder == "msgpack":
            return self._process_msgpack(batch)
        # One buffer per send: msgspec appends each item's msgpack to it (C, no bytes object per item).
        encode_into = msgspec.msgpack.Encoder().encode_into
        prepare = self._prepare
        buffer, count = bytearray(), 0
        yield_at_s = time.perf_counter() + _HOLD_GIL_S
        for item in batch:
            if type(item) is bytes:  # encoded by put_encoded: one whole item
                buffer += item
                count += 1
                if len(buffer) >= _SEND_BYTES:
                    self._send_items(buffer, count)
                    buffer, count = bytearray(), 0
                continue
            size = len(buffer)
            try:
                encode_into(prepare(item), buffer, -1)
            except Exception as exc:
                del buffer[size:]  # a partly encoded item must not reach the pipe
                self._lost_one(exc)
                continue
            count += 1
            if len(buffer) >= _SEND_BYTES:
                self._send_items(buffer, count)
                buffer, count = bytearray(), 0
            if time.perf_counter() >= yield_at_s:
                time.sleep(0)  # hand the GIL back (see sink._HOLD_GIL_S)
                yield_at_s = time.perf_counter() + _HOLD_GIL_S
        if count:
            self._send_items(buffer, count)
        self._send_lost(msgspec.msgpack.encode)

    def _process_msgpack(self, batch: list) -> None:
        """The previous path (``TRACESIM_RECORD_REDUCE=legacy``): msgpack's Packer, one bytes object per item."""
        pack = msgpack.Packer(use_bin_type=True).pack
        prepare = self._prepare
        chunks, size = [], 0
        yield_at_s = time.perf_counter() + _HOLD_GIL_S
        for item in batch:
            try:
                data = pack(prepare(item))
            except Exception as exc:
                self._lost_one(exc)
                continue
            chunks.append(data)
            size += len(data)
            if size >= _SEND_BYTES:
                self._send_items(b"".join(chunks), len(chunks))
                chunks, size = [], 0
            if time.perf_counter() >= yield_at_s:
                time.sleep(0)  # hand the GIL back (see sink._HOLD_GIL_S)
                yield_at_s = time.perf_counter() + _HOLD_GIL_S
        if chunks:
            self._send_items(b"".join(chunks), len(chunks))
        self._send_lost(pack)

    def _lost_one(self, exc: Exception) -> None:
        """An item that could not be reduced or encoded: counted (and ``on_lost`` told)."""
        self.dropped += 1
        self._on_lost()
        self._warn(f"could not convert a recorded event ({type(exc).__name__}: {exc})")

    def _send_lost(self, pack) -> None:
        # The converter writes a RecorderLost. Not while sends wait in the backlog: the count grows until the
        # converter has caught up and then goes as one record (and at close, after the backlog).
        if self.dropped > self._sent_lost and self._fd is not None and not self._backlog:
            dropped = self.dropped
            if self._send(pack(PlainLost(PlainLost.KIND, time.monotonic_ns(), dropped - self._sent_lost))):
                self._sent_lost = dropped  # else: a full backlog; the count goes with a later send

    def _send_items(self, data, count: int) -> bool:
        if self._fd is not None and self._send(data, count):
            self.written += count
            return True
        self.dropped += count
        self._on_lost()
        return False

    def _send(self, data, count: int = 0) -> bool:
        """Hand ``data`` (``count`` items, whole) to the ring or the pipe without blocking: what they cannot
        take now waits in the backlog, behind what waits there already. False if it was not sent: the converter
        is gone, or the backlog is full (then nothing of ``data`` went out: the stream stays whole items)."""
        try:
            if self._backlog:
                self._write_backlog()
            if self._backlog:  # still no room: queue behind it, if the bound allows
                if self.backlog_bytes + len(data) > self._max_backlog_bytes:
                    return False
                self._keep(memoryview(bytes(data)), count)
                return True
            view = memoryview(data)
            sent = self._write_some(view)
            if sent < len(view):  # the rest must follow before anything else: it may be part of an item
                self._keep(memoryview(bytes(view[sent:])), count)
            else:
                self._sent_whole(count)
            view.release()
            return True
        except OSError as exc:
            return self._converter_gone(exc)

    def _write_some(self, view) -> int:
        """Bytes of ``view`` the ring (no system call: ``ring.py``) or the pipe takes now, maybe none; raises
        OSError when the converter is gone (with the ring, asked only when it is full: that costs a call)."""
        ring_ = self._ring
        if ring_ is None:
            try:
                return os.write(self._fd, view)
            except BlockingIOError:
                return 0
        sent = ring_.put(view)
        if not sent and self._child.poll() is not None:
            raise OSError(f"exit status {self._child.returncode}")
        return sent

    def _sent_whole(self, count: int) -> None:
        """The last byte of ``count`` items went out. With the ring, they count as delivered only once the
        converter took them (``_converter_gone``): keep where they end, forget what was taken."""
        ring_ = self._ring
        if ring_ is not None:
            in_ring = self._in_ring
            taken = ring_.taken
            while in_ring and in_ring[0][0] <= taken:
                in_ring.popleft()
            if count:
                in_ring.append((ring_.written, count))

    def _write_pipe_all(self, data, timeout_s: float) -> bool:
        """Write all of ``data`` to the pipe, waiting for room at most ``timeout_s`` (the init message, which
        an empty pipe takes at once); False if the converter is gone."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        try:
            while view:
                try:
                    view = view[os.write(self._fd, view):]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no room in the pipe for {timeout_s:.0f} s") from None
                    select.select([], [self._fd], [], 0.1)
            return True
        except OSError as exc:
            return self._converter_gone(exc)

    def _keep(self, view, count: int) -> None:
        self._backlog.append([view, count])
        self.backlog_bytes += len(view)
        if self.backlog_bytes > self.peak_backlog_bytes:
            self.peak_backlog_bytes = self.backlog_bytes

    def _write_backlog(self) -> None:
        """Write as much of the backlog as the ring or pipe takes now (raises OSError: the converter is gone)."""
        backlog = self._backlog
        while backlog:
            entry = backlog[0]
            sent = self._write_some(entry[0])
            self.backlog_bytes -= sent
            if sent < len(entry[0]):
                entry[0] = entry[0][sent:]
                return
            backlog.popleft()
            self._sent_whole(entry[1])

    def _converter_gone(self, exc: OSError) -> bool:
        self._fd = None
        lost = sum(count for _view, count in self._backlog)  # counted as written when they were queued
        if self._ring is not None:  # and what the converter never took out of the ring
            taken = self._ring.taken
            lost += sum(count for end, count in self._in_ring if end > taken)
            self._in_ring.clear()
        self.written -= lost
        self.dropped += lost
        self._backlog.clear()
        self.backlog_bytes = 0
        self._warn(f"the trace converter process stopped ({exc}); cannot write trace file {self.path}")
        return False

    def _flush_backlog(self, timeout_s: float) -> None:
        """At close: wait (at most ``timeout_s``) until the backlog is in the ring or the pipe."""
        deadline = time.monotonic() + timeout_s
        while self._backlog and self._fd is not None:
            try:
                self._write_backlog()
                if not self._backlog:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no room for {timeout_s:.0f} s")
            except OSError as exc:
                self._converter_gone(exc)
                return
            if self._ring is not None:
                time.sleep(0.01)
            else:
                select.select([], [self._fd], [], max(0.0, deadline - time.monotonic()))

    def _finish(self) -> None:
        if self._child is None:
            return super()._finish()
        self._flush_backlog(CLOSE_TIMEOUT_S)
        self._send_lost(msgspec.msgpack.encode if self._encoder == "msgspec" else msgpack.packb)
        self._flush_backlog(CLOSE_TIMEOUT_S)
        if self._ring is not None and self._fd is not None and self._child.poll() is not None:
            # A converter that died with room left in the ring: what it never took is lost, and said so.
            self._converter_gone(OSError(f"exit status {self._child.returncode}"))
        if self.peak_backlog_bytes:
            log.info("tracesim recorder: the converter fell behind by up to %d bytes (limit %d)",
                     self.peak_backlog_bytes, self._max_backlog_bytes)
        try:
            self._child.stdin.close()  # end of stream: the converter writes what it has and closes the trace
        except OSError:
            pass
        try:
            code = self._child.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("tracesim recorder: the converter is still writing %s; it finishes in the background",
                        self.path)
            return
        if self._ring is not None:
            self._ring.close()
        if code != 0:
            self._warn(f"the trace converter process exited with status {code}; {self.path} may be incomplete")


# --- the converter process --------------------------------------------------------------------------------


def main(argv=None) -> int:
    """Read the stream (stdin, and the shared-memory ring given as ``--ring FD SIZE``), write the trace; exit 0
    at the pipe's end of stream, 1 if the trace could not be written."""
    import warnings

    from tracesim.format.codec import build_header
    from tracesim.format.records import RecorderLost
    from tracesim.format.writer import TraceWriter
    from tracesim.record.convert import Converter
    from tracesim.record.items import from_wire

    argv = sys.argv[1:] if argv is None else argv
    ring_ = ring.Ring(int(argv[1]), int(argv[2])) if argv[:1] == ["--ring"] else None
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    unpacker = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False, max_buffer_size=1 << 30)
    state = {"writer": None, "converter": None, "proc": 0, "flush_s": 0.5, "dropped": 0}

    def handle_items() -> None:
        for item in unpacker:
            if state["writer"] is None:
                _kind, path, header, options, state["flush_s"], state["proc"] = item
                state["writer"] = TraceWriter(path, build_header(header), flush_interval_s=state["flush_s"])
                state["converter"] = Converter(raw_ids=bool(options.get("raw_ids")))
                continue
            try:
                records = list(state["converter"].convert(from_wire(item)))
            except Exception as exc:
                state["dropped"] += 1
                if state["dropped"] == 1:
                    warnings.warn(f"tracesim recorder: could not convert a recorded event "
                                  f"({type(exc).__name__}: {exc}); dropped records are counted", RuntimeWarning)
                continue
            proc = state["proc"]
            state["writer"].extend(records, [proc] * len(records) if proc else None)

    eof = False
    empty_polls = 0
    while not eof:
        # While data comes, sleep between reads: a reader blocked on the pipe would be woken by every write,
        # at the engine's expense (module docstring). Once the stream has been quiet, wait on the pipe (with
        # the ring, at most the flush interval: its writes wake nobody). Quiet is counted in empty polls, not in
        # time: a converter starved of CPU (its niceness, a busy machine) takes long over each batch, which
        # must not make it block on the pipe while the engine is busy.
        if empty_polls * POLL_S < QUIET_S:
            time.sleep(POLL_S)
        else:
            if state["writer"] is not None:  # quiet stream: put what was converted on disk
                state["writer"].flush()
            select.select([fd], [], [], state["flush_s"])
        got = False
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not data:  # the engine closed the stream (or died): what it put in the ring is all there is
                eof = True
                break
            got = True
            unpacker.feed(data)
        handle_items()  # the init message first: the ring's items need its converter
        if ring_ is not None and state["writer"] is not None:
            data = ring_.take()
            if data:
                got = True
                unpacker.feed(data)
                handle_items()
        empty_polls = 0 if got else empty_polls + 1
    writer = state["writer"]
    if writer is not None:
        if state["dropped"]:
            writer.append(RecorderLost(time.monotonic_ns(), state["dropped"], "dropped"), state["proc"])
        writer.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one line on the engine's stderr, never a traceback
        print(f"tracesim recorder: the trace converter failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
