"""The compact per-step reduction: made in the scheduler hooks while vLLM's objects are still in the cache.

The legacy reduction (``capture.plain``, ``TRACESIM_RECORD_REDUCE=legacy``) runs on the sink's thread, up to
50 ms after the step: by then a 256-request step's objects (outputs, token lists, ints) have left the CPU's
caches, and its three Python-level passes over the outputs, the two copies of every request id and msgpack's
packing of each id string cost ~120 us per step on the engine's GIL (measured: mostly cache misses). Here, in
the hook, per step:

* schedule: the ids are kept only when the batch changed; otherwise ``CompactSched.batch_ids`` is the step
  whose ids they are (a list compare of the same string objects: a pointer compare per request), and the
  running list only when it is not the batch itself. Counts and computed tokens are lists of ints, which
  msgspec (``sidecar.py``) encodes at C speed. The converter expands it into the very ``PlainSched`` the
  legacy reduction makes (``convert.Converter``);
* schedule, the batch: one pass (``sched_columns``: ids, counts, the compare with the previous batch and, for
  the AsyncScheduler, each request's output placeholders), compiled (``_fastcapture.pyx``) where built;
* update: one pass over vLLM's outputs (``upd_columns``), compiled (``_fastcapture.pyx``) where built;
  ``capture.upd_columns`` (shared with the legacy path) is its pure-Python reference. With ``record_tokens``
  the hook queues vLLM's objects for the legacy reduction (token ids and logprobs are read per output anyway).

The reducer keeps the previous batch. When an item is lost between the hook and the converter (a full queue, an
item that could not be encoded or converted), the sink calls ``resync``: the next schedule item carries its
ids in full. The converter also checks the step each reuse names, so a lost item costs counted drops, never
requests named wrongly.
"""

from __future__ import annotations

from tracesim import compiled as _build
from tracesim.record.capture import _resumed_ids, upd_columns
from tracesim.record.items import CompactSched, PlainUpd, ReducedUpd

_new = tuple.__new__  # a NamedTuple from all its values, without its Python-level __new__


# The compiled pass, used only while it was built from the current _fastcapture.pyx (tracesim/compiled.py);
# TRACESIM_PURE_PYTHON=1 runs the reference (capture.upd_columns).
BUILD = _build.status(__name__.rpartition(".")[0])
_python_upd_columns = upd_columns
_compiled_upd_columns = _compiled_sched_columns = None
if BUILD.compiled:
    try:
        from tracesim.record._fastcapture import sched_columns as _compiled_sched_columns
        from tracesim.record._fastcapture import upd_columns as _compiled_upd_columns
    except ImportError:  # e.g. built for another interpreter
        _compiled_upd_columns = _compiled_sched_columns = None


def sched_columns(scheduled: dict, prev_ids, requests) -> tuple:
    """(the batch's ids, tokens scheduled per request, output placeholders per request or None, whether the ids
    equal ``prev_ids``) of ``SchedulerOutput.num_scheduled_tokens``; ``requests``: the scheduler's requests by id
    (AsyncScheduler: their ``num_output_placeholders`` change at the next update, so they are read now), or
    None. The reference of ``_fastcapture.sched_columns``."""
    ids = list(scheduled)
    holds = None
    if requests is not None:
        get = requests.get
        holds = [getattr(get(r), "num_output_placeholders", 0) for r in ids]  # a request already gone: 0
    return ids, list(scheduled.values()), holds, ids == prev_ids


def compiled_available() -> bool:
    """Whether the update pass runs compiled (``TRACESIM_PURE_PYTHON=1`` turns it off)."""
    return _compiled_upd_columns is not None and not _build.pure_python()


class StepReducer:
    """Reduces one schedule / update step to its plain item; called by the hooks (``engine.EngineRecorder``).

    ``compiled``: None picks the compiled update pass where it is current; False forces the reference.
    """

    def __init__(self, *, compiled: bool | None = None):
        use_compiled = compiled_available() if compiled is None else bool(compiled) and _compiled_upd_columns is not None
        self.compiled = use_compiled
        self.upd_columns = _compiled_upd_columns if use_compiled else _python_upd_columns
        self.sched_columns = _compiled_sched_columns if use_compiled else sched_columns
        self._prev_ids = None  # the batch ids of the previous schedule item ...
        self._prev_step = -1  # ... and its step
        self._resync = False

    def resync(self) -> None:
        """An item was lost on its way to the converter: the next schedule item carries its ids in full.
        Called from the sink's thread (a flag: the hook on the engine thread reads it)."""
        self._resync = True

    def sched(self, out, t0_ns: int, t1_ns: int, step: int, requests, running: int, waiting: int,
              queue_depth: int, pause_state: int, kv_usage: float) -> CompactSched:
        """The step's schedule item, from vLLM's ``SchedulerOutput``; ``requests``: the scheduler's requests by
        id, to read output placeholders from (AsyncScheduler), or None."""
        if self._resync:
            self._resync = False
            self._prev_ids = None
        ids, counts, placeholders, same = self.sched_columns(out.num_scheduled_tokens, self._prev_ids, requests)
        cached = out.scheduled_cached_reqs
        cached_ids = cached.req_ids
        spec = out.scheduled_spec_decode_tokens
        item = _new(CompactSched, (
            CompactSched.KIND, t0_ns, t1_ns, step, self._prev_step if same else ids, counts,
            [(nd.req_id, nd.num_computed_tokens) for nd in out.scheduled_new_reqs],
            None if cached_ids == ids else list(cached_ids), list(cached.num_computed_tokens), _resumed_ids(cached),
            {r: len(t) for r, t in spec.items()} if spec else {}, placeholders,
            list(out.preempted_req_ids or ()), list(out.finished_req_ids), running, waiting, queue_depth,
            pause_state, float(kv_usage)))
        if not same:
            self._prev_ids = ids
        self._prev_step = step  # last: an item that raised above leaves the state as the converter knows it
        return item

    def upd(self, scheduled: dict, result, stale, t0_ns: int, t1_ns: int, step: int, label=None) -> PlainUpd:
        """The step's update item, from what ``update_from_output`` returned; ``label``: its weight-version label
        where the hook knows it (else the sink's thread stamps it: ``finish_upd``)."""
        _label, out_ids, sampled, reasons = self.upd_columns(result, scheduled)  # no label stamped yet
        return _new(PlainUpd, (PlainUpd.KIND, t0_ns, t1_ns, step, label, out_ids, sampled, reasons,
                               list(stale) if stale else None, None, None))


def version_label(result):
    """The weight-version label vLLM's engine core stamped on ``result``'s outputs (as ``capture._upd`` reads it)."""
    label = None
    for batch in (result or {}).values():
        label = getattr(batch, "weight_version", None)
        if label is not None:
            break
    if label is not None and not isinstance(label, (int, str)):
        label = str(label)
    return label


def finish_upd(item: ReducedUpd) -> PlainUpd:
    """On the sink's thread: the update item with the label stamped after the hook ran."""
    return item.upd._replace(version_label=version_label(item.result))
