"""Client-side recording for RL loops around vLLM's ``LLM`` or ``AsyncLLM``.

``RolloutRecorder`` writes the facts only the RL loop knows (what it submitted and with which version
label, what reached it, pauses and weight updates as it asked for them, which sample each reward was
computed for, what the trainer consumed) to one trace file of role ``client``. The engine core writes its
own files (``enable_engine_recording``); ``merge_run`` puts them on one timeline.

Request ids follow vLLM: a request submitted with id ``X`` and ``n == 1`` is sample ``X``; with ``n > 1``
its samples are ``0_X, 1_X, ...`` (vLLM's child ids), which is also what the engine-side records use.
Weight versions are ints; ``set_version`` stores them in vLLM as ``str(version)`` so that the spans vLLM
reports (``CompletionOutput.weight_versions``) come back as ints. A span whose label is not an int (vLLM's
``"default"`` before the first ``set_version``) is recorded with version ``-1``.

No method raises because of the trace file: the sink warns once and counts what it could not write.
"""

from __future__ import annotations

import contextlib
import os
import time

from tracesim.format.digest import token_digest
from tracesim.format.header import make_header
from tracesim.format.records import (
    PAUSED_ALL, PAUSED_NEW, ConsumedSample, OutputDelivered, Paused, ProcessInfo, RequestAdded, Resumed,
    RewardBound, SampleDropped, TrainerConsumed, VersionSpan, WeightsFingerprint, WeightsUpdated,
)
from tracesim.record.sink import RecordSink, host_name, process_anchors

_now = time.monotonic_ns


def sample_ids(request_id: str, n: int) -> list:
    """Ids of the samples of a request, as vLLM names them (``X`` for n=1, ``i_X`` for n>1)."""
    return [request_id] if n == 1 else [f"{i}_{request_id}" for i in range(n)]


def _int_version(label) -> int:
    try:
        return int(label)
    except (TypeError, ValueError):
        return -1


