"""The rollout client: submits groups, receives output frames, labels versions, hands samples to rewards.

Client-side policies (``LoopPolicy``, DESIGN §4) that decide bindings live here: when a sample's version label
is read (admission, first token, finish, per-token spans; once or again after the reward await) and what an
abort does (drop the group, requeue the sample under a fresh or a reused id, or continue it: resubmit its
prompt plus the tokens so far for the rest of its output, a partial rollout).
"""

from __future__ import annotations

import random
import zlib

from tracesim.format.digest import token_digest
from tracesim.format.records import Aborted, RequestAdded, SampleContinued, SampleDropped, VersionSpan
from tracesim.sim.grouping import duplicate_prompt
from tracesim.sim.parent import Parents, aborted_child
from tracesim.sim.records_hot import output_delivered
from tracesim.sim.scheduler import SimReq, token_id


def spans_of(versions: list) -> tuple:
    """Run-length VersionSpans of per-token versions."""
    spans, start = [], 0
    for i in range(1, len(versions) + 1):
        if i == len(versions) or versions[i] != versions[start]:
            spans.append(VersionSpan(version=versions[start], start=start, end=i))
            start = i
    return tuple(spans)


class Sample:
    """One sample as the client sees it."""

    __slots__ = ("req_id", "group", "idx", "tokens", "stamps", "label", "finished", "reason", "digest",
                 "retries", "stop_len", "carried", "spans_kept")

    def __init__(self, req_id, group, idx, stop_len, label):
        self.req_id, self.group, self.idx, self.stop_len, self.label = req_id, group, idx, stop_len, label
        self.tokens, self.stamps, self.finished, self.reason, self.digest, self.retries = [], [], False, None, None, 0
        self.carried = 0  # output tokens carried into the current request's prompt (a continuation)
        self.spans_kept = True  # False: the loop keeps only the first segment's label (continue_label = "first")


class Group:
    __slots__ = ("group_id", "prompt_len", "samples", "dropped", "resolved", "prompt_digest", "prompt_of")

    def __init__(self, group_id, prompt_len):
        self.group_id, self.prompt_len, self.samples, self.dropped, self.resolved = group_id, prompt_len, [], False, False
        self.prompt_of = group_id  # whose prompt text it has: its own, or an earlier group's (a duplicate prompt)
        self.prompt_digest = token_digest([token_id(zlib.crc32(group_id.encode()), i, 0) for i in range(prompt_len)])


