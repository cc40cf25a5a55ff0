"""Where runs execute: in this process, in local worker processes, or on a Ray cluster.

Every executor takes ``RunSpec`` tasks and hands back ``(task number, result)`` pairs as they finish; the
search puts them back in run order itself, so what it finds does not depend on which worker finished first
or on how many there are. Tasks carry run inputs (a path to the base, the seed, the perturbations), never
traces: each worker loads a base once (``runner._load``).
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tracesim.explore.runner import run_one


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class InlineExecutor:
    """Runs each task in this process when asked for its result (``--workers 1``)."""

    def __init__(self):
        self._todo: list = []

    def submit(self, n: int, spec) -> None:
        self._todo.append((n, spec))

    def pending(self) -> int:
        return len(self._todo)

    def next_done(self) -> list:
        n, spec = self._todo.pop(0)
        return [(n, run_one(spec))]

    def close(self) -> None:
        self._todo.clear()


def _init_worker() -> None:
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)  # the stale-build notice: said once by the parent already


class ProcessExecutor:
    """Local worker processes (spawned: no state of the parent leaks into a run)."""

    def __init__(self, workers: int):
        import multiprocessing as mp

        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                        initializer=_init_worker)
        self.futures: dict = {}

    def submit(self, n: int, spec) -> None:
        self.futures[self.pool.submit(run_one, spec)] = n

    def pending(self) -> int:
        return len(self.futures)

    def next_done(self) -> list:
        done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
        return [(self.futures.pop(f), f.result()) for f in done]

    def close(self) -> None:
        for f in self.futures:
            f.cancel()
        self.futures.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Tasks on a Ray cluster (the ``[ray]`` extra). Results are gathered as they finish with ``ray.wait``.

    ``address``: ``"local"`` (or None) starts a private local cluster of ``workers`` CPUs (all the cores when
    None); ``"auto"`` or an address connects to a running one (``workers`` is then the cluster's business). If
    this process is already connected (``ray.init`` called by the caller, as the tests do), that connection is
    used whatever ``address`` says, and left as it was. Otherwise ``close()`` undoes what this executor did
    (shuts its local cluster down, or disconnects), so the next search in the same process starts afresh.

    Workers import ``tracesim`` as the driver does: a local cluster's workers run this Python with the driver's
    working directory on their path. On a remote cluster every node needs tracesim installed and the base file
    at the same path (tasks carry paths, not traces). Ray's own log lines go to its session logs; only its
    errors reach stderr (a local cluster; warnings too when connecting to one).
    """

    def __init__(self, address: str | None, workers: int | None = None):
        from tracesim.inputs import InputError

        try:
            import ray
        except ImportError:
            raise InputError("--ray needs Ray installed: pip install 'tracesim[ray]'") from None
        self.ray = ray
        self.refs: dict = {}
        self._owner = False  # whether close() shuts Ray down: only when this executor called ray.init
        if not ray.is_initialized():
            self._init(address, workers, InputError)
            self._owner = True
        try:
            self._remote = ray.remote(run_one)
        except BaseException:
            self.close()
            raise

    def _init(self, address: str | None, workers: int | None, input_error) -> None:
        import logging

        ray = self.ray
        common = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        if address in (None, "", "local"):
            # address="local": a new cluster even where RAY_ADDRESS names another one
            ray.init(address="local", num_cpus=workers, logging_level=logging.ERROR, **common)
            return
        _check_reachable(address, input_error)
        try:
            ray.init(address=address, logging_level=logging.WARNING, **common)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            # "auto" with no cluster: ConnectionError at once; a cluster that refuses us (token authentication
            # on its side, not on ours): RuntimeError("Failed to connect to Ray cluster ...") after ~20 s
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ("" if address == "auto" or os.environ.get("RAY_AUTH_MODE") else
                    " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token: see "
                    "https://docs.ray.io/en/latest/ray-security/token-auth.html)")
            raise input_error(f"--ray {address}: cannot connect to a Ray cluster: {first}{hint}") from None

    def submit(self, n: int, spec) -> None:
        self.refs[self._remote.remote(spec)] = n

    def pending(self) -> int:
        return len(self.refs)

    def next_done(self) -> list:
        done, _ = self.ray.wait(list(self.refs), num_returns=1)
        out = []
        for ref in done:
            n = self.refs.pop(ref)
            try:
                out.append((n, self.ray.get(ref)))
            except self.ray.exceptions.RayTaskError as exc:
                # the run's own exception, as the other executors raise it (not Ray's wrapper around it)
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from exc
                raise
        return out

    def close(self) -> None:
        ray, refs = self.ray, list(self.refs)
        self.refs.clear()
        if ray.is_initialized():
            for ref in refs:  # runs still queued or running (an interrupt, an error): not wanted any more
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone: nothing to cancel
                    pass
            if refs and not self._owner:  # a cluster we leave running: let the cancellations land first
                try:
                    ray.wait(refs, num_returns=len(refs), timeout=10)
                except Exception:
                    pass
        if self._owner:
            self._owner = False
            ray.shutdown()


def _check_reachable(address: str, input_error, timeout: float = 5.0) -> None:
    """Fail at once where nothing listens at ``host:port`` (or ``ray://host:port``): Ray itself retries for many
    minutes before it gives up on such an address. Addresses without a port ("auto") are left to Ray."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise input_error(f"--ray {address}: no Ray cluster answers there ({exc})") from None


def make_executor(workers: int | None = None, ray: str | None = None):
    if ray is not None:
        return RayExecutor(ray, workers)
    workers = workers or default_workers()
    return InlineExecutor() if workers <= 1 else ProcessExecutor(workers)


def map_ordered(executor, specs, width: int | None = None):
    """Yield ``run_one(spec)`` for each spec, in order, keeping at most ``width`` tasks in flight."""
    specs = list(specs)
    width = width or max(2, len(specs))
    results, next_submit, next_yield = {}, 0, 0
    while next_yield < len(specs):
        while next_submit < len(specs) and executor.pending() < width:
            executor.submit(next_submit, specs[next_submit])
            next_submit += 1
        while next_yield not in results:
            for n, out in executor.next_done():
                results[n] = out
        yield results.pop(next_yield)
        next_yield += 1
