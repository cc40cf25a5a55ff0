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

Logprob parity (``tracesim parity``, docs/parity.md) is opt-in: with ``record_logprobs=True`` the recorder also
writes what the loop asked to sample with (``SampleSettings``, side ``client``, at ``submitted`` when given the
``SamplingParams``), the per-token logprobs the engine returned (``SampleLogprobs`` role ``returned``, from each
``RequestOutput``), and what the trainer says it used (``trainer_logprobs``).

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
    RewardBound, SampleDropped, SampleLogprobs, SampleSettings, TrainerConsumed, VersionSpan, WeightsFingerprint,
    WeightsUpdated,
)
from tracesim.record.sampling import sampling_values
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
    starts with. ``record_logprobs``: also record sampling settings and logprobs (see the module doc);
    ``logprobs_mode``: the engine's ``logprobs_mode`` as the loop configured it (None: unknown), stamped on the
    client's ``SampleSettings``.
    """

    def __init__(self, path, *, version: int = 0, delta_outputs: bool = False,
                 flush_interval_s: float = 0.5, engine_config: dict | None = None, record_logprobs: bool = False,
                 logprobs_mode: str | None = None):
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
        self.record_logprobs = record_logprobs
        self.logprobs_mode = logprobs_mode
        # While a recorded pause call runs, the records of the loop's other coroutines (the outputs the drain
        # delivers, rewards, drops) wait here and follow the client's Paused, which is written when the call
        # returns (its end_ns is known only then) but belongs at the call's place in the stream.
        self._held: list | None = None

    def _put(self, record) -> None:
        held = self._held
        if held is None:
            self.sink.put(record)
        else:
            held.append(record)

    # --- submissions and outputs ---------------------------------------------------------------------

    def submitted(self, request_id: str, prompt_ids, *, n: int = 1, max_tokens: int | None = None,
                  logprobs: int | None = None, group_id: str | None = None, version: int | None = None,
                  sampling_params=None) -> list:
        """The loop submits ``request_id`` (n samples of one prompt). Returns the sample ids.

        ``sampling_params``: the vLLM ``SamplingParams`` submitted; with ``record_logprobs`` each sample gets a
        ``SampleSettings`` (side ``client``) from it, and ``max_tokens`` / ``logprobs`` default to its own."""
        t_ns = _now()
        version = self.version if version is None else version
        group_id = group_id if group_id is not None else request_id
        digest = token_digest(prompt_ids)
        self._n[request_id] = n
        ids = sample_ids(request_id, n)
        if sampling_params is not None:
            max_tokens = sampling_params.max_tokens if max_tokens is None else max_tokens
            logprobs = sampling_params.logprobs if logprobs is None else logprobs
        for idx, sid in enumerate(ids):
            self._tokens[sid] = []
            self._put(RequestAdded(t_ns, sid, "client", group_id, idx, n, len(prompt_ids), max_tokens,
                                       logprobs, digest, version))
            if self.record_logprobs and sampling_params is not None:
                self._put(sample_settings(t_ns, sid, sampling_params, "client", self.logprobs_mode, prompt_ids))
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
            if self.record_logprobs and new and comp.logprobs is not None:
                rows = comp.logprobs if self.delta_outputs else comp.logprobs[start:]
                self._put(SampleLogprobs(t_ns, sid, "returned", "client", start, tuple(new),
                                             tuple(sampled_logprobs(rows, new))))
            finished = comp.finish_reason is not None
            if not new and not finished:
                continue
            spans = None
            if comp.weight_versions:
                spans = tuple(VersionSpan(_int_version(s.version), s.start, s.end) for s in comp.weight_versions)
            self._put(OutputDelivered(t_ns, sid, start, len(new), finished,
                                          str(comp.finish_reason) if finished else None, spans,
                                          token_digest(seen) if finished else None))
            if finished:
                done.append((sid, self._tokens.pop(sid)))
        return done

    # --- control ------------------------------------------------------------------------------------

    def paused(self, t_ns: int, end_ns: int, mode: str, clear_cache: bool) -> None:
        state = PAUSED_ALL if mode == "keep" else PAUSED_NEW
        self._put(Paused(t_ns, "client", mode, clear_cache, state, end_ns))

    def resumed(self, t_ns: int | None = None) -> None:
        self._put(Resumed(_now() if t_ns is None else t_ns, "client"))

    def weights_updated(self, t_ns: int, end_ns: int, version: int, set_ns: int | None = None) -> None:
        self.version = version
        self._put(WeightsUpdated(t_ns, end_ns, version, "client", set_ns))

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
        """``await engine.pause_generation(mode=..., clear_cache=...)`` on an ``AsyncLLM``, recorded. The
        client's ``Paused`` takes the call's place in the client's stream: what the loop records while the call
        runs (the drain's outputs) is written after it. A call that raises writes no ``Paused``."""
        t_ns = _now()
        outer = self._held is not None  # a pause inside another recorded pause: the outer one holds
        if not outer:
            self._held = []
        ok = False
        try:
            await engine.pause_generation(mode=mode, clear_cache=clear_cache)
            ok = True
        finally:
            if not outer:
                held, self._held = self._held, None
                if ok:
                    self.paused(t_ns, _now(), mode, clear_cache)
                for record in held:
                    self.sink.put(record)
            elif ok:
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
        self._put(WeightsFingerprint(_now(), int(version), str(fingerprint), side, int(rank), method))

    # --- rewards and training ------------------------------------------------------------------------

    def reward(self, req_id: str, token_ids, reward: float, *, version: int | None = None,
               group_id: str | None = None, worker: int = 0) -> None:
        """A reward was computed on ``token_ids`` for the sample the loop believes is ``req_id``."""
        self._put(RewardBound(_now(), req_id, token_digest(token_ids), version, float(reward), group_id,
                                  worker))

    def consumed(self, train_step: int, samples, trainer_version: int | None = None) -> None:
        """The trainer took ``samples``: ``ConsumedSample`` or ``(req_id, group_id, version, token_ids,
        reward)`` tuples."""
        entries = tuple(s if isinstance(s, ConsumedSample) else
                        ConsumedSample(s[0], s[1], s[2], token_digest(s[3]), float(s[4])) for s in samples)
        self._put(TrainerConsumed(_now(), train_step, entries, trainer_version))

    def trainer_logprobs(self, req_id: str, token_ids, logprobs, *, role: str = "behaviour",
                         version: int | None = None, start_idx: int = 0) -> None:
        """The trainer holds ``logprobs`` (one per token of ``token_ids``, output positions from ``start_idx``) for
        sample ``req_id``: ``role="behaviour"`` when it uses them as the behaviour policy's (the importance
        ratio's denominator: the engine's returned ones, or its own recompute), ``"current"`` for its current
        policy's. ``version``: the weights that computed them, where known. Recorded whatever
        ``record_logprobs`` says: the trainer calls this only when it wants them checked. Raises ValueError
        when the lengths differ or the role is unknown (a caller's bug, not the trace's)."""
        if role not in ("behaviour", "current"):
            raise ValueError(f"trainer_logprobs: role must be 'behaviour' or 'current', not {role!r}")
        token_ids, logprobs = tuple(int(t) for t in token_ids), tuple(float(x) for x in logprobs)
        if len(token_ids) != len(logprobs):
            raise ValueError(f"trainer_logprobs: {len(token_ids)} token ids but {len(logprobs)} logprobs for {req_id!r}")
        self._put(SampleLogprobs(_now(), req_id, role, "trainer", start_idx, token_ids, logprobs, version))

    def dropped(self, req_ids, reason: str = "", group_id: str | None = None) -> None:
        self._put(SampleDropped(_now(), tuple(req_ids), reason, group_id))

    def close(self) -> None:
        held, self._held = self._held, None
        for record in held or ():  # closed while a pause call ran (the loop was cancelled): nothing is lost
            self.sink.put(record)
        self.sink.close()

    def __enter__(self) -> "RolloutRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_settings(t_ns: int, req_id: str, params, side: str, logprobs_mode, prompt_ids) -> SampleSettings:
    """A ``SampleSettings`` from a vLLM ``SamplingParams`` (read by attribute; absent ones take vLLM's defaults)."""
    return SampleSettings(t_ns, req_id, side, logprobs_mode, *sampling_values(params),
                          tuple(int(t) for t in prompt_ids) if prompt_ids is not None else None)


def sampled_logprobs(rows, token_ids) -> list:
    """The logprob vLLM returned for each sampled token: ``rows[i]`` maps token id -> ``Logprob`` (vLLM always
    includes the sampled token). NaN where a row lacks it, so positions stay aligned."""
    out = []
    for row, tok in zip(rows, token_ids):
        entry = row.get(tok) if row is not None else None
        out.append(float(entry.logprob) if entry is not None else float("nan"))
    return out


def merge_run(client_path, engine_dir, out_path):
    """Merge the client trace and every ``engine-*.msgpack`` in ``engine_dir`` into ``out_path``.

    Returns the merged ``Trace``; raises ``TraceFormatError`` for an unreadable input file.
    """
    from tracesim.format.merge import merge_files

    engines = sorted(os.path.join(engine_dir, f) for f in os.listdir(engine_dir)
                     if f.startswith("engine-") and f.endswith(".msgpack"))
    return merge_files([client_path, *engines], out_path)