class Rollout:
    """Closed-loop client: keeps ``concurrency`` groups generating until ``num_prompts`` were submitted.

    ``on_finished(sample)``: a sample finished (not aborted); ``on_group_dropped(group)``: a group was dropped.
    Replay's options (keywords):

    * ``stand_in``: replay's stand-in for the recorded client (replay does not start its ``run``: the
      recording's adds reach the engine). It tracks every request it hears of (a ``Sample`` without a group, made at the request's
      first frame), forgets a request at its final frame (no client policy applies), and writes no client
      records: the recording holds the client's own.
    * ``on_first_frame(req_id)``: called when a frame arrives for a request the client does not track yet
      (for the stand-in, the first frame of each request incarnation), before the client handles it.
    * ``on_final_frame(sample, reason, digest)``: called at a request's final frame (finish or abort), with
      the tokens' digest, before the client handles it.
    """

    def __init__(self, env, scenario, engine, emit, rng: random.Random | None, on_finished, on_group_dropped, *,
                 stand_in: bool = False, on_first_frame=None, on_final_frame=None):
        self.env, self.wl, self.policy, self.engine, self.emit = env, scenario.workload, scenario.loop, engine, emit
        self.latency_ns = scenario.engine.output_latency_us * 1000
        self.add_latency_ns = scenario.engine.add_latency_us * 1000
        self.rng = rng
        self.on_finished, self.on_group_dropped = on_finished, on_group_dropped
        self.version = 0  # the client's notion of the current policy version
        self.samples: dict = {}  # live req_id -> Sample
        self.groups: list = []
        self.generating = 0  # groups with samples still generating
        self.submitted = 0
        self.stand_in = stand_in
        self.client_records = not stand_in  # the stand-in writes none: the recording has the client's records
        # prefix-cache keys of the shared system prefix's full blocks (Workload.shared_prefix_len): the same for
        # every group, where a prompt's own blocks are keyed by its group's prompt
        bs = scenario.engine.block_size
        self.shared_prefix_keys = tuple(("shared-prefix", i) for i in range(scenario.workload.shared_prefix_len // bs))
        self.on_first_frame, self.on_final_frame = on_first_frame, on_final_frame
        self._slot = env.event()
        engine.on_output = self.send
        # [workload] sampling = "parent": a group is one n > 1 request fanned out by vLLM's frontend (parent.py)
        self.parents = Parents(self) if scenario.workload.sampling == "parent" and not stand_in else None

    # --- submission --------------------------------------------------------------------------------------

    def run(self):
        """SimPy process: submit groups while below the concurrency limit."""
        wl = self.wl
        while self.submitted < wl.num_prompts:
            if self.generating >= wl.concurrency:
                self._slot = self.env.event()
                yield self._slot
                continue
            self._submit_group()
            if wl.submit_gap_us:
                yield self.env.timeout(wl.submit_gap_us * 1000)

    def _submit_group(self) -> None:
        wl, gi = self.wl, self.submitted
        self.submitted += 1
        group = Group(f"g{gi}", self.rng.randint(*wl.prompt_len))
        if wl.duplicate_prompt_share:
            duplicate_prompt(self, group)
        self.groups.append(group)
        self.generating += 1
        ids = self.parents.submit(group) if self.parents is not None else None
        for j in range(wl.group_size):
            sample = Sample(f"g{gi}-s{j}" if ids is None else ids[j], group, j, self.rng.randint(*wl.output_len),
                            self.version)
            group.samples.append(sample)
            self._add(sample, sample.req_id)

    def _add(self, sample: Sample, req_id: str) -> None:
        wl, group = self.wl, sample.group
        sample.req_id = req_id
        self.samples[req_id] = sample
        prompt_key = group.prompt_digest
        carried = sample.carried
        # A continuation's prompt is the group's prompt plus the tokens carried: the client add names the
        # group's prompt (the sample's), the engine's request has a prompt of its own (its own prefix keys:
        # no cache hits on the original's blocks, an approximation) and the rest of the output to generate.
        engine_key = prompt_key if not carried else _continued_prompt_key(group, sample.tokens)
        self.emit(RequestAdded(t_ns=self.env.now, req_id=req_id, side="client", group_id=group.group_id,
                               sample_idx=sample.idx, group_size=wl.group_size, prompt_len=group.prompt_len + carried,
                               max_tokens=wl.max_tokens - carried, prompt_digest=prompt_key, version=self.version))
        req = SimReq(req_id, group.prompt_len + carried, wl.max_tokens - carried, sample.stop_len - carried,
                     engine_key, group.group_id, sample.idx, wl.group_size)
        if self.shared_prefix_keys:
            req.prompt_block_keys = self.shared_prefix_keys
        self._later(self.add_latency_ns, lambda: self.engine.submit("add", req))
        if self.policy.request_timeout_ms and sample.retries < self.policy.timeout_retries:
            attempt = sample.retries
            self._later(self.policy.request_timeout_ms * 1_000_000, lambda: self._timed_out(sample, req_id, attempt))

    def _timed_out(self, sample: Sample, req_id: str, attempt: int) -> None:
        """``request_timeout_ms`` after ``req_id`` was admitted: retry the sample if that incarnation is still
        the live one (not finished, retried, continued or dropped since)."""
        if sample.retries != attempt or self.samples.get(req_id) is not sample or sample.group.dropped:
            return
        self.retry(req_id, "timeout", abort=self.policy.abort_on_timeout)

    def _later(self, delay_ns: int, fn) -> None:
        ev = self.env.timeout(delay_ns)
        ev.callbacks.append(lambda _ev: fn())

    # --- output path -------------------------------------------------------------------------------------

    def send(self, step, frames) -> None:
        """The engine sends the output frames of one update (``engine._frame``); they reach the client after
        the latency. The frames travel as the timeout's value (no closure per update)."""
        self.env.timeout(self.latency_ns, frames).callbacks.append(self._arrived)

    def _arrived(self, ev) -> None:
        self.deliver(ev._value)

    def _untracked(self, req_id: str):
        """The Sample for a frame of a request the client does not track: a new stand-in Sample, or None (the
        frame is ignored)."""
        if self.on_first_frame is not None:
            self.on_first_frame(req_id)
        if self.stand_in:
            sample = self.samples[req_id] = Sample(req_id, None, 0, 0, 0)
            return sample
        return None

    def deliver(self, batch) -> None:
        if self.parents is not None:  # FINAL_ONLY: a child's output reaches the client when its parent ends
            batch = self.parents.hold(batch)
        _deliver(self, batch)

    def _finished(self, sample: Sample, reason: str, digest: str) -> None:
        if self.on_final_frame is not None:
            self.on_final_frame(sample, reason, digest)
        if self.stand_in:
            self.samples.pop(sample.req_id, None)
            return
        del self.samples[sample.req_id]
        sample.finished, sample.reason, sample.digest = True, reason, digest
        if reason == "abort":
            if self.parents is not None and aborted_child(self, sample):
                return
            if self.policy.on_abort == "continue":
                self._continue(sample)
                return
            if self.policy.on_abort == "requeue":
                sample.retries += 1
                sample.tokens, sample.stamps, sample.finished = [], [], False
                sample.label = self.version
                rid = sample.req_id if self.policy.retry_ids == "reuse" else f"{sample.group.group_id}-s{sample.idx}-r{sample.retries}"
                self._add(sample, rid)
                return
            self.drop_group(sample.group, "aborted")
            return
        if not sample.spans_kept:
            pass  # the first segment's label stays (continue_label = "first")
        elif self.policy.version_label == "finish":
            sample.label = self.version
        elif self.policy.version_label == "spans":
            sample.label = min(s.version for s in spans_of(sample.stamps)) if sample.stamps else self.version
        self.on_finished(sample)
        self._check_generated(sample.group)

    def _continue(self, sample: Sample) -> None:
        """Resubmit an aborted sample as a continuation (partial rollout): prompt + the tokens so far, for the
        rest of its output, in its group. Its tokens and stamps stay: the next frames extend them, so the final
        frame's digest and spans are the whole sample's. With ``continue_label = "first"`` the loop keeps the
        label it had and drops the spans (what it would have labelled at the abort, once)."""
        policy = self.policy
        sample.finished = False
        if len(sample.tokens) >= min(sample.stop_len, self.wl.max_tokens):  # nothing left to generate: cannot happen
            self.drop_group(sample.group, "aborted")  # for an abort frame, kept as a guard
            return
        if policy.continue_label == "first" and sample.spans_kept:
            sample.spans_kept = False
            if policy.version_label == "finish":
                sample.label = self.version
            elif policy.version_label == "spans" and sample.stamps:
                sample.label = min(s.version for s in spans_of(sample.stamps))
        sample.retries += 1
        old = sample.req_id
        sample.carried = len(sample.tokens)
        rid = old if policy.retry_ids == "reuse" else f"{sample.group.group_id}-s{sample.idx}-c{sample.retries}"
        self.emit(SampleContinued(t_ns=self.env.now, req_id=rid, from_req_id=old, carried_tokens=sample.carried,
                                  group_id=sample.group.group_id, spans_kept=sample.spans_kept))
        self._add(sample, rid)

    def _check_generated(self, group: Group) -> None:
        if not group.resolved and all(s.finished for s in group.samples):
            group.resolved = True
            self.generating -= 1
            if not self._slot.triggered:
                self._slot.succeed()

    def drop_group(self, group: Group, reason: str) -> None:
        """Discard a whole group (accounted for by a SampleDropped); aborts members still generating."""
        if group.dropped:
            return
        group.dropped = True
        live = [s.req_id for s in group.samples if not s.finished and s.req_id in self.samples]
        if live:
            self.engine.submit("abort", tuple(live))
        self.emit(SampleDropped(t_ns=self.env.now, req_ids=tuple(s.req_id for s in group.samples), reason=reason,
                                group_id=group.group_id))
        for s in group.samples:
            s.finished = True
            self.samples.pop(s.req_id, None)
        self._check_generated(group)
        self.on_group_dropped(group)

    def all_submitted(self) -> bool:
        return self.submitted >= self.wl.num_prompts

    # --- actions a perturbation injects (hooks.py) --------------------------------------------------------

    def control(self, kind: str, payload=None) -> None:
        """Send one input to the engine core (it arrives after the client -> engine latency)."""
        self._later(self.add_latency_ns, lambda: self.engine.submit(kind, payload))

    def cancel(self, req_id: str, whole_group: bool) -> None:
        """Abort request ``req_id`` (or every live member of its group) from the client. The engine's abort
        frames come back and the loop handles them as any abort (its ``on_abort`` policy)."""
        ids = [req_id] if self.parents is None else self.parents.expand(req_id)
        if whole_group:
            sample = self.samples.get(req_id)
            if sample is not None and sample.group is not None:
                ids = [s.req_id for s in sample.group.samples if s.req_id in self.samples]
            else:  # a request the client does not track (replay): its group as the engine knows it
                req = self.engine.sched.requests.get(req_id)
                if req is not None and req.group_id is not None:
                    ids = [r.req_id for r in self.engine.sched.requests.values() if r.group_id == req.group_id]
        if self.client_records:
            self.emit(Aborted(t_ns=self.env.now, req_ids=tuple(ids), reason="client", side="client"))
        self.control("abort", tuple(ids))

    def retry(self, req_id: str, reason: str = "retry", abort: bool = True) -> None:
        """Give up on ``req_id`` and resubmit its sample at once, without waiting for the abort to be processed:
        under a fresh id, or the same one with ``retry_ids = "reuse"`` (then the old incarnation's abort frame
        can reach the new one). ``abort=False``: the old incarnation is not aborted, only forgotten (its frames
        are ignored). A request the client does not track is left alone."""
        sample = self.samples.get(req_id)
        if sample is not None and sample.group is None:  # replay's stand-in client: the engine knows the request
            self._retry_untracked(req_id)
            return
        if sample is None or sample.finished:
            return
        if abort:
            self.emit(Aborted(t_ns=self.env.now, req_ids=(req_id,), reason=reason, side="client"))
            self.control("abort", (req_id,))
        del self.samples[req_id]
        sample.retries += 1
        sample.tokens, sample.stamps = [], []
        sample.carried, sample.spans_kept = 0, True  # a retry starts the sample over, continued or not
        sample.label = self.version
        rid = req_id if self.policy.retry_ids == "reuse" else f"{sample.group.group_id}-s{sample.idx}-r{sample.retries}"
        self._add(sample, rid)

    def _retry_untracked(self, req_id: str) -> None:
        """Replay: resubmit a copy of the engine's live request under a fresh id (``<id>-retry``). The stand-in
        client writes no client records (the recording holds the client's own)."""
        old = self.engine.sched.requests.get(req_id)
        if old is None:
            return
        self.control("abort", (req_id,))
        rid = req_id if self.policy.retry_ids == "reuse" else f"{req_id}-retry"
        req = SimReq(rid, old.prompt_len, old.max_tokens, old.stop_len, old.prompt_key, old.group_id,
                     old.sample_idx, old.group_size)
        req.prompt_block_keys, req.known_output = old.prompt_block_keys, old.known_output
        self.control("add", req)


def _continued_prompt_key(group: Group, carried_tokens: list) -> str:
    """The prompt digest of a continuation: the group's prompt token ids followed by the carried output."""
    seed = zlib.crc32(group.prompt_of.encode())
    return token_digest([token_id(seed, i, 0) for i in range(group.prompt_len)] + list(carried_tokens))


def _deliver(client: Rollout, batch) -> None:
    """The client receives one update's frames (``Rollout.deliver``; ``engine.Frame``): one ``OutputDelivered``
    per frame. Runs once per output frame: locals, and records built with ``records_hot``."""
    samples, emit, now = client.samples, client.emit, client.env.now
    first_token = client.policy.version_label == "first_token"
    for frame in batch:
        req_id, sampled, tokens, reason = frame.req_id, frame.sampled, frame.tokens, frame.finish_reason
        sample = samples.get(req_id)
        if sample is None:
            sample = client._untracked(req_id)
            if sample is None:
                continue  # a frame for a request the client no longer tracks
        sample_tokens = sample.tokens
        start = len(sample_tokens)
        if first_token and start == 0 and sampled:
            sample.label = client.version
        if sampled == 1:
            sample_tokens.append(tokens)
            sample.stamps.append(frame.stamps)
        elif sampled:
            sample_tokens += tokens
            sample.stamps += frame.stamps
        if reason is None:
            emit(output_delivered(t_ns=now, req_id=req_id, start_idx=start, num_tokens=sampled, finished=False,
                                  finish_reason=None, spans=None, digest=None))
            continue
        spans = spans_of(sample.stamps) if sample.spans_kept else None
        digest = token_digest(sample_tokens)
        emit(output_delivered(t_ns=now, req_id=req_id, start_idx=start, num_tokens=sampled, finished=True,
                              finish_reason=reason, spans=spans, digest=digest))
        client._finished(sample, reason, digest)
