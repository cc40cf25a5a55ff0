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
    """Tasks on a Ray cluster (``--ray auto`` or an address; the ``[ray]`` extra). Results are gathered as they
    finish with ``ray.wait``. A local ``ray.init(num_cpus=N)`` is what the tests use."""

    def __init__(self, address: str | None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            from tracesim.inputs import InputError

            raise InputError("--ray needs Ray installed: pip install 'tracesim[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            if address in (None, "local"):
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self._remote = ray.remote(run_one)
        self.refs: dict = {}

    def submit(self, n: int, spec) -> None:
        self.refs[self._remote.remote(spec)] = n

    def pending(self) -> int:
        return len(self.refs)

    def next_done(self) -> list:
        done, _ = self.ray.wait(list(self.refs), num_returns=1)
        return [(self.refs.pop(ref), self.ray.get(ref)) for ref in done]

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()


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
