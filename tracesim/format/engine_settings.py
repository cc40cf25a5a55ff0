"""The header's engine configuration: one key vocabulary for recorded, simulated and synthetic traces.

``Header.engine_config`` is an ``EngineSettings``: an immutable mapping whose known keys are declared below, each
once, with its accepted types, its meaning and the names older traces used for it, and read as a named
attribute (``settings.max_num_seqs``: the value, or None when the trace does not say). Keys are vLLM's names
where the setting is vLLM's; the simulator's own settings carry their units in their names.

Why a mapping and not a NamedTuple or Struct: on disk it is a msgpack map, and msgpack packs a ``dict``
subclass as a map wherever a header is packed (the writer, the recorder's sidecar pipe), where a NamedTuple
would silently become an array and a Struct would need an encoder hook at every packer. It prints and
serialises to JSON (``tracesim info --json``) as the map it is.

Reading maps the old names (``chunked_prefill`` of recorded traces, ``reserve_full_sequence`` of simulated
ones, ``token_budget`` of synthetic ones) to the current ones and checks the known keys' types (exact types, as
for records: a bool is not an int; an int where a float belongs becomes that float). Keys this version does not
know (a newer tracesim's, a user's own) are kept as they are and written back.
"""

from __future__ import annotations

from tracesim.format.errors import FieldError, short_repr


class Setting:
    """One known key of ``EngineSettings``: a class attribute that reads the key (None when absent)."""

    __slots__ = ("key", "types", "meaning", "old_names")

    def __init__(self, types: tuple, meaning: str, old_names: tuple = ()):
        self.types = types  # exact types accepted (None is always accepted: the source did not know)
        self.meaning = meaning
        self.old_names = old_names  # names older traces used for this key
        self.key = ""

    def __set_name__(self, owner, name: str) -> None:
        self.key = name

    def __get__(self, settings, owner=None):
        if settings is None:
            return self
        return dict.get(settings, self.key)


_INT, _BOOL, _STR, _FLOAT = (int,), (bool,), (str,), (float,)


def _refuse(*_args, **_kw):
    raise TypeError("EngineSettings is immutable: build a new one, EngineSettings({**old, key: value})")