class RolloutRecorder:
    """Record the RL loop's side of a run to ``path`` (one file; close it or use ``with``).

    ``delta_outputs``: the loop streams with ``RequestOutputKind.DELTA`` (each output carries only new
    tokens); default False matches vLLM's cumulative outputs. ``version``: the policy version the loop
    starts with.
    """

    def __init__(self, path, *, version: int = 0, delta_outputs: bool = False,
                 flush_interval_s: float = 0.5, engine_config: dict | None = None):
        mono, wall = process_anchors()
        proc = ProcessInfo("client", host_name(), os.getpid(), 0, mono, wall)
        header = make_header("vllm", (proc,), engine_config=dict(engine_config or {}),
                        created_wall_ns=wall)
        self.sink = RecordSink(path, header, flush_interval_s=flush_interval_s)
        self.path = str(path)
        self.version = version
        self.delta_outputs = delta_outputs
        self._n: dict = {}  # request id -> n
        self._tokens: dict = {}  # sample id -> output token ids seen so far

    # --- submissions and outputs ---------------------------------------------------------------------

    def submitted(self, request_id: str, prompt_ids, *, n: int = 1, max_tokens: int | None = None,
                  logprobs: int | None = None, group_id: str | None = None, version: int | None = None) -> list:
        """The loop submits ``request_id`` (n samples of one prompt). Returns the sample ids."""
        t_ns = _now()
        version = self.version if version is None else version
        group_id = group_id if group_id is not None else request_id
        digest = token_digest(prompt_ids)
        self._n[request_id] = n
        ids = sample_ids(request_id, n)
        for idx, sid in enumerate(ids):
            self._tokens[sid] = []
            self.sink.put(RequestAdded(t_ns, sid, "client", group_id, idx, n, len(prompt_ids), max_tokens,
                                       logprobs, digest, version))
        return ids

    def output(self, request_output) -> list:
        """A vLLM ``RequestOutput`` reached the loop. Returns ``(sample id, token ids so far)`` of samples
        that finished in it."""
        t_ns = _now()
        n = self._n.get(request_output.request_id, len(request_output.outputs))
        done = []
        for comp in request_output.outputs:
            sid = request_output.request_id if n == 1 else f"{comp.index}_{request_output.request_id}"
            seen = self._tokens.setdefault(sid, [])
            new = list(comp.token_ids) if self.delta_outputs else list(comp.token_ids[len(seen):])
            start = len(seen)
            seen.extend(new)
            finished = comp.finish_reason is not None
            if not new and not finished:
                continue
            spans = None
            if comp.weight_versions:
                spans = tuple(VersionSpan(_int_version(s.version), s.start, s.end) for s in comp.weight_versions)
            self.sink.put(OutputDelivered(t_ns, sid, start, len(new), finished,
                                          str(comp.finish_reason) if finished else None, spans,
                                          token_digest(seen) if finished else None))
            if finished:
                done.append((sid, self._tokens.pop(sid)))
        return done

    # --- control ------------------------------------------------------------------------------------

    def paused(self, t_ns: int, end_ns: int, mode: str, clear_cache: bool) -> None:
        state = PAUSED_ALL if mode == "keep" else PAUSED_NEW
        self.sink.put(Paused(t_ns, "client", mode, clear_cache, state, end_ns))

    def resumed(self, t_ns: int | None = None) -> None:
        self.sink.put(Resumed(_now() if t_ns is None else t_ns, "client"))

    def weights_updated(self, t_ns: int, end_ns: int, version: int, set_ns: int | None = None) -> None:
        self.version = version
        self.sink.put(WeightsUpdated(t_ns, end_ns, version, "client", set_ns))

    @contextlib.contextmanager
    def weight_write(self, version: int):
        """``with rec.weight_write(v): <write weights>`` records the write's start and end as version ``v``."""
        t_ns = _now()
        yield
        self.weights_updated(t_ns, _now(), version)

    @contextlib.asynccontextmanager
    async def weight_update(self, engine, version: int):
        """``async with rec.weight_update(engine, v): <write weights>``: records the write, then labels the
        engine's weights ``v`` (``WeightsUpdated.set_ns`` = when the label changed)."""
        t_ns = _now()
        yield
        end_ns = _now()
        await self.set_version_async(engine, version)
        self.weights_updated(t_ns, end_ns, version, _now())

    @contextlib.contextmanager
    def weight_update_sync(self, llm, version: int):
        """The same for the offline ``LLM``."""
        t_ns = _now()
        yield
        end_ns = _now()
        self.set_version(llm, version)
        self.weights_updated(t_ns, end_ns, version, _now())

    async def pause_async(self, engine, *, mode: str = "abort", clear_cache: bool = True) -> None:
        """``await engine.pause_generation(mode=..., clear_cache=...)`` on an ``AsyncLLM``, recorded."""
        t_ns = _now()
        await engine.pause_generation(mode=mode, clear_cache=clear_cache)
        self.paused(t_ns, _now(), mode, clear_cache)

    async def resume_async(self, engine) -> None:
        t_ns = _now()
        await engine.resume_generation()
        self.resumed(t_ns)

    async def set_version_async(self, engine, version: int) -> None:
        """Label the engine's weights ``version`` (vLLM stores ``str(version)``); the label change is
        recorded as the ``set_ns`` of the last weight update."""
        await engine.engine_core.set_weight_version_async(str(version))
        self.version = version

    def set_version(self, llm, version: int) -> None:
        """The same for the offline ``LLM`` (``llm.llm_engine.set_weight_version``)."""
        llm.llm_engine.set_weight_version(str(version))
        self.version = version

    # --- weight fingerprints (docs/recording.md, "Weight fingerprints") ------------------------------

    def weights_published(self, version: int, weights) -> str:
        """The trainer publishes ``weights`` (a module, a state dict or ``(name, tensor)`` pairs, in the
        checkpoint's names and layout) as ``version``: records their fingerprint (side "trainer"), returns it."""
        from tracesim.record.fingerprint import METHOD, fingerprint

        fp = fingerprint(weights)
        self.fingerprint_recorded(version, fp, side="trainer", method=METHOD)
        return fp

    def weights_served(self, llm, version: int | None = None) -> list:
        """Every worker of the offline ``LLM`` fingerprints the weights it serves now (``weights_rpc.py``);
        records one fingerprint per rank (side "engine") as ``version`` (default: the loop's current version).
        Returns ``[(rank, fingerprint)]``; raises RuntimeError when the workers cannot be reached."""
        from tracesim.record.fingerprint import METHOD
        from tracesim.record.weights_rpc import engine_fingerprints

        version = self.version if version is None else version
        found = engine_fingerprints(llm)
        for rank, fp in found:
            self.fingerprint_recorded(version, fp, side="engine", rank=rank, method=METHOD)
        return found

    def fingerprint_recorded(self, version: int, fingerprint: str, *, side: str = "engine", rank: int = 0,
                             method: str = "") -> None:
        """A fingerprint computed elsewhere (another engine, another method): recorded as it is."""
        self.sink.put(WeightsFingerprint(_now(), int(version), str(fingerprint), side, int(rank), method))

    # --- rewards and training ------------------------------------------------------------------------

    def reward(self, req_id: str, token_ids, reward: float, *, version: int | None = None,
               group_id: str | None = None, worker: int = 0) -> None:
        """A reward was computed on ``token_ids`` for the sample the loop believes is ``req_id``."""
        self.sink.put(RewardBound(_now(), req_id, token_digest(token_ids), version, float(reward), group_id,
                                  worker))

    def consumed(self, train_step: int, samples, trainer_version: int | None = None) -> None:
        """The trainer took ``samples``: ``ConsumedSample`` or ``(req_id, group_id, version, token_ids,
        reward)`` tuples."""
        entries = tuple(s if isinstance(s, ConsumedSample) else
                        ConsumedSample(s[0], s[1], s[2], token_digest(s[3]), float(s[4])) for s in samples)
        self.sink.put(TrainerConsumed(_now(), train_step, entries, trainer_version))

    def dropped(self, req_ids, reason: str = "", group_id: str | None = None) -> None:
        self.sink.put(SampleDropped(_now(), tuple(req_ids), reason, group_id))

    def close(self) -> None:
        self.sink.close()

    def __enter__(self) -> "RolloutRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_run(client_path, engine_dir, out_path):
    """Merge the client trace and every ``engine-*.msgpack`` in ``engine_dir`` into ``out_path``.

    Returns the merged ``Trace``; raises ``TraceFormatError`` for an unreadable input file.
    """
    from tracesim.format.merge import merge_files

    engines = sorted(os.path.join(engine_dir, f) for f in os.listdir(engine_dir)
                     if f.startswith("engine-") and f.endswith(".msgpack"))
    return merge_files([client_path, *engines], out_path)