class EngineSettings(dict):
    """The engine configuration of a trace (see the module docstring).

    ``EngineSettings(mapping)`` takes any source's key names, old ones included, and raises ``FieldError``
    (``engine_config.KEY``; ``path`` names the prefix) for a known key of the wrong type, or for an old and a
    current name of one key that disagree.
    """

    __slots__ = ()

    # --- the engine: vLLM's names (recorded from the running engine; the simulated engine's equivalents) ---
    scheduler = Setting(_STR, 'vLLM scheduler class: "Scheduler" or "AsyncScheduler"')
    async_scheduling = Setting(_BOOL, "async scheduling: output placeholders, steps scheduled ahead of their update")
    max_num_seqs = Setting(_INT, "running requests at most")
    max_num_batched_tokens = Setting(_INT, "token budget per step", ("token_budget",))
    enable_chunked_prefill = Setting(_BOOL, "prompts may be prefilled over several steps", ("chunked_prefill",))
    enable_prefix_caching = Setting(_BOOL, "prefix caching of full prompt blocks")
    block_size = Setting(_INT, "tokens per KV block")
    num_gpu_blocks = Setting(_INT, "KV blocks, vLLM's null block included")
    scheduler_reserve_full_isl = Setting(_BOOL, "admit a request only when its whole sequence fits in KV",
                                         ("reserve_full_sequence",))
    watermark = Setting(_FLOAT, "fraction of KV blocks kept free when admitting while others run")
    long_prefill_token_threshold = Setting(_INT, "cap in tokens on one request's prefill chunk (0: none)")
    max_concurrent_batches = Setting(_INT, "batches in flight in the engine core (2: step_with_batch_queue)")
    engine_loop = Setting(_STR, 'who steps the engine core: "busy" (its own busy loop, while the scheduler has '
                                'requests) or "client" (in-process, stepped while the client awaits outputs)')
    data_parallel_size = Setting(_INT, "data-parallel engine cores")
    model = Setting(_STR, "model name or path")
    max_model_len = Setting(_INT, "context length limit in tokens")
    vllm_version = Setting(_STR, "version of the recorded vLLM")
    weight_version = Setting((int, str), "policy version of the weights loaded at start (checks start from it)")
    # --- the simulated engine (tracesim.sim.scenario.EngineConfig) ---
    scheduler_backend = Setting(_STR, 'simulator scheduler: "native" or "vllm" (vLLM\'s own, in virtual time)')
    kv_offload_blocks = Setting(_INT, "blocks of the external KV tier (offload / connector cache); 0: none")
    discard_stale_frames = Setting(_BOOL, "a stale output frame is discarded (false: applied to the new incarnation)")
    fault_drop_inflight_frame = Setting(_FLOAT, "fault: probability that a frame in flight at a preemption is lost")
    fault_frame_to_new_incarnation = Setting(_FLOAT, "fault: probability that a frame voided by a reset is applied "
                                                     "to the resumed request")
    fault_resume_context_missing_tokens = Setting(_FLOAT, "fault: probability that a resumed request's context "
                                                          "lacks the tokens its in-flight frames delivered")
    fault_duplicate_frame = Setting(_FLOAT, "fault: probability that a frame in flight at a preemption is sent twice")
    fault_dp_finish_no_output = Setting(_FLOAT, "fault: probability that a data-parallel rank's abort-mode pause "
                                                "aborts its requests without sending their abort outputs")
    pd_transfer_us = Setting(_INT, "prefill/decode disaggregation: a prompt's KV transfer to the decode engine; 0: none")
    fault_pd_free_in_transfer = Setting(_FLOAT, "fault: probability that an abort during a KV transfer frees the "
                                                "request at once instead of holding its blocks until the completion")
    sched_us = Setting(_INT, "schedule() cost")
    update_us = Setting(_INT, "update_from_output() cost")
    step_gap_us = Setting(_INT, "engine-core overhead between an update and the next schedule")
    output_latency_us = Setting(_INT, "engine core -> client transport of one output frame")
    add_latency_us = Setting(_INT, "client -> engine core transport of one request")
    # --- the RL loop around the engine, where a source states it ---
    pause_mode = Setting(_STR, 'weight-update pause mode: "abort", "wait" or "keep"')
    clear_cache = Setting(_BOOL, "the weight-update pause clears the prefix cache")
    workload = Setting((dict,), "the built-in recording workload's settings (record/workload.py)")

    def __init__(self, mapping=(), path: str = "engine_config"):
        current: dict = {}
        for key, value in dict(mapping).items():
            name = RENAMED.get(key, key) if type(key) is str else key
            if name in current and current[name] != value:
                raise FieldError(f"{path}.{key}", f"{key!r} and {name!r} are one setting with two values "
                                 f"({short_repr(value)}, {short_repr(current[name])})")
            current[name] = value
        for key, value in current.items():
            setting = SETTINGS.get(key) if type(key) is str else None
            if setting is None or value is None:  # unknown keys are kept as they are; None: the source did not know
                continue
            if type(value) not in setting.types:
                if setting.types is _FLOAT and type(value) is int:
                    current[key] = float(value)
                    continue
                raise FieldError(f"{path}.{key}", f"expected {_names(setting.types)}, got {type(value).__name__}")
        dict.__init__(self, current)

    def extras(self) -> dict:
        """The keys this version does not know, kept as they were read."""
        return {k: v for k, v in self.items() if k not in SETTINGS}

    def __repr__(self) -> str:
        return f"EngineSettings({dict.__repr__(self)})"

    def __reduce__(self):  # pickle and copy build it anew (item assignment is refused)
        return (EngineSettings, (dict(self),))

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


# key -> Setting, in declaration order (the order docs/trace-format.md lists them in)
SETTINGS: dict = {k: v for k, v in vars(EngineSettings).items() if isinstance(v, Setting)}
# a name older traces used -> the current key
RENAMED: dict = {old: s.key for s in SETTINGS.values() for old in s.old_names}


def _names(types: tuple) -> str:
    return " or ".join(sorted({t.__name__ for t in types}) + ["null"])


__all__ = ["EngineSettings", "RENAMED", "SETTINGS", "Setting"]
